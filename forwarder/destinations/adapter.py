"""What a destination is to the delivery loop: open, build a payload, send it, close.

The delivery loop (cursor, batching, in-flight window, retries and backoff,
bisection, dead letters, rate limits, history, metrics) is written once, in
:mod:`forwarder.delivery.worker`; a destination kind only knows its wire:

* ``open()`` / ``close()``: its connection (a webhook's HTTP session, a NATS
  connection). ``open`` does no network I/O that can fail for long: a
  destination that is down must not stop the daemon from starting, so a
  connection is made (and re-made) by ``send``, whose failures are retried
  like any other. ``close`` is safe to call twice.
* ``build(events, now)``: the payload for a batch, with its size in
  ``encoded_bytes`` so the batch reader can keep a batch within
  ``batch.maxBytes``. Built again on every retry (a webhook signature
  carries a timestamp), so it must be cheap and deterministic apart from
  ``now``.
* ``send(payload)``: one attempt. It returns an :class:`Answer` when every
  event was accepted, and raises the errors of :mod:`forwarder.errors`
  otherwise: :class:`RetryableDeliveryError` (with ``retry_after`` if the
  destination asked for a delay) to send the same batch again,
  :class:`RejectedContentError` when something in the batch was refused
  (the worker bisects until the refused events are alone, then
  dead-letters them), :class:`PermanentDeliveryError` when the request as
  such is wrong (the whole batch is dead-lettered).
* ``describe(payload)``: the payload as the test button shows it, secrets
  masked.

These are Protocols (structural), so a destination depends on nothing in
the delivery stage, and a test can hand the worker a destination of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from forwarder.buffer.store import StoredEvent

ANSWER_BODY_LIMIT = 4096
"""The most of an answer's body kept in the history, the dead letters and the test answer."""


class Payload(Protocol):
    """What ``build`` returns: opaque to the loop except for its size."""

    @property
    def encoded_bytes(self) -> int:
        """The size of the batch's encoded events (before compression), for ``batch.maxBytes``."""
        ...


class Answer(Protocol):
    """What a destination answered to a successful attempt, as the history records it."""

    @property
    def code(self) -> str:
        """The attempt metric's ``code`` label and the status shown: ``"200"``, ``"ack"``."""
        ...

    @property
    def status(self) -> int | None:
        """The HTTP status, when the destination speaks HTTP."""
        ...

    @property
    def headers(self) -> dict[str, str]:
        """Headers of the answer, for the test button (empty when there are none)."""
        ...

    @property
    def body(self) -> bytes:
        """The start of the answer (up to ``ANSWER_BODY_LIMIT``), unmasked."""
        ...

    @property
    def duration(self) -> float:
        """Seconds from sending to the answer."""
        ...


PayloadT = TypeVar("PayloadT", bound=Payload)


class Destination(Protocol[PayloadT]):
    """One forwarder's destination. Constructing it does no I/O."""

    @property
    def kind(self) -> str:
        """The forwarder's ``kind``: ``webhook``, ``nats``."""
        ...

    async def open(self) -> None:
        """Prepare the connection (no waiting on the network: ``send`` connects if needed)."""
        ...

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        ...

    def build(self, events: Sequence[StoredEvent], now: float) -> PayloadT:
        """The payload carrying ``events`` (in order), built at ``now`` (Unix time)."""
        ...

    async def send(self, payload: PayloadT) -> Answer:
        """One attempt; the answer, or a DeliveryError saying what to do next."""
        ...

    def describe(self, payload: PayloadT) -> dict[str, Any]:
        """The payload for the test button: method, url, headers, body; secrets masked."""
        ...
