"""CloudEvents ingest, the central end of a relay: ``data`` byte for byte under the event's id.

The relay bodies are built by the real webhook encoder a node agent uses
(``format: cloudevents``), posted to the real ingest app on a real buffer,
and read back from the SQLite file. Hypothesis checks the byte-exact slicing
of ``data`` on envelopes no encoder of ours would write (any member order,
nested extension attributes, any spacing and escapes). Hostile envelopes are
each refused whole: a bad last envelope leaves nothing of the good first one.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.formats import CloudEventsEncoder
from forwarder.errors import IngestError
from forwarder.ingest.bodies import member_value
from forwarder.ingest.cloudevents import parse_cloudevents_batch
from tests.ingest.conftest import SMALL_LIMITS, Ingest, MakeIngest, event_of_size
from tests.ingest.json_text import events, styles, values, write

BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"
LIMIT = 1024 * 1024
spaces = st.sampled_from([b"", b" ", b"\n", b"\r\n\t"])
counter = itertools.count()


def node_body(*events: tuple[str, bytes, str | None], batched: bool = True) -> bytes:
    """What a node agent's ``format: cloudevents`` forwarder posts for (id, bytes, type)."""
    encoder = CloudEventsEncoder("node-a", "com.example.audit", batched=batched)
    stored = [
        StoredEvent(seq, event_id, event_type, time.time(), None, body)
        for seq, (event_id, body, event_type) in enumerate(events, start=1)
    ]
    return encoder.encode(stored).body


def envelope(event_id: Any = "ce-1", data: bytes = b'{"n": 1}', **attributes: Any) -> bytes:
    """A CloudEvent with ``data`` spliced in as given; ``None`` attributes are left out."""
    fields = {"specversion": "1.0", "id": event_id, "source": "s", "type": "t", **attributes}
    head = orjson.dumps({k: v for k, v in fields.items() if v is not None})
    return head[:-1] + b',"data":' + data + b"}"


async def test_relayed_batch_keeps_bytes_ids_and_types(ingest: Ingest) -> None:
    """A node's CloudEvents batch is stored as each event's exact bytes, id and own type."""
    pretty = b'{\n  "event_type": "user.login",\n  "big": 123456789012345678901234567890\n}'
    with_id = b'{"id":"client-7","type":"deploy","text":"caf\\u00e9 \xc3\xa9"}'
    untyped = b'{"n": 1.50, "nested": {"a": [1, {"b": "]}"}]}}'
    body = node_body(
        ("0191-node-generated", pretty, "user.login"),
        ("client-7", with_id, "deploy"),
        ("0191-node-generated-2", untyped, None),
    )

    answer = await ingest.post(body, BATCH)

    assert (answer.status, answer.payload) == (202, {"accepted": 3, "duplicates": 0})
    assert [(row[1], row[2], row[3]) for row in ingest.rows()] == [
        ("0191-node-generated", "user.login", pretty),
        ("client-7", "deploy", with_id),
        # Not "com.example.audit.audit.event": the type comes from the event, as at the node.
        ("0191-node-generated-2", None, untyped),
    ]


async def test_single_cloudevent_is_one_event(ingest: Ingest) -> None:
    """``application/cloudevents+json`` (a node with batch.maxEvents 1) stores its one event."""
    body = node_body(("node-id-1", b'{"event_type":"x"}', "x"), batched=False)

    answer = await ingest.post(body, SINGLE)

    assert (answer.status, answer.payload) == (202, {"accepted": 1, "duplicates": 0})
    assert [(row[1], row[3]) for row in ingest.rows()] == [("node-id-1", b'{"event_type":"x"}')]


async def test_node_retry_is_deduplicated(ingest: Ingest) -> None:
    """The same relayed batch posted again (a lost 202) is answered 202 and stored once."""
    body = node_body(("gen-a", b'{"n":1}', None), ("gen-b", b'{"n":2}', None))

    first = await ingest.post(body, BATCH)
    retry = await ingest.post(body, BATCH)

    assert first.payload == {"accepted": 2, "duplicates": 0}
    assert (retry.status, retry.payload) == (202, {"accepted": 2, "duplicates": 2})
    assert [row[1] for row in ingest.rows()] == ["gen-a", "gen-b"]


