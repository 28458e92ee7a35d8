"""The buffer: the durable write-ahead store between ingest and delivery.

Receives committed-or-refused appends from ingest and cursor acks, history
rows and dead letters from delivery, all through one writer task (group
commit, SQLite in WAL mode). Hands on events in ingest order to each
forwarder from its cursor, in process (``store``) or to the delivery process
(``remote`` over ``ipc``). Also keeps what an operator looks back at:
delivery history, dead letters, and their retention.
"""
