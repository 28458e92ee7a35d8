"""Ingest: the local API applications post audit events to.

Receives HTTP requests on loopback TCP and/or a Unix socket; parses and
validates the whole request before storing anything (all or nothing); hands
on event records (their exact bytes, id and type) to the buffer and answers
202 only after the buffer has committed them. The listeners themselves
(``listeners``, ``connections``, ``unix_socket``) bound what a flood or a slow
client can take: connections are capped, requests have a deadline, and a
live socket file is never taken over.
"""