async def test_duplicate_ids_in_one_batch_keep_the_first(ingest: Ingest) -> None:
    """Two envelopes with one id are one event: the first is stored, the other counted."""
    body = b"[" + envelope("same", b'{"n":1}') + b"," + envelope("same", b'{"n":2}') + b"]"

    answer = await ingest.post(body, BATCH)

    assert (answer.status, answer.payload) == (202, {"accepted": 2, "duplicates": 1})
    assert [(row[1], row[3]) for row in ingest.rows()] == [("same", b'{"n":1}')]


async def test_escaped_data_key_is_found(ingest: Ingest) -> None:
    """A ``data`` key written with a JSON escape is still ``data``; its bytes are kept."""
    body = b'{"specversion":"1.0","id":"e","source":"s","type":"t","d\\u0061ta" : {"k": "v"} }'

    answer = await ingest.post(body, SINGLE)

    assert answer.status == 202
    assert ingest.bodies() == [b'{"k": "v"}']


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(envelope(specversion=None), id="no-specversion"),
        pytest.param(envelope(specversion="0.3"), id="old-specversion"),
        pytest.param(envelope(event_id=None), id="no-id"),
        pytest.param(envelope(event_id=17), id="numeric-id"),
        pytest.param(envelope(event_id=""), id="empty-id"),
        pytest.param(envelope(event_id="x" * 257), id="id-too-long"),
        pytest.param(envelope(source=None), id="no-source"),
        pytest.param(envelope(type=5), id="numeric-type"),
        pytest.param(envelope(datacontenttype="text/plain"), id="text-data"),
        pytest.param(envelope(data=b'"{\\"n\\": 1}"'), id="data-is-a-json-string"),
        pytest.param(envelope(data=b"[1, 2]"), id="data-is-an-array"),
        pytest.param(envelope(data=b"null"), id="data-is-null"),
        pytest.param(
            b'{"specversion":"1.0","id":"e","source":"s","type":"t","data_base64":"e30="}',
            id="data-base64",
        ),
        pytest.param(envelope("ce-1", b'{"id": "other"}'), id="data-id-differs"),
        pytest.param(envelope("ce-1", b'{"id": 1}'), id="data-id-not-a-string"),
        pytest.param(
            b'{"specversion":"1.0","id":"e","source":"s","type":"t","data":{"a":1},"data":{"b":2}}',
            id="data-given-twice",
        ),
        pytest.param(b"[]", id="array-in-a-batch"),
        pytest.param(b"42", id="not-an-object"),
    ],
)
async def test_hostile_envelope_refuses_the_whole_batch(ingest: Ingest, bad: bytes) -> None:
    """One bad envelope after a good one is a 400 and stores neither."""
    body = b"[" + envelope("good-first") + b"," + bad + b"]"

    answer = await ingest.post(body, BATCH)

    assert answer.status == 400
    assert answer.payload["error"] == "malformed"
    assert ingest.rows() == []
    assert ingest.rejected("malformed") == 1
    await ingest.assert_still_accepting()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(envelope(), BATCH, id="batch-not-an-array"),
        pytest.param(b"[" + envelope() + b"]", SINGLE, id="single-is-an-array"),
        pytest.param(b"[]", BATCH, id="empty-batch"),
        pytest.param(b"[1]", BATCH, id="batch-of-a-number"),
    ],
)
async def test_wrong_body_shape_is_malformed(
    ingest: Ingest, body: bytes, content_type: str
) -> None:
    """A batch that is not an array of objects, or a single event that is not an object, is 400."""
    answer = await ingest.post(body, content_type)

    assert answer.status == 400
    assert answer.payload["error"] == "malformed"
    assert ingest.rows() == []


async def test_oversized_data_is_too_large(make_ingest: MakeIngest) -> None:
    """``data`` over maxEventBytes is 413 even though its envelope and request fit."""
    ingest = await make_ingest(**SMALL_LIMITS)
    body = b"[" + envelope("small") + b"," + envelope("big", event_of_size(1025)) + b"]"

    answer = await ingest.post(body, BATCH)

    assert answer.status == 413
    assert answer.payload["error"] == "too_large"
    assert ingest.rows() == []


