"""Request bodies for every format, from real stored events, checked by real parsers.

CloudEvents bodies are read back with the ``cloudevents`` SDK (its 2.x core
API: ``HTTPMessage`` + ``from_http`` with the JSON format), Splunk HEC bodies
line by line as HEC does, and JSON/NDJSON bodies are compared byte for byte
with the stored events they were spliced from.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.formats import (
    EncodedBody,
    Encoder,
    build_encoder,
    rfc3339,
)
from forwarder.destinations.webhook.options import WebhookForwarderConfig

RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC).timestamp()

# Not in orjson's canonical form on purpose (spaces, \u escapes, an escaped
# slash, raw UTF-8): splicing must keep these bytes exactly as stored.
UNICODE_BODY = (
    b'{ "id" : "evt-uni", "event_type": "user.renamed", '
    b'"text": "caf\\u00e9 \\"quoted\\" back\\\\slash \\/ tab\\t nl\\n", '
    b'"raw": "\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80 \xe2\x80\xa8", "n": 1.50 }'
)


def spec(format: str, **options: Any) -> WebhookForwarderConfig:
    """A forwarder using ``format`` with the given options."""
    return WebhookForwarderConfig(
        kind="webhook", uri="https://x.example/in", format=format, **options
    )


def stored(
    seq: int,
    body: bytes | None = None,
    *,
    event_type: str | None = "approval.decided",
    received_at: float = RECEIVED_AT,
) -> StoredEvent:
    """A stored event; its body defaults to a small object naming ``seq``."""
    if body is None:
        body = b'{"id":"evt-%d","event_type":"approval.decided","n":%d}' % (seq, seq)
    return StoredEvent(seq, f"evt-{seq}", event_type, received_at, None, body)


def encode(format: str, events: list[StoredEvent], **options: Any) -> EncodedBody:
    """Encode ``events`` with the encoder ``build_encoder`` makes for ``format``."""
    encoder: Encoder = build_encoder(spec(format, **options))
    return encoder.encode(events)


def cloudevent(body: bytes | dict[str, Any]) -> BaseCloudEvent:
    """Parse one structured-mode CloudEvent with the SDK (which validates its attributes)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    message = HTTPMessage(headers={"content-type": "application/cloudevents+json"}, body=raw)
    return from_http(message, JSONFormat())


# json


def test_json_single_event_is_the_stored_bytes() -> None:
    """One event is sent exactly as it was stored, as application/json."""
    encoded = encode("json", [stored(1, UNICODE_BODY)])
    assert encoded == EncodedBody(UNICODE_BODY, "application/json")


def test_json_batch_is_a_byte_exact_array_of_stored_bytes() -> None:
    """Several events become ``[`` + the stored bytes joined by ``,`` + ``]``."""
    events = [stored(1), stored(2, UNICODE_BODY), stored(3)]
    encoded = encode("json", events)
    assert encoded.body == b"[" + b",".join(e.body for e in events) + b"]"
    assert encoded.content_type == "application/json"
    assert [item.get("id") for item in orjson.loads(encoded.body)] == ["evt-1", "evt-uni", "evt-3"]


# ndjson


@pytest.mark.parametrize("count", [1, 3])
def test_ndjson_lines_are_the_stored_bytes(count: int) -> None:
    """Each event is one line of its stored bytes, every line ending in a newline."""
    events = [stored(1, UNICODE_BODY), *(stored(n) for n in range(2, count + 1))]
    encoded = encode("ndjson", events)
    assert encoded.content_type == "application/x-ndjson"
    assert encoded.body == b"".join(e.body + b"\n" for e in events)
    assert [orjson.loads(line) for line in encoded.body.splitlines()] == [
        orjson.loads(e.body) for e in events
    ]


def test_ndjson_keeps_pretty_printed_events_on_one_line() -> None:
    """An event stored pretty-printed still takes exactly one line, with the same content."""
    pretty = b'{\r\n  "id": "evt-1",\n  "text": "a\\nb"\n}'
    encoded = encode("ndjson", [stored(1, pretty), stored(2)])
    lines = encoded.body.split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == 3
    assert orjson.loads(lines[0]) == orjson.loads(pretty)


# cloudevents


def test_cloudevents_single_event_parses_with_the_sdk() -> None:
    """One event is a structured-mode CloudEvent 1.0 carrying the event as its data."""
    encoded = encode(
        "cloudevents", [stored(1)], cloudevents={"source": "urn:audit:test", "typePrefix": ""}
    )
    assert encoded.content_type == "application/cloudevents+json"
    event = cloudevent(encoded.body)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == "evt-1"
    assert event.get_source() == "urn:audit:test"
    assert event.get_type() == "approval.decided"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() == datetime.fromtimestamp(RECEIVED_AT, UTC)
    assert event.get_data() == {"id": "evt-1", "event_type": "approval.decided", "n": 1}


