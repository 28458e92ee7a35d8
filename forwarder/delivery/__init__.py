"""Delivery: one worker per forwarder, following its cursor through the buffer.

Receives stored events in ingest order; batches them, hands each batch to
its destination to send, and turns the answer into an ack (cursor moves on),
a retry with backoff, a split, or a dead letter. Runs on the daemon's own
event loop (``inline``, the default) or in a process of its own (``child``,
spawned and supervised by the daemon through ``process``) when delivery
needs a core of its own (``delivery.process: separate``).
"""