async def test_huge_batch_is_too_large(make_ingest: MakeIngest) -> None:
    """A batch over maxRequestBytes is 413 and stores none of its events."""
    ingest = await make_ingest(**SMALL_LIMITS)
    body = b"[" + b",".join(envelope(f"e{n}") for n in range(200)) + b"]"
    assert len(body) > SMALL_LIMITS["max_request_bytes"]

    answer = await ingest.post(body, BATCH)

    assert answer.status == 413
    assert ingest.rows() == []


@st.composite
def written_envelopes(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A CloudEvent in any member order and style, with extensions; and its ``data``'s bytes."""
    style = draw(styles(one_line=False))
    data = write(draw(events), style).encode()
    members = [
        (b'"specversion"', b'"1.0"'),
        (b'"id"', orjson.dumps(f"h-{next(counter)}")),
        (b'"source"', b'"/node/a"'),
        (b'"type"', b'"t"'),
        (b'"data"', data),
    ]
    # Extension attributes, nested ones too: a "data" inside them must not be taken.
    for name in draw(st.lists(st.sampled_from(["ext", "x", "data2", "nested"]), unique=True)):
        extension = draw(values)
        if name == "nested":
            extension = {"data": extension}
        members.append((orjson.dumps(name), write(extension, style).encode()))
    members = draw(st.permutations(members))
    around = draw(spaces)
    text = b",".join(around + key + draw(spaces) + b":" + draw(spaces) + v for key, v in members)
    return b"{" + text + around + b"}", data


@settings(max_examples=150, deadline=None, database=None)
@given(written=st.lists(written_envelopes(), min_size=1, max_size=4), between=spaces)
def test_data_is_sliced_out_byte_for_byte(
    written: list[tuple[bytes, bytes]], between: bytes
) -> None:
    """Whatever the envelope's member order, spacing and extensions, ``data`` keeps its bytes."""
    body = b"[" + (between + b"," + between).join(text for text, _ in written) + b"]"

    records = parse_cloudevents_batch(body, LIMIT)

    assert [record.body for record in records] == [data for _, data in written]
    for (text, data), record in zip(written, records, strict=True):
        assert member_value(text, "data") == data
        assert record.event_id == orjson.loads(text)["id"]
        assert record.client_supplied_id


def test_member_value_skips_nested_members() -> None:
    """Only the object's own members count: a nested ``data`` is not the member."""
    document = b'{"a": {"data": 1}, "b": ["data", {"data": 2}], "data": {"x": "}"}}'

    assert member_value(document, "data") == b'{"x": "}"}'
    assert member_value(b'{"a": {"data": 1}}', "data") is None


def test_member_value_refuses_a_repeated_member() -> None:
    """A member given twice (one spelled with an escape) is refused: a parser keeps only one."""
    with pytest.raises(IngestError) as caught:
        member_value(b'{"data": {}, "\\u0064ata": {"b": 1}}', "data")

    assert caught.value.status == 400


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            b'{"id":"e","data":{"k":[1,"}"]},"source":"s","type":"t","specversion":"1.0"}'
        ),
        pytest.param(
            b'{"id":"e","source":"s","type":"t","specversion":"1.0","data":{"k":[1,"}"]} }'
        ),
        pytest.param(
            b'{"id":"e","source":"s","ext":7,"type":"t","specversion":"1.0","data":{"k":[1,"}"]}}'
        ),
        pytest.param(
            b'{"id":"e","source":"s","type":"t","data":{"k":[1,"}"]},"specversion":"1.0"}'
        ),
    ],
    ids=["data-first", "data-last-spaced", "number-attribute-before", "string-after-data"],
)
def test_data_is_found_wherever_it_stands(text: bytes) -> None:
    """``data`` is sliced exactly whether or not the envelope has our encoder's layout."""
    [record] = parse_cloudevents_batch(b"[" + text + b"]", LIMIT)

    assert record.body == b'{"k":[1,"}"]}'