def test_cloudevents_batch_is_an_array_of_valid_events() -> None:
    """Several events are a cloudevents-batch array; every element is a valid CloudEvent."""
    events = [stored(1), stored(2, UNICODE_BODY, event_type="user.renamed"), stored(3)]
    encoded = encode("cloudevents", events)
    assert encoded.content_type == "application/cloudevents-batch+json"
    batch = orjson.loads(encoded.body)
    assert isinstance(batch, list)
    assert len(batch) == 3
    for element, original in zip(batch, events, strict=True):
        assert {"specversion", "id", "source", "type", "time", "datacontenttype", "data"} <= set(
            element
        )
        parsed = cloudevent(element)
        assert parsed.get_id() == original.event_id
        assert parsed.get_source() == "audit-forwarder"
        assert parsed.get_type() == original.event_type
        assert parsed.get_data() == orjson.loads(original.body)


def test_cloudevents_data_is_spliced_byte_for_byte() -> None:
    """The stored bytes appear unchanged as ``data``: unicode and escapes are not re-encoded."""
    single = encode("cloudevents", [stored(1, UNICODE_BODY)]).body
    batch = encode("cloudevents", [stored(1), stored(2, UNICODE_BODY)]).body
    assert single.endswith(b',"data":' + UNICODE_BODY + b"}")
    assert b',"data":' + UNICODE_BODY + b"}]" in batch
    assert cloudevent(single).get_data() == orjson.loads(UNICODE_BODY)


@pytest.mark.parametrize(
    ("prefix", "event_type", "expected"),
    [
        ("", "approval.decided", "approval.decided"),
        ("com.example.audit", "approval.decided", "com.example.audit.approval.decided"),
        ("com.example.audit.", "approval.decided", "com.example.audit.approval.decided"),
        ("", None, "audit.event"),
        ("com.example.audit", None, "com.example.audit.audit.event"),
    ],
)
def test_cloudevents_type_is_prefixed(prefix: str, event_type: str | None, expected: str) -> None:
    """``type`` is the event type (``audit.event`` if none) after ``typePrefix`` and a dot."""
    encoded = encode(
        "cloudevents",
        [stored(1, event_type=event_type)],
        cloudevents={"typePrefix": prefix},
    )
    assert cloudevent(encoded.body).get_type() == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": "2023-01-02T03:04:05Z"}, "2023-01-02T03:04:05Z"),
        ({"timestamp": "2023-01-02T03:04:05.123456+02:00"}, "2023-01-02T03:04:05.123456+02:00"),
        ({"time": "2023-01-02T03:04:05.5Z"}, "2023-01-02T03:04:05.5Z"),
        ({"timestamp": "2023-01-02t03:04:05z"}, "2023-01-02T03:04:05Z"),
        (
            {"timestamp": "2023-01-02T03:04:05Z", "time": "1999-01-01T00:00:00Z"},
            "2023-01-02T03:04:05Z",
        ),
        ({"timestamp": "not a time", "time": "1999-01-01T00:00:00Z"}, "1999-01-01T00:00:00Z"),
    ],
)
def test_cloudevents_time_is_the_events_own_rfc3339_time(
    fields: dict[str, Any], expected: str
) -> None:
    """``time`` is the event's ``timestamp`` (else ``time``) when that is valid RFC 3339."""
    body = orjson.dumps({"id": "evt-1", **fields})
    element = orjson.loads(encode("cloudevents", [stored(1, body)]).body)
    assert element["time"] == expected
    cloudevent(element)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2023-13-01T00:00:00Z",
        "2023-02-30T00:00:00Z",
        "2023-01-02T03:04:05",
        "2023-01-02 03:04:05Z",
        "2023-01-02",
        1672628645,
        None,
        {"iso": "2023-01-02T03:04:05Z"},
    ],
)
def test_cloudevents_time_falls_back_to_received_at(value: Any) -> None:
    """Without a valid RFC 3339 time, ``time`` is when the forwarder received the event."""
    body = orjson.dumps({"id": "evt-1", "timestamp": value, "time": value})
    element = orjson.loads(encode("cloudevents", [stored(1, body)]).body)
    assert element["time"] == "2024-05-01T12:00:00.123Z"


def test_received_at_is_formatted_as_rfc3339_utc_milliseconds() -> None:
    """Receive times are written as RFC 3339 UTC with milliseconds and ``Z``."""
    assert rfc3339(RECEIVED_AT) == "2024-05-01T12:00:00.123Z"
    assert rfc3339(RECEIVED_AT - 0.123) == "2024-05-01T12:00:00.000Z"


# splunk_hec


def hec_envelopes(body: bytes) -> list[dict[str, Any]]:
    """Split a HEC body into envelopes, one per line, as the collector reads them."""
    return [orjson.loads(line) for line in body.split(b"\n")]


def test_splunk_hec_single_event_envelope() -> None:
    """One event is one HEC envelope with defaults: this host, our source, ``_json``."""
    encoded = encode("splunk_hec", [stored(1, UNICODE_BODY)])
    assert encoded.content_type == "application/json"
    [envelope] = hec_envelopes(encoded.body)
    assert envelope == {
        "time": 1714564800.123,
        "host": socket.gethostname(),
        "source": "audit-forwarder",
        "sourcetype": "_json",
        "event": orjson.loads(UNICODE_BODY),
    }
    assert encoded.body.endswith(b',"event":' + UNICODE_BODY + b"}")


