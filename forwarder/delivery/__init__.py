"""Delivery: one worker per forwarder, following its cursor through the buffer.

Receives stored events in ingest order; batches them, hands each batch to
its destination to send, and turns the answer into an ack (cursor moves on),
a retry with backoff, a split, or a dead letter. Runs in its own process
(``child``), spawned and supervised by the daemon (``process``), so HTTP
delivery gets its own core.
"""
