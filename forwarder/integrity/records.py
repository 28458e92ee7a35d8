"""Chain records: what each delivered event carries, and how a record is hashed.

A record links one event into its forwarder's chain::

    {"v":1,"fwd":"siem","seq":42,"hash":"<event digest>","prev":"<hash of record 41>"}

* ``seq`` counts the events delivered to that forwarder, from 1, without gaps;
* ``hash`` is the event's digest (:func:`event_digest`): SHA-256 of its
  ingested bytes;
* ``prev`` is the hash of the previous record (:data:`GENESIS`, 64 zeros, for
  seq 1), so every record commits to the whole chain before it.

The hash of a record is SHA-256 of exactly those five members serialised as
above: compact JSON, in that order (:func:`canonical`). Forwarder names are
``[A-Za-z0-9_.-]``, so no escaping can make two implementations disagree.

A checkpoint is a record that also carries ``"key"`` (the signing key's id)
and ``"sig"``: an Ed25519 signature of :func:`checkpoint_message`, which
names the record's own hash. ``key`` and ``sig`` are outside the hashed
part on purpose: whether a record is a checkpoint may depend on the clock
(``checkpointIntervalSeconds``), so a record redelivered after a crash can
differ in its signature alone and is still the same link of the same chain.

The event digest is over the ingested bytes with surrounding whitespace
trimmed and any raw CR/LF turned into spaces. In valid JSON those can only
be insignificant whitespace (inside strings they are escaped), so the digest
still pins every byte of the event, and an event delivered on one NDJSON
line or exported one per line by a SIEM hashes the same as the stored one.

No cryptography here beyond hashlib: the delivery formats import this module
on every chained request, and :mod:`forwarder.integrity.keys` is loaded only
where something is signed or verified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1
GENESIS = "0" * 64
# JSON whitespace: what may surround an object and separate its tokens.
_JSON_WHITESPACE = b" \t\r\n"
_LINE_BREAKS_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")
_CHECKPOINT_PREFIX = b"audit-forwarder chain checkpoint v1 "


def event_digest(body: bytes) -> str:
    """SHA-256 (hex) of an event's bytes, trimmed, with raw CR/LF as spaces (see above)."""
    text = body.strip(_JSON_WHITESPACE)
    if b"\n" in text or b"\r" in text:
        text = text.translate(_LINE_BREAKS_TO_SPACES)
    return hashlib.sha256(text).hexdigest()


def canonical(forwarder: str, seq: int, digest: str, prev: str) -> bytes:
    """The hashed part of a record: compact JSON, members in this order."""
    return (
        b'{"v":1,"fwd":'
        + orjson.dumps(forwarder)
        + b',"seq":'
        + str(seq).encode()
        + b',"hash":"'
        + digest.encode()
        + b'","prev":"'
        + prev.encode()
        + b'"}'
    )


def record_hash(forwarder: str, seq: int, digest: str, prev: str) -> str:
    """The hash of a record (hex): what the next record's ``prev`` names."""
    return hashlib.sha256(canonical(forwarder, seq, digest, prev)).hexdigest()


def checkpoint_message(head: str) -> bytes:
    """What a checkpoint's signature covers: a fixed prefix and the record's own hash."""
    return _CHECKPOINT_PREFIX + head.encode()


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One event's record, as delivered. ``own_hash`` is computed, never sent."""

    forwarder: str
    seq: int
    digest: str
    prev: str
    own_hash: str
    key_id: str | None = None
    signature: str | None = None  # base64, only at checkpoints

    @classmethod
    def link(cls, forwarder: str, seq: int, digest: str, prev: str) -> ChainRecord:
        """The record of event ``seq`` (not signed)."""
        return cls(forwarder, seq, digest, prev, record_hash(forwarder, seq, digest, prev))

    def signed(self, key_id: str, signature: str) -> ChainRecord:
        """This record as a checkpoint."""
        return ChainRecord(
            self.forwarder, self.seq, self.digest, self.prev, self.own_hash, key_id, signature
        )

    def to_json(self) -> bytes:
        """The record as it travels: the hashed members, then ``key`` and ``sig`` if signed."""
        core = canonical(self.forwarder, self.seq, self.digest, self.prev)
        if self.signature is None or self.key_id is None:
            return core
        return (
            core[:-1]
            + b',"key":"'
            + self.key_id.encode()
            + b'","sig":"'
            + self.signature.encode()
            + b'"}'
        )

    @classmethod
    def from_json(cls, data: bytes) -> ChainRecord:
        """The inverse of :meth:`to_json` (raises ``ValueError`` when it is not a record)."""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        return cls.from_value(value)

    @classmethod
    def from_value(cls, value: Any) -> ChainRecord:
        """A record from its parsed JSON; ``ValueError`` naming what is wrong."""
        if not isinstance(value, dict):
            raise ValueError("a record must be a JSON object")
        if value.get("v") != VERSION:
            raise ValueError(f"unknown record version {value.get('v')!r:.20}")
        forwarder, seq = value.get("fwd"), value.get("seq")
        digest, prev = value.get("hash"), value.get("prev")
        if not isinstance(forwarder, str) or not forwarder:
            raise ValueError("fwd must be a forwarder name")
        if type(seq) is not int or seq < 1:
            raise ValueError("seq must be a positive integer")
        for name, hexed in (("hash", digest), ("prev", prev)):
            if not _is_sha256_hex(hexed):
                raise ValueError(f"{name} must be 64 lowercase hex digits")
        key_id, signature = value.get("key"), value.get("sig")
        if (key_id is None) != (signature is None):
            raise ValueError("key and sig go together")
        if signature is not None and not (isinstance(key_id, str) and isinstance(signature, str)):
            raise ValueError("key and sig must be strings")
        assert isinstance(digest, str)  # checked just above
        assert isinstance(prev, str)
        record = cls.link(forwarder, seq, digest, prev)
        if signature is None:
            return record
        assert isinstance(key_id, str)
        return record.signed(key_id, signature)


def _is_sha256_hex(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