def test_splunk_hec_batch_is_one_envelope_per_line() -> None:
    """Several events are envelopes separated by newlines, not an array, each with its event."""
    events = [stored(1), stored(2, UNICODE_BODY), stored(3)]
    encoded = encode("splunk_hec", events)
    assert not encoded.body.startswith(b"[")
    envelopes = hec_envelopes(encoded.body)
    assert [e["event"] for e in envelopes] == [orjson.loads(e.body) for e in events]


def test_splunk_hec_fields_come_from_config_and_none_is_omitted() -> None:
    """Configured host/index are used; fields set to null are left out of the envelope."""
    encoded = encode(
        "splunk_hec",
        [stored(1)],
        splunkHec={"host": "web-1", "source": None, "sourcetype": "audit", "index": "security"},
    )
    [envelope] = hec_envelopes(encoded.body)
    assert list(envelope) == ["time", "host", "sourcetype", "index", "event"]
    assert envelope["host"] == "web-1"
    assert envelope["sourcetype"] == "audit"
    assert envelope["index"] == "security"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": "2023-01-02T03:04:05.678Z"}, 1672628645.678),
        ({"time": "2023-01-02T05:04:05+02:00"}, 1672628645.0),
        ({"timestamp": "garbage"}, 1714564800.123),
        ({}, 1714564800.123),
    ],
)
def test_splunk_hec_time_is_epoch_seconds_with_milliseconds(
    fields: dict[str, Any], expected: float
) -> None:
    """``time`` is the event's RFC 3339 time, else the receive time, in seconds with ms."""
    [envelope] = hec_envelopes(encode("splunk_hec", [stored(1, orjson.dumps(fields))]).body)
    assert envelope["time"] == expected


def test_splunk_hec_keeps_pretty_printed_events_on_one_line() -> None:
    """An event stored pretty-printed still gives one envelope per line."""
    pretty = b'{\n  "id": "evt-1",\r\n  "text": "a\\nb"\n}'
    envelopes = hec_envelopes(encode("splunk_hec", [stored(1, pretty), stored(2)]).body)
    assert [e["event"] for e in envelopes] == [orjson.loads(pretty), orjson.loads(stored(2).body)]


# template

TEMPLATE = (
    '{"summary": "{{ event_type }} by {{ actor.name }}", "n": {{ n }}, "first": "{{ tags.[0] }}"}'
)


def test_template_single_event_is_the_rendered_body() -> None:
    """One event is the template rendered for it."""
    body = b'{"event_type": "login", "actor": {"name": "J\\u00f6 \\"x\\""}, "n": 2, "tags": ["a"]}'
    encoded = encode("template", [stored(1, body)], template=TEMPLATE)
    assert encoded.content_type == "application/json"
    assert orjson.loads(encoded.body) == {"summary": 'login by Jö "x"', "n": 2, "first": "a"}


def test_template_batch_is_an_array_of_rendered_bodies() -> None:
    """Several events are a JSON array of each event's rendered body."""
    events = [stored(n, orjson.dumps({"event_type": "e", "n": n})) for n in (1, 2)]
    encoded = encode("template", events, template=TEMPLATE)
    assert orjson.loads(encoded.body) == [
        {"summary": "e by ", "n": 1, "first": ""},
        {"summary": "e by ", "n": 2, "first": ""},
    ]


@pytest.mark.parametrize("template", ['{"a": "{{ x }"}', '{"a": {{ x }}', '{"a": "{{ .x }}"}'])
def test_template_that_cannot_render_json_is_refused(template: str) -> None:
    """A template that cannot produce JSON fails when the encoder is built, not on delivery."""
    with pytest.raises(ValueError, match=r"braces|JSON|placeholder"):
        build_encoder(spec("template", template=template))


# all formats


@pytest.mark.parametrize("format", ["json", "ndjson", "cloudevents", "splunk_hec"])
@pytest.mark.parametrize("count", [1, 2])
def test_stored_bytes_survive_byte_for_byte(format: str, count: int) -> None:
    """Every splicing format carries the stored bytes unchanged, unicode and escapes included."""
    events = [stored(n, UNICODE_BODY) for n in range(1, count + 1)]
    assert encode(format, events).body.count(UNICODE_BODY) == count


@pytest.mark.parametrize(
    ("format", "options", "single", "batch"),
    [
        ("json", {}, "application/json", "application/json"),
        ("ndjson", {}, "application/x-ndjson", "application/x-ndjson"),
        (
            "cloudevents",
            {},
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
        ),
        ("splunk_hec", {}, "application/json", "application/json"),
        ("template", {"template": '{"n": {{ n }}}'}, "application/json", "application/json"),
    ],
)
def test_content_types(format: str, options: dict[str, Any], single: str, batch: str) -> None:
    """Each format declares its media type, for one event and for a batch."""
    assert encode(format, [stored(1)], **options).content_type == single
    assert encode(format, [stored(1), stored(2)], **options).content_type == batch
