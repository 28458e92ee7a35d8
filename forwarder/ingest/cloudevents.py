"""CloudEvents bodies at ingest: how a relay keeps every event's one id.

A node agent relays to a central audit-forwarder with its ordinary webhook
forwarder in ``format: cloudevents``: each event travels as a CloudEvent
whose ``id`` is the event's id at the node and whose ``data`` is its stored
bytes, spliced in unchanged. The central ingest accepts that shape
(``application/cloudevents+json`` for one event,
``application/cloudevents-batch+json`` for a batch) and stores each ``data``
as the event's exact bytes, with ``id`` as a *client-supplied* id. So:

* Every event has one id end to end. An event the application sent without
  an ``id`` gets its id at the node (from the node buffer's instance number
  and the event's seq: the same on every retry, after a node restart too),
  and the central stores that id instead of generating another.
* A retry is deduplicated. When the node re-sends after a lost ``202`` (a
  timeout, the central killed after its commit), the central finds every id
  in ``client_ids`` and stores nothing again, as for any client retry within
  the buffer's deduplication window (an hour).
* Nothing about the event changes: ``data`` is sliced out of the envelope
  byte for byte (:func:`forwarder.ingest.bodies.member_value`), never
  re-serialised; the event's type is read from ``data`` as for any event.
  The CloudEvents ``type`` is *not* used: the node built it from the same
  ``data`` with its ``typePrefix`` and the default ``audit.event`` for an
  untyped event, so taking it would give the central a different type (and
  different filters and NATS subjects) than the node had.

Why CloudEvents rather than an NDJSON body with the ids in a header: it is a
standard both ends already speak (the webhook formats produce it), every id
sits next to its own event instead of in a parallel list that can fall out
of step, and a request is self-describing in a capture or a dead letter.

Each envelope is checked as CloudEvents 1.0 structured mode requires
(``specversion`` "1.0", non-empty string ``id``, ``source`` and ``type``)
and ``data`` must be an audit event: a JSON object, no ``data_base64``, a
JSON ``datacontenttype`` if one is given, within ``maxEventBytes``, and with
no ``id`` of its own other than the envelope's. As for every body shape, one
bad envelope refuses the whole request. Two envelopes with the same ``id``
in one batch are one event to CloudEvents; the buffer keeps the first and
counts the other as a duplicate, exactly as for a JSON array.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from forwarder.buffer.store import EventRecord
from forwarder.errors import IngestError
from forwarder.ingest.bodies import MAX_ID_LENGTH, array_elements, event_type_of, member_value

CLOUDEVENT_TYPES = frozenset({"application/cloudevents+json"})
CLOUDEVENTS_BATCH_TYPES = frozenset({"application/cloudevents-batch+json"})
_JSON_DATA = "application/json"
# What our own encoder writes (and most producers do): attributes with string
# values, then "data" last. Matched in C up to the start of data's value; no
# key with an escape, none that is "data", so the match ends at the one data.
_STRING_ATTRIBUTES_THEN_DATA = re.compile(
    rb'\{(?:[ \t\r\n]*"(?!data")[^"\\]*+"[ \t\r\n]*:[ \t\r\n]*"(?:[^"\\]++|\\.)*+"[ \t\r\n]*,)*+'
    rb'[ \t\r\n]*"data"[ \t\r\n]*:[ \t\r\n]*',
    re.DOTALL,
)


def parse_cloudevent(body: bytes, max_event_bytes: int) -> list[EventRecord]:
    """Parse an ``application/cloudevents+json`` body: one CloudEvent."""
    envelope = _load(body)
    return [_event_record(envelope, body.strip(), "", max_event_bytes)]


def parse_cloudevents_batch(body: bytes, max_event_bytes: int) -> list[EventRecord]:
    """Parse an ``application/cloudevents-batch+json`` body: a JSON array of CloudEvents."""
    document = _load(body)
    if type(document) is not list:
        raise IngestError(400, "malformed", "a CloudEvents batch must be a JSON array")
    for index, envelope in enumerate(document):
        if type(envelope) is not dict:
            raise IngestError(400, "malformed", f"event {index}: a CloudEvent must be an object")
    return [
        _event_record(envelope, raw, f"event {index}: ", max_event_bytes)
        for index, (envelope, raw) in enumerate(
            zip(document, array_elements(body, len(document)), strict=True)
        )
    ]


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, "malformed", f"malformed JSON: {exc}") from None


def _event_record(envelope: Any, raw: bytes, where: str, max_event_bytes: int) -> EventRecord:
    """The record of one envelope: ``data``'s bytes under the envelope's ``id``."""
    if type(envelope) is not dict:
        raise IngestError(400, "malformed", f"{where}a CloudEvent must be a JSON object")
    if envelope.get("specversion") != "1.0":
        raise IngestError(400, "malformed", f'{where}specversion must be "1.0"')
    event_id = envelope.get("id")
    if type(event_id) is not str or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise IngestError(
            400, "malformed", f"{where}id must be a non-empty string of at most 256 characters"
        )
    for attribute in ("source", "type"):
        value = envelope.get(attribute)
        if type(value) is not str or not value:
            raise IngestError(400, "malformed", f"{where}{attribute} must be a non-empty string")
    content_type = envelope.get("datacontenttype", _JSON_DATA)
    if type(content_type) is not str or (
        content_type.partition(";")[0].strip().lower() != _JSON_DATA
    ):
        raise IngestError(400, "malformed", f"{where}datacontenttype must be {_JSON_DATA}")
    data = envelope.get("data")
    if "data_base64" in envelope or type(data) is not dict:
        raise IngestError(400, "malformed", f"{where}data must be the event, a JSON object")
    own_id = data.get("id")
    if own_id is not None and own_id != event_id:
        # One event, one id: a relay never sends two, so this is a broken sender.
        raise IngestError(400, "malformed", f"{where}data.id differs from the CloudEvent's id")
    body = _data_bytes(raw)
    if body is None:
        # Unreachable for an envelope orjson read "data" from; never store wrong bytes.
        raise RuntimeError("the data member was not found in the envelope's bytes")
    if len(body) > max_event_bytes:
        raise IngestError(
            413, "too_large", f"{where}event of {len(body)} bytes exceeds {max_event_bytes}"
        )
    return EventRecord(event_id, event_type_of(data), body, True)


def _data_bytes(raw: bytes) -> bytes | None:
    """The bytes of ``data`` in the envelope ``raw`` (valid JSON, from ``{`` to ``}``).

    When the envelope is laid out as :data:`_STRING_ATTRIBUTES_THEN_DATA`
    and what follows up to the closing brace parses as one JSON value, that
    value is ``data`` and it is the last member (a value followed by more
    members is not one JSON value). Anything else is walked member by member.
    """
    head = _STRING_ATTRIBUTES_THEN_DATA.match(raw)
    if head is not None:
        candidate = raw[head.end() : raw.rindex(b"}")].rstrip(b" \t\r\n")
        try:
            orjson.loads(candidate)
        except orjson.JSONDecodeError:
            pass
        else:
            return candidate
    return member_value(raw, "data")
