"""The NATS JetStream destination: publish a batch pipelined, delivered when every PubAck is in.

A batch is one JetStream publish per event, all started at once and all
awaited (pipelined: one round trip for the batch, not one per event). Each
message is the event's exact stored bytes on the subject its type makes
(:mod:`.subjects`), with ``Nats-Msg-Id`` set to the event's id, and, when
``stream`` is set, ``Nats-Expected-Stream`` so that a subject caught by
another stream is refused rather than stored in the wrong place.

What a failure means (per event, then for the batch):

* retryable (:class:`RetryableDeliveryError`): a timeout waiting for the
  PubAck, a lost or refused connection, JetStream temporarily unavailable or
  without a leader (HTTP-like code 503 or 500: errors 10008 "temporarily
  unavailable", 10009 "cluster can not handle request", stream offline,
  store failures, "too many requests"...), and "no responders" for a subject
  some stream does take (its leader is being elected);
* refused content (:class:`RejectedContentError`): a message over the
  stream's ``max_msg_size`` (10054) or the server's ``max_payload``, headers
  too large (10097), a subject caught by a stream other than ``stream``
  (10060), "no responders" for a subject *no* stream takes (looked up with
  JetStream's ``STREAM.NAMES``, so a leader election is never mistaken for
  it), and any other 4xx API error. The worker bisects the batch until the
  refused events are alone and dead-letters them with the server's error.

Partial success: the events whose PubAck came are delivered as far as the
stream is concerned, but the batch's outcome is its worst event's: any
retryable failure retries the batch, otherwise any refusal bisects it.
Publishing an acknowledged event again is harmless: it carries the same
``Nats-Msg-Id``, and the stream's duplicate window (2 minutes by default)
drops it, answering a PubAck marked duplicate, which counts as delivered.
That is also what makes a crash safe: events sent but not yet acknowledged
to the buffer are published again after a restart, and dropped by the
stream. (A redelivery later than the duplicate window would be stored twice;
keep the window longer than the longest outage you expect to replay.)

A forwarder with ``integrity`` publishes each event with its chain record
spliced in as the first member (as the ``json`` format does, so a consumer
that keeps only the body can still verify it and recover the exact bytes)
and the record again in the ``Audit-Chain`` header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.nats.connection import NatsLink, describe_failure
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.nats.subjects import SubjectTemplate
from forwarder.errors import DeliveryError, RejectedContentError, RetryableDeliveryError
from forwarder.integrity.envelope import splice

if TYPE_CHECKING:
    from nats.js import JetStreamContext

MSG_ID = "Nats-Msg-Id"
CHAIN_HEADER = "Audit-Chain"
EXPECTED_STREAM = "Nats-Expected-Stream"
# JetStream API errors that say "not now" rather than "never", whatever their HTTP-like code.
RETRYABLE_API_ERRORS = frozenset(
    {
        10008,  # JetStream system temporarily unavailable
        10009,  # cluster can not handle request (no leader)
        10023,  # insufficient resources
        10047,  # insufficient storage resources
        10077,  # storing the message failed (a full stream with discard: new)
        10118,  # stream is offline
        10158,  # a message with this id is being stored right now
        10167,  # too many requests
        10194,  # stream is offline (with a reason)
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    """One event as it is published."""

    subject: str
    event_id: str
    body: bytes
    chain: str | None = None  # the chain record (compact JSON) when the forwarder has one

    @property
    def headers(self) -> dict[str, str]:
        """``Nats-Msg-Id``, and ``Audit-Chain`` with the chain record."""
        if self.chain is None:
            return {MSG_ID: self.event_id}
        return {MSG_ID: self.event_id, CHAIN_HEADER: self.chain}


@dataclass(frozen=True, slots=True)
class NatsBatch:
    """The messages of one batch, in order, and their size for ``batch.maxBytes``."""

    messages: list[Message]
    encoded_bytes: int


@dataclass(frozen=True, slots=True)
class NatsAnswer:
    """Every message of a batch acknowledged: the last stream position, for the history."""

    body: bytes
    duration: float
    code: str = "ack"
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def classify_api_error(err_code: int | None, code: int | None, description: str) -> DeliveryError:
    """A JetStream API error answering a publish, as a retry or a refusal."""
    body = orjson.dumps({"code": code, "err_code": err_code, "description": description})
    label = f"js_{err_code}" if err_code else f"js_{code}"
    message = f"JetStream refused the message: {description} (error {err_code or code})"
    if err_code in RETRYABLE_API_ERRORS or (code is not None and code >= 500):
        return RetryableDeliveryError(label, message, body=body)
    return RejectedContentError(label, message, body=body)


class NatsDestination:
    """Publishes one forwarder's batches to JetStream. Constructing it does no I/O."""

    kind = "nats"

    def __init__(self, spec: NatsForwarderConfig) -> None:
        self.spec = spec
        self.subjects = SubjectTemplate(spec.subject, spec.subject_fallback)
        self._link = NatsLink(spec)

    async def open(self) -> None:
        """Nothing to do: the first attempt connects (a NATS that is down must not stop a start)."""

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        await self._link.close()

    def build(self, events: Sequence[StoredEvent], now: float) -> NatsBatch:
        """One message per event, its exact stored bytes; ``now`` is not needed."""
        subject = self.subjects.subject
        if events and events[0].chain is not None:
            messages = [self._chained(subject(e.event_type), e) for e in events]
        else:
            messages = [Message(subject(e.event_type), e.event_id, e.body) for e in events]
        return NatsBatch(messages, sum(len(m.body) for m in messages))

    @staticmethod
    def _chained(subject: str, event: StoredEvent) -> Message:
        assert event.chain is not None
        record = event.chain.to_json()
        return Message(subject, event.event_id, splice(event.body, record), record.decode())

    def describe(self, payload: NatsBatch) -> dict[str, Any]:
        """The first message as the test button shows it."""
        message = payload.messages[0]
        headers = message.headers
        if self.spec.stream is not None:
            headers[EXPECTED_STREAM] = self.spec.stream
        return {
            "method": "PUBLISH",
            "url": f"{self.spec.host} {message.subject}",
            "headers": headers,
            "body": message.body.decode("utf-8", "replace"),
        }

    async def send(self, payload: NatsBatch) -> NatsAnswer:
        """Publish every message at once; delivered when all are acknowledged."""
        jetstream = await self._link.jetstream()
        started = time.monotonic()
        results = await asyncio.gather(
            *(self._publish(jetstream, message) for message in payload.messages),
            return_exceptions=True,
        )
        failures: list[tuple[Message, BaseException]] = []
        last_ack: Any = None
        duplicates = 0
        for message, result in zip(payload.messages, results, strict=True):
            if isinstance(result, BaseException):
                failures.append((message, result))
            else:
                last_ack = result
                duplicates += bool(result.duplicate)
        if failures:
            await self._raise_worst(jetstream, failures, len(payload.messages))
        summary = {
            "stream": getattr(last_ack, "stream", None),
            "seq": getattr(last_ack, "seq", None),
            "acked": len(payload.messages),
            "duplicates": duplicates,
        }
        return NatsAnswer(orjson.dumps(summary), time.monotonic() - started)

    async def _publish(self, jetstream: JetStreamContext, message: Message) -> Any:
        return await jetstream.publish(
            message.subject,
            message.body,
            timeout=self.spec.timeout_seconds,
            stream=self.spec.stream,
            headers=message.headers,
        )

    async def _raise_worst(
        self,
        jetstream: JetStreamContext,
        failures: list[tuple[Message, BaseException]],
        total: int,
    ) -> None:
        """Raise the batch's verdict: a retry if any event may still go, else a refusal."""
        errors = [await self._classify(jetstream, m, exc) for m, exc in failures]
        retryable = [e for e in errors if isinstance(e, RetryableDeliveryError)]
        worst = retryable[0] if retryable else errors[0]
        if total > 1:
            worst.message = f"{worst.message} ({len(failures)} of {total} events)"
            worst.args = (worst.message,)
        raise worst

    async def _classify(
        self, jetstream: JetStreamContext, message: Message, exc: BaseException
    ) -> DeliveryError:
        import nats.errors
        import nats.js.errors

        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return await self._no_responders(jetstream, message.subject)
        if isinstance(exc, nats.js.errors.APIError):
            return classify_api_error(exc.err_code, exc.code, exc.description or str(exc))
        if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
            seconds = self.spec.timeout_seconds
            return RetryableDeliveryError("timeout", f"no PubAck within {seconds:g} s")
        if isinstance(exc, nats.errors.MaxPayloadError):
            return RejectedContentError(
                "max_payload",
                f"the message ({len(message.body)} bytes) is over the server's max_payload",
            )
        if isinstance(exc, nats.errors.BadSubjectError | nats.errors.BadHeaderError):
            return RejectedContentError("bad_message", describe_failure(exc))
        if isinstance(exc, nats.errors.Error | OSError | asyncio.CancelledError):
            # Connection closed, stale or lost while the publish was out.
            return RetryableDeliveryError("connection_error", describe_failure(exc))
        raise exc

    async def _no_responders(self, jetstream: JetStreamContext, subject: str) -> DeliveryError:
        """ "No responders": a subject no stream takes (refused), or a stream without a leader."""
        import nats.errors
        import nats.js.errors

        try:
            stream = await jetstream.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            return RejectedContentError(
                "no_stream",
                f"no JetStream stream takes subject {subject!r}",
                body=b"no responders",
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return RetryableDeliveryError(
                "no_responders",
                f"no answer for subject {subject!r}, and JetStream cannot say which stream"
                f" takes it: {describe_failure(exc)}",
            )
        return RetryableDeliveryError(
            "no_responders",
            f"stream {stream!r} takes subject {subject!r} but did not answer (a leader election?)",
        )
