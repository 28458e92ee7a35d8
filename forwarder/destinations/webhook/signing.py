"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

Atmos Pro signs every payload with HMAC-SHA256 and a per-destination secret,
and sends a stable id for deduplication. We follow the Standard Webhooks
specification (https://www.standardwebhooks.com) rather than invent headers,
so receivers can verify with its libraries in any language::

    webhook-signature: v1,base64(HMAC-SHA256(key, f"{id}.{timestamp}.".encode() + body))

Design decisions:

* The key: a ``whsec_``-prefixed secret is base64 as the specification
  defines (and as its libraries and Svix generate); any other string is the
  key as raw UTF-8 bytes, so ``openssl rand -hex 32`` works too. A receiver
  verifying a raw secret with a Standard Webhooks library must pass it as
  *bytes* (``Webhook(secret.encode())``): the libraries base64-decode a string
  even without the prefix. Prefer ``whsec_`` secrets.
* :func:`check_secret` refuses keys under 16 bytes (128 bits) after decoding:
  HMAC is only as strong as its key, and anything shorter is guessable
  offline from one signed request. The specification recommends 24 to 64
  bytes; 16 is the floor we enforce so existing 128-bit secrets still work.
* :func:`message_id` is derived from the event ids, never random, so every
  retry of the same payload carries the same ``webhook-id`` and the receiver
  can drop duplicates (delivery is at least once). One event keeps its own id
  when that is a header-safe token; anything else, and every batch, becomes a
  digest of the ordered ids.
* Rotation: a forwarder may hold several secrets (``signingSecret`` as a
  list, or ``signingSecretFile`` with one per line; both reach this module
  as one value, one secret per line). Every request then carries one
  ``v1,<signature>`` per secret, separated by spaces, as the specification
  allows, and a receiver holding either secret verifies it. So a rotation
  is: add the new secret beside the old, move the receivers to the new one,
  remove the old one — with no moment when requests fail verification.
* The timestamp is a parameter: callers sign each *attempt* with the current
  time, because receivers reject timestamps older than a tolerance (five
  minutes in the reference libraries) and a retried request can be older.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

import orjson

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 16
BATCH_PREFIX = "batch_"
EVENT_PREFIX = "evt_"
# An event id used as webhook-id as is: header-safe, and not one of our own digest prefixes
# (a client id "batch_<hex>" must not be able to collide with a batch's id).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]{0,255}")


class _SecretError(ValueError):
    """The signing secret cannot be used; the message says why."""


def _decode_key(secret: str) -> bytes:
    """The HMAC key of ``secret`` (see the module docstring); raise _SecretError if unusable."""
    if not secret:
        raise _SecretError("the signing secret is empty")
    if secret != secret.strip():
        raise _SecretError("the signing secret has leading or trailing whitespace")
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            # Unpadded base64 is accepted, as the reference libraries do.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise _SecretError(
                f"the signing secret is not valid base64 after {SECRET_PREFIX}"
            ) from None
    else:
        key = secret.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise _SecretError(
            f"the signing secret is {len(key)} bytes; use at least {MIN_KEY_BYTES}"
            f" (e.g. {SECRET_PREFIX} + base64 of 32 random bytes)"
        )
    return key


def split_secrets(value: str) -> list[str]:
    """The secrets of a ``signingSecret`` value: one per line."""
    return value.split("\n")


def _decode_keys(value: str) -> list[bytes]:
    """The HMAC key of each secret of ``value``; _SecretError naming which one is unusable."""
    if value != value.strip():
        raise _SecretError("the signing secret has leading or trailing whitespace")
    secrets = split_secrets(value)
    keys = []
    for number, secret in enumerate(secrets, 1):
        try:
            keys.append(_decode_key(secret))
        except _SecretError as exc:
            if len(secrets) == 1:
                raise
            raise _SecretError(f"secret {number} of {len(secrets)}: {exc}") from None
    return keys


def check_secret(secret: str) -> str | None:
    """Why ``secret`` (one or more, one per line) cannot sign, or None if it can.

    Refused: empty, surrounding whitespace (almost always a copy-paste or file
    accident, and invisible in the config), invalid base64 after ``whsec_``,
    and keys under :data:`MIN_KEY_BYTES` bytes after decoding. With several
    secrets, the message says which one.
    """
    try:
        _decode_keys(secret)
    except _SecretError as exc:
        return str(exc)
    return None


class Signer:
    """Signs request bodies with one forwarder's secrets, per Standard Webhooks."""

    __slots__ = ("_keys",)

    def __init__(self, secret: str) -> None:
        """Decode the keys once (one secret per line of ``secret``).

        Raises ValueError with :func:`check_secret`'s message if one is unusable.
        """
        self._keys = _decode_keys(secret)

    def signature(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` per secret, by spaces."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        return " ".join(
            "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
            for key in self._keys
        )

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body`` sent at ``timestamp`` (Unix seconds)."""
        if not _SAFE_ID.fullmatch(message_id):
            raise ValueError(f"{message_id!r} is not a header-safe message id: use message_id()")
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(message_id, timestamp, body),
        }


def _digest(event_ids: Sequence[str]) -> str:
    # JSON keeps the encoding unambiguous whatever the ids contain (commas, newlines, NULs).
    return hashlib.sha256(orjson.dumps(list(event_ids))).hexdigest()[:32]


def message_id(event_ids: Sequence[str]) -> str:
    """The ``webhook-id`` of a payload carrying ``event_ids`` in this order.

    The same for every retry of the same payload: one event's own id when it
    is a header-safe token, ``evt_<digest>`` for any other single id, and
    ``batch_<digest>`` (128 bits of SHA-256 over the ordered ids) for a batch.
    """
    if not event_ids:
        raise ValueError("a message carries at least one event")
    if len(event_ids) == 1:
        only = event_ids[0]
        if _SAFE_ID.fullmatch(only) and not only.startswith((BATCH_PREFIX, EVENT_PREFIX)):
            return only
        return EVENT_PREFIX + _digest(event_ids)
    return BATCH_PREFIX + _digest(event_ids)
