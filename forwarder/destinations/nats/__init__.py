"""The NATS JetStream destination: each event published to a subject, delivered on its PubAck.

Receives a batch of stored events and the forwarder's ``kind: nats``
options; publishes every event's exact stored bytes with ``Nats-Msg-Id`` set
to the event's id (so the stream's duplicate window drops a redelivery), all
of a batch pipelined, and hands the delivery loop the batch's verdict:
delivered when every PubAck arrived, retry, or refused content to bisect.
The ``nats`` client library is imported only when a connection is made.
"""
