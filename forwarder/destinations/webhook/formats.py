"""Request bodies from stored events: JSON, NDJSON, CloudEvents, Splunk HEC, templates.

Design: the buffer stores each event's raw JSON bytes exactly as ingested, so
every format here *splices* those bytes into the body instead of parsing and
re-serialising the event. A JSON array is ``[`` + the bodies joined by ``,``
+ ``]``; a CloudEvents or Splunk HEC envelope is its attributes serialised
once, with the stored bytes written in as ``data`` / ``event``. Unicode and
escapes in an event therefore reach the receiver byte for byte. The only
parse is the one CloudEvents and Splunk HEC need to read the event's own
``timestamp``/``time``; templates parse to look values up.

Line-oriented bodies (NDJSON, Splunk HEC) need one event per line. An event
ingested as one pretty-printed JSON document is stored with its newlines, so
those bytes are turned into spaces: in valid JSON a raw CR or LF can only be
whitespace between tokens (inside strings they are always escaped), so the
event is unchanged.

One event gives a single object (Chainloop's one event per request); several
give the format's batch form. ``build_encoder`` does all per-forwarder work
(compiling a template, the constant envelope fields, the host name) once.

A forwarder with ``integrity`` hands over events with a chain record
(``StoredEvent.chain``): ``json`` and ``ndjson`` splice it into each event as
its first member, ``"auditChain"``; CloudEvents carry it as the extension
attribute ``auditchain``, Splunk HEC as the indexed field
``fields.auditchain`` (:mod:`forwarder.integrity.envelope`). Checked once
per batch: without ``integrity`` nothing changes per event.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, assert_never

import orjson

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.templates import Template, compile_template
from forwarder.integrity.envelope import EXTENSION, splice

JSON = "application/json"
NDJSON = "application/x-ndjson"
CLOUDEVENTS = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
DEFAULT_CLOUDEVENTS_TYPE = "audit.event"

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_LINE_BREAKS_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """A request body and the ``Content-Type`` it is sent with."""

    body: bytes
    content_type: str


class Encoder(Protocol):
    """Turns a batch of stored events (at least one) into one request body."""

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """The body carrying ``events`` in order."""
        ...


def build_encoder(spec: WebhookForwarderConfig) -> Encoder:
    """The encoder for ``spec.format``; raises ``ValueError`` for an unusable template.

    A forwarder configured for batches (``batch.maxEvents > 1``) always sends
    the batch shape (an array, CloudEvents batched mode), even when only one
    event was ready: a receiver should not have to handle both shapes.
    """
    batched = spec.batch.max_events > 1
    match spec.format:
        case "json":
            return JsonEncoder(batched)
        case "ndjson":
            return NdjsonEncoder()
        case "cloudevents":
            return CloudEventsEncoder(
                spec.cloudevents.source, spec.cloudevents.type_prefix, batched=batched
            )
        case "splunk_hec":
            hec = spec.splunk_hec
            return SplunkHecEncoder(
                host=hec.host if hec.host is not None else socket.gethostname(),
                source=hec.source,
                sourcetype=hec.sourcetype,
                index=hec.index,
            )
        case "template":
            if not spec.template:
                raise ValueError("format: template needs a template")
            return TemplateEncoder(compile_template(spec.template), batched)
        case unreachable:
            assert_never(unreachable)


def json_array(items: Sequence[bytes]) -> bytes:
    """A JSON array of already-serialised JSON values, without re-serialising them."""
    return b"[" + b",".join(items) + b"]"


class JsonEncoder:
    """``json``: one event as stored; several (or any, when ``batched``) as a JSON array."""

    __slots__ = ("_batched",)

    def __init__(self, batched: bool = False) -> None:
        """``batched``: always send an array."""
        self._batched = batched

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """The stored bytes, or their array."""
        if events and events[0].chain is not None:
            events = with_records(events)
        if len(events) == 1 and not self._batched:
            return EncodedBody(events[0].body, JSON)
        return EncodedBody(json_array([event.body for event in events]), JSON)


class NdjsonEncoder:
    """``ndjson``: one event per line, each line ending in ``\\n``."""

    __slots__ = ()

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """The stored bytes joined by newlines, with a trailing newline."""
        if events and events[0].chain is not None:
            events = with_records(events)
        return EncodedBody(b"".join(one_line(event.body) + b"\n" for event in events), NDJSON)


class CloudEventsEncoder:
    """``cloudevents``: CloudEvents 1.0 structured mode, a batch array for several events."""

    __slots__ = ("_batched", "_head", "_type_prefix")

    def __init__(self, source: str, type_prefix: str, *, batched: bool = False) -> None:
        """Attributes from the forwarder's ``cloudevents`` options; ``batched``: always a batch."""
        self._batched = batched
        self._head = b'{"specversion":"1.0","source":' + orjson.dumps(source)
        # "com.example.audit." and "com.example.audit" both mean the same prefix.
        stripped = type_prefix.rstrip(".")
        self._type_prefix = f"{stripped}." if stripped else ""

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """One event's envelope, or the batch of envelopes."""
        if len(events) == 1 and not self._batched:
            return EncodedBody(self.envelope(events[0]), CLOUDEVENTS)
        return EncodedBody(
            json_array([self.envelope(event) for event in events]), CLOUDEVENTS_BATCH
        )

    def envelope(self, event: StoredEvent) -> bytes:
        """The CloudEvent for ``event``, with its stored bytes as ``data``."""
        event_type = self._type_prefix + (event.event_type or DEFAULT_CLOUDEVENTS_TYPE)
        own_time = event_time(event.body)
        time = own_time[0] if own_time is not None else rfc3339(event.received_at)
        attributes = orjson.dumps(
            {"id": event.event_id, "type": event_type, "time": time, "datacontenttype": JSON}
        )
        if event.chain is not None:
            extension = b',"' + EXTENSION.encode() + b'":' + record_string(event)
            attributes = attributes[:-1] + extension + b"}"
        return self._head + b"," + attributes[1:-1] + b',"data":' + event.body + b"}"


