"""How records travel in each format, and that the original bytes come back exactly."""

from __future__ import annotations

import json

import pytest

from forwarder.destinations.webhook.formats import (
    CloudEventsEncoder,
    JsonEncoder,
    NdjsonEncoder,
    SplunkHecEncoder,
)
from forwarder.integrity.envelope import array_items, chain_headers, recover, splice
from forwarder.integrity.records import event_digest
from tests.integrity.chains import chain, key_pair

ODD_BODIES = [
    b'{"a":1}',
    b'  {  "b" : "caf\xc3\xa9 \\u00e9 \\/" , "n":[1, 2.50]}\n',
    b"{}",
    b"{ }",
    b'{"multi":\n  "line"}',
]


@pytest.mark.parametrize("body", ODD_BODIES)
def test_splice_then_recover_gives_the_exact_bytes_back(body: bytes) -> None:
    """Removing the spliced member restores every byte (spacing, escapes, empty objects)."""
    signer, _ = key_pair()
    (event,) = chain(signer, [body])
    assert event.chain is not None
    delivered = splice(body, event.chain.to_json())
    assert json.loads(delivered)["auditChain"]["seq"] == 1
    recovered = recover(delivered.decode())
    assert recovered.event == body
    assert recovered.record == event.chain


def test_json_batches_and_ndjson_carry_a_record_per_event() -> None:
    """A JSON array and NDJSON body hold each event with its record first; digests match."""
    signer, _ = key_pair()
    events = chain(signer, ODD_BODIES)
    array = JsonEncoder(batched=True).encode(events).body.decode()
    lines = NdjsonEncoder().encode(events).body.decode().splitlines()
    for exported in (array_items(array), lines):
        assert len(exported) == len(events)
        for text, event in zip(exported, events, strict=True):
            assert text.startswith('{"auditChain":') or text.lstrip().startswith('{"auditChain":')
            recovered = recover(text)
            assert recovered.record == event.chain
            assert event.chain is not None
            assert event_digest(recovered.event) == event.chain.digest


def test_cloudevents_carry_the_record_as_the_auditchain_extension() -> None:
    """The extension is a string holding the record; data is the event unchanged."""
    signer, _ = key_pair()
    events = chain(signer, ODD_BODIES[:2])
    body = CloudEventsEncoder("src", "", batched=True).encode(events).body.decode()
    for text, event in zip(array_items(body), events, strict=True):
        parsed = json.loads(text)
        assert event.chain is not None
        assert json.loads(parsed["auditchain"])["hash"] == event.chain.digest
        recovered = recover(text)
        assert recovered.event == event.body.strip()  # whitespace around data is not kept
        assert recovered.record == event.chain
        assert event_digest(recovered.event) == event.chain.digest


def test_splunk_hec_carries_the_record_in_fields() -> None:
    """fields.auditchain holds the record; event is the (one-line) event, digest unchanged."""
    signer, _ = key_pair()
    events = chain(signer, ODD_BODIES)
    encoder = SplunkHecEncoder(host="h", source=None, sourcetype=None, index=None)
    lines = encoder.encode(events).body.decode().split("\n")
    for text, event in zip(lines, events, strict=True):
        assert "auditchain" in json.loads(text)["fields"]
        recovered = recover(text)
        assert event.chain is not None
        assert recovered.record == event.chain
        assert event_digest(recovered.event) == event.chain.digest


def test_events_without_records_are_encoded_as_before() -> None:
    """No chain, no change: the json format sends the stored bytes untouched."""
    signer, _ = key_pair()
    (event,) = chain(signer, [b'{"a":1}'])
    plain = event._replace(chain=None)
    assert JsonEncoder().encode([plain]).body == b'{"a":1}'
    assert recover('{"a":1}').record is None


def test_headers_name_the_first_and_last_record_and_the_head() -> None:
    """Audit-Chain-First/Last/Head describe the records of one request."""
    signer, _ = key_pair()
    records = [e.chain for e in chain(signer, ODD_BODIES) if e.chain is not None]
    headers = chain_headers(records[1:4])
    assert headers["Audit-Chain-First"] == "2"
    assert headers["Audit-Chain-Last"] == "4"
    assert headers["Audit-Chain-Head"] == records[3].own_hash
    assert headers["Audit-Chain-Forwarder"] == "siem"
