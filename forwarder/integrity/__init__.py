"""Tamper-evident delivery: chain records, checkpoint signatures, and their verifier.

Pure format and cryptography, no I/O of the daemon: ``records`` (what a
record holds and how it is hashed), ``envelope`` (how a record travels inside
an event and how the event's bytes are recovered from what a SIEM kept),
``keys`` (Ed25519 key pairs, the only module that imports ``cryptography``)
and ``verifier`` (what ``audit-forwarder verify`` checks). The delivery layer
(:mod:`forwarder.delivery.chain`) assigns the records; the formats carry them.
"""
