"""Test helpers: a real chain of events, encoded by the real formats, as a SIEM would export it."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from forwarder.buffer.batches import StoredEvent
from forwarder.destinations.webhook.formats import JsonEncoder
from forwarder.integrity.keys import Signer, generate, load_public_key
from forwarder.integrity.records import GENESIS, ChainRecord, event_digest


def key_pair() -> tuple[Signer, bytes]:
    """A fresh signer and its public key PEM."""
    private_pem, public_pem = generate()
    return Signer.from_pem(private_pem.decode()), public_pem


def chain(
    signer: Signer, bodies: list[bytes], *, every: int = 5, name: str = "siem"
) -> list[StoredEvent]:
    """Events with records linked from genesis; every ``every``-th record (and the last) signed."""
    events, head = [], GENESIS
    for index, body in enumerate(bodies, 1):
        record = ChainRecord.link(name, index, event_digest(body), head)
        head = record.own_hash
        if index % every == 0 or index == len(bodies):
            record = record.signed(signer.key_id, signer.sign(record.own_hash))
        events.append(StoredEvent(index, f"evt-{index}", "audit", 0.0, None, body, record))
    return events


def exported(events: list[StoredEvent]) -> list[str]:
    """One NDJSON line per event, exactly as the json format delivered it."""
    return [JsonEncoder().encode([event]).body.decode() for event in events]


def bodies(count: int) -> list[bytes]:
    """Distinct event bodies, with the spacing and escapes a re-serialiser would lose."""
    return [
        json.dumps({"n": n, "user": "alice", "note": "caf\u00e9 \\/"}, ensure_ascii=False).encode()
        for n in range(count)
    ]


def public(public_pem: bytes) -> Ed25519PublicKey:
    """The public key object of ``public_pem``."""
    return load_public_key(public_pem)
