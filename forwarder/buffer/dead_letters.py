"""Dead letters: listing, replaying into a forwarder's queue, and purging.

A dead letter keeps its own copy of the event body, so it outlives the
event's batch in the buffer (which is deleted once every forwarder has passed
it). A replay appends the event again with ``only_forwarder`` set — so only
that forwarder receives it, after what is already queued — and deletes the
dead-letter row in the same transaction: the event is never in both places,
nor in neither. Replay after fixing a bad token is the normal way out of a
401 storm. A replay by id says which of the ids it was given matched no dead
letter (a typo, or one already replayed or purged), so that the operator is
not told "done" when nothing was.

With encryption at rest, ``body`` and ``response_body`` are sealed by the
writer (``forwarder.buffer.writes``) and opened here. A dead letter under a
key that is no longer configured is never dropped: the list shows an error
for that row naming the key id, and a replay that selects one refuses before
it replays anything (:class:`forwarder.buffer.encryption.MissingKeyError`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from forwarder.buffer.encryption import (
    MAGIC,
    EncryptionError,
    Keyring,
    MissingKeyError,
    is_sealed,
    key_id_of,
    open_column,
)
from forwarder.buffer.store import EventBuffer, EventRecord

INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (forwarder, seq, event_id, event_type, received_at,"
    " dead_at, status, code, reason, response_body, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
REPLAY_CHUNK = 1000
MAX_LIST_LIMIT = 1000


def _where(forwarder: str | None, event_ids: Sequence[str]) -> tuple[str, list[Any]]:
    clauses, parameters = [], []
    if forwarder is not None:
        clauses.append("forwarder = ?")
        parameters.append(forwarder)
    if event_ids:
        clauses.append(f"event_id IN ({','.join('?' * len(event_ids))})")
        parameters += list(event_ids)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", parameters


async def list_dead_letters(
    buffer: EventBuffer, forwarder: str | None, limit: int
) -> dict[str, Any]:
    """The newest ``limit`` dead letters (optionally of one forwarder) and the total."""
    where, parameters = _where(forwarder, ())
    rows = await buffer.query(
        "SELECT id, forwarder, event_id, event_type, received_at, dead_at, status, code,"
        f" reason, response_body, seq FROM dead_letters{where} ORDER BY id DESC LIMIT ?",
        (*parameters, limit),
    )
    (total,) = (await buffer.query(f"SELECT count(*) FROM dead_letters{where}", parameters))[0]
    return {
        "total": int(total),
        "dead_letters": [
            {
                "id": row_id,
                "forwarder": name,
                "event_id": event_id,
                "event_type": event_type,
                "received_at": received_at,
                "dead_at": dead_at,
                "status": status,
                "code": code,
                "reason": reason,
                **_response(buffer.keyring, body, name, seq, event_id),
            }
            for (
                row_id,
                name,
                event_id,
                event_type,
                received_at,
                dead_at,
                status,
                code,
                reason,
                body,
                seq,
            ) in rows
        ],
    }


def _response(
    keyring: Keyring, stored: bytes | None, forwarder: str, seq: int, event_id: str
) -> dict[str, str]:
    """``response_body`` as text; when it cannot be opened, the error in its place too."""
    where = f"the dead letter of event {event_id}"
    try:
        body = open_column(
            keyring, "dead_letters", "response_body", stored, (forwarder, seq, event_id), where
        )
    except EncryptionError as exc:
        return {"response_body": f"[not readable: {exc}]", "encryption_error": str(exc)}
    return {"response_body": (body or b"").decode("utf-8", "replace")}


async def _require_keys(buffer: EventBuffer, where: str, parameters: Sequence[Any]) -> None:
    """Refuse a replay selecting dead letters under a key that is not configured."""
    sealed = f"{where} AND substr(body, 1, 4) = ?" if where else " WHERE substr(body, 1, 4) = ?"
    rows = await buffer.query(
        f"SELECT event_id, substr(body, 1, 100) FROM dead_letters{sealed}",
        (*parameters, MAGIC),
    )
    for event_id, head in rows:
        if is_sealed(head) and not buffer.keyring.has(key_id := key_id_of(head)):
            raise MissingKeyError(key_id, f"the dead letter of event {event_id}")


async def replay(
    buffer: EventBuffer,
    forwarders: Collection[str],
    forwarder: str | None,
    event_ids: Sequence[str],
) -> dict[str, Any]:
    """Re-queue matching dead letters to their forwarder; return what was done.

    ``{"replayed": N, "skipped_unknown_forwarder": M}``, plus ``"not_found"``
    (in the order given) when some of ``event_ids`` matched no dead letter.
    A selected dead letter under a key that is not configured raises
    :class:`MissingKeyError` before anything is replayed.
    """
    where, parameters = _where(forwarder, event_ids)
    await _require_keys(buffer, where, parameters)
    replayed = skipped = 0
    after = 0
    missing = dict.fromkeys(event_ids)
    while True:
        clause = f"{where} AND id > ?" if where else " WHERE id > ?"
        rows = await buffer.query(
            f"SELECT id, forwarder, event_id, event_type, body, seq FROM dead_letters{clause}"
            " ORDER BY id LIMIT ?",
            (*parameters, after, REPLAY_CHUNK),
        )
        if not rows:
            result: dict[str, Any] = {"replayed": replayed, "skipped_unknown_forwarder": skipped}
            if missing:
                result["not_found"] = list(missing)
            return result
        after = rows[-1][0]
        for row in rows:
            missing.pop(row[2], None)
        wanted = [row for row in rows if row[1] in forwarders]
        skipped += len(rows) - len(wanted)
        if wanted:
            records = [
                EventRecord(
                    event_id,
                    event_type,
                    _body(buffer.keyring, body, name, seq, event_id),
                    False,
                    only_forwarder=name,
                )
                for _, name, event_id, event_type, body, seq in wanted
            ]
            await buffer.append(
                records, [("DELETE FROM dead_letters WHERE id = ?", [(row[0],) for row in wanted])]
            )
            replayed += len(wanted)


def forget_chain_records(where: str) -> str:
    """The statement deleting the chain records of the dead letters ``where`` selects.

    A chained forwarder's dead letter keeps its chain record
    (``chain_dead_letters``) so that a replay carries it; once the dead
    letter itself is purged or expires, nothing can replay it, so its record
    goes in the same transaction. ``where`` is a ``WHERE`` clause on
    ``dead_letters`` (leading space included) with the parameters of the
    ``DELETE`` that follows it.
    """
    return (
        "DELETE FROM chain_dead_letters WHERE (forwarder, event_id) IN"
        f" (SELECT forwarder, event_id FROM dead_letters{where})"
    )


async def purge(buffer: EventBuffer, forwarder: str | None, event_ids: Sequence[str]) -> int:
    """Delete matching dead letters; return how many."""
    where, parameters = _where(forwarder, event_ids)
    count, newest = (
        await buffer.query(f"SELECT count(*), max(id) FROM dead_letters{where}", parameters)
    )[0]
    if not count:
        return 0
    # Bounded by the newest row counted: a dead letter arriving meanwhile is kept.
    clause = f"{where} AND id <= ?" if where else " WHERE id <= ?"
    await buffer.execute(
        [
            (forget_chain_records(clause), [(*parameters, newest)]),
            (f"DELETE FROM dead_letters{clause}", [(*parameters, newest)]),
        ]
    )
    return int(count)


def _body(keyring: Keyring, stored: bytes, forwarder: str, seq: int, event_id: str) -> bytes:
    """A dead letter's event bytes, opened when sealed."""
    where = f"the dead letter of event {event_id}"
    body = open_column(keyring, "dead_letters", "body", stored, (forwarder, seq, event_id), where)
    assert body is not None  # the column is NOT NULL
    return body
