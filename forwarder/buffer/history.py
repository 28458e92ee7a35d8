"""How the delivery history stores the event ids of an attempt: compressed JSON.

Every attempt records the ids of the events it carried. At 100 events per
request that was about 4 KB of JSON per row: a backlog of a million events
left some 40 MB of history in the buffer file after it had drained, and the
default cap of 100,000 rows per forwarder could reach 400 MB, counted
against ``buffer.maxBytes``. Ids of one request are nearly all alike
(generated ids differ only in their last digits), so zlib at its fastest
level shrinks them about tenfold for a few microseconds per request. Rows
written before this are plain JSON text and read as such.

With encryption at rest, an attempt's ``response_body`` (what the receiver
answered, which may echo events) is sealed by the writer and opened by
:func:`response_text`; its event ids, codes and times stay in clear.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import orjson

from forwarder.buffer.encryption import EncryptionError, Keyring, open_column

INSERT_ATTEMPT = (
    "INSERT INTO delivery_attempts (forwarder, attempted_at, attempt, events, event_ids,"
    " outcome, code, status, duration_ms, error, response_body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# When a forwarder's newest successful attempt ended (its start plus its
# duration), for a worker to restore after a restart. The (forwarder, id)
# index walks back from the newest row and stops at the first success.
LAST_SUCCESS = (
    "SELECT attempted_at + duration_ms / 1000.0 FROM delivery_attempts"
    " WHERE forwarder = ? AND outcome = 'success' ORDER BY id DESC LIMIT 1"
)


def pack_event_ids(event_ids: Sequence[str]) -> bytes:
    """The stored form of an attempt's event ids."""
    return zlib.compress(orjson.dumps(list(event_ids)), 1)


def unpack_event_ids(stored: str | bytes) -> list[str]:
    """The event ids of a stored attempt (compressed, or JSON text from older rows)."""
    if isinstance(stored, bytes):
        stored = zlib.decompress(stored)
    ids = orjson.loads(stored)
    if not isinstance(ids, list):
        raise ValueError("stored event ids are not a list")
    return [str(event_id) for event_id in ids]


def response_text(
    keyring: Keyring, forwarder: str, attempted_at: float, attempt: int, stored: bytes | None
) -> str:
    """An attempt's stored answer as text; an error naming the key id if it cannot be opened."""
    try:
        body = open_column(
            keyring,
            "delivery_attempts",
            "response_body",
            stored,
            (forwarder, attempted_at, attempt),
            f"the answer to attempt {attempt} at {attempted_at}",
        )
    except EncryptionError as exc:
        return f"[not readable: {exc}]"
    return (body or b"").decode("utf-8", "replace")