class SplunkHecEncoder:
    """``splunk_hec``: one HTTP Event Collector envelope per event, one per line."""

    __slots__ = ("_fields",)

    def __init__(
        self, *, host: str | None, source: str | None, sourcetype: str | None, index: str | None
    ) -> None:
        """Envelope fields; those that are ``None`` are left out."""
        fields = {"host": host, "source": source, "sourcetype": sourcetype, "index": index}
        present = {name: value for name, value in fields.items() if value is not None}
        self._fields = b"," + orjson.dumps(present)[1:-1] if present else b""

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """The envelopes separated by newlines (HEC reads them concatenated, not as an array)."""
        return EncodedBody(b"\n".join(self.envelope(event) for event in events), JSON)

    def envelope(self, event: StoredEvent) -> bytes:
        """The HEC envelope for ``event``, with its stored bytes as ``event``."""
        own_time = event_time(event.body)
        seconds = own_time[1] if own_time is not None else event.received_at
        chain = b""
        if event.chain is not None:
            chain = b',"fields":{"' + EXTENSION.encode() + b'":' + record_string(event) + b"}"
        return (
            b'{"time":'
            + orjson.dumps(round(seconds, 3))
            + self._fields
            + chain
            + b',"event":'
            + one_line(event.body)
            + b"}"
        )


class TemplateEncoder:
    """``template``: each event rendered with the forwarder's template; several in an array."""

    __slots__ = ("_batched", "_template")

    def __init__(self, template: Template, batched: bool = False) -> None:
        """Use the already compiled ``template``; ``batched``: always an array."""
        self._template = template
        self._batched = batched

    def encode(self, events: Sequence[StoredEvent]) -> EncodedBody:
        """The rendered body, or the array of rendered bodies."""
        rendered = [self._template.render_raw(event.body) for event in events]
        single = len(rendered) == 1 and not self._batched
        return EncodedBody(rendered[0] if single else json_array(rendered), JSON)


def with_records(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """``events`` with each one's chain record spliced in as its first member."""
    return [
        event._replace(body=splice(event.body, event.chain.to_json()))
        for event in events
        if event.chain is not None
    ]


def record_string(event: StoredEvent) -> bytes:
    """The event's chain record as a JSON string value (CloudEvents, HEC fields)."""
    assert event.chain is not None
    return orjson.dumps(event.chain.to_json().decode())


def one_line(body: bytes) -> bytes:
    """``body`` (valid JSON) with any CR/LF, which can only be whitespace, turned into spaces."""
    if b"\n" in body or b"\r" in body:
        return body.translate(_LINE_BREAKS_TO_SPACES)
    return body


def rfc3339(seconds: float) -> str:
    """Unix ``seconds`` as RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    # Rounded like Splunk HEC's ``time``, so both formats name the same millisecond.
    moment = datetime.fromtimestamp(round(seconds, 3), UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def event_time(body: bytes) -> tuple[str, float] | None:
    """The event's own ``timestamp`` (else ``time``) if RFC 3339: the text and Unix seconds.

    The text is upper-cased (``t``/``z`` → ``T``/``Z``): still the same instant,
    and readable by parsers that only accept the upper-case letters.
    """
    try:
        event: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    for field in ("timestamp", "time"):
        value = event.get(field)
        if isinstance(value, str) and _RFC3339.fullmatch(value):
            text = value.upper()
            try:
                return text, datetime.fromisoformat(text).timestamp()
            except ValueError:  # well-formed but impossible, e.g. month 13
                continue
    return None
