"""What one group commit writes: registrations, appends with dedup, statements, cursor acks.

Split from the store so that the store holds the buffer's lifecycle and its
in-memory state, and this module holds the SQL of a transaction. Everything
here runs inside the writer's open ``BEGIN IMMEDIATE`` and only *records* in
the :class:`Group` what changed (new seqs, cursors, registrations); the
writer task (``forwarder.buffer.writer``) applies that to memory after
``COMMIT``, so a rolled-back group leaves no trace in memory either.

Encryption at rest happens here too, in the one place every write passes:
batch bodies are sealed as their rows are built, and the dead-letter and
history rows the delivery process sends as plain statements are sealed
before they run (``forwarder.buffer.encryption``), so plaintext bodies never
reach the file and no other stage needs the key to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from forwarder.buffer import batches
from forwarder.buffer.batches import EventRecord
from forwarder.buffer.commits import Append, AppendResult, Group, Part, Register, Statements
from forwarder.buffer.encryption import NO_KEYS, Keyring, seal_statements

_IN_CHUNK = 500


async def write_group(
    conn: aiosqlite.Connection,
    group: Group,
    cursors: Mapping[str, int],
    head_seq: int,
    now: float,
    keyring: Keyring = NO_KEYS,
) -> int:
    """Write every operation of ``group`` inside the open transaction, in queue order.

    ``cursors`` and ``head_seq`` are the committed state before this group;
    what the group changes is collected in ``group`` and applied to memory only
    after the commit. Returns the bytes of the batch rows it appended (what
    the new events hold against ``buffer.maxBytes``).
    """
    appended = 0
    for op in group.ops:
        if isinstance(op, Register):
            _write_registration_rows(op, group, cursors, head_seq)
            await _write_registration(conn, group, now)
    appends = [op for op in group.ops if isinstance(op, Append)]
    if appends:
        appended = await _write_appends(conn, appends, group, head_seq, now, keyring)
    statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
    for op in group.ops:
        if isinstance(op, Append | Statements):
            statements += seal_statements(keyring, op.statements)
        if isinstance(op, Statements):
            for name, seq in op.acks.items():
                group.acks[name] = max(seq, group.acks.get(name, seq))
    for sql, rows in coalesced(statements):
        await conn.executemany(sql, rows)
    if group.acks:
        await conn.executemany(
            "UPDATE forwarders SET cursor = ? WHERE name = ? AND cursor < ?",
            [(seq, name, seq) for name, seq in group.acks.items()],
        )
    return appended


def coalesced(
    statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
) -> list[tuple[str, Sequence[Sequence[Any]]]]:
    """``statements`` in order, neighbours with the same SQL merged into one ``executemany``.

    Every delivery attempt queues its own history row: a group holds dozens
    of them one after the other, and each ``executemany`` is a round trip to
    the writer's thread. Only neighbours are merged, so the order in which
    the rows are written is the order they were queued in.
    """
    merged: list[tuple[str, list[Sequence[Any]]]] = []
    for sql, rows in statements:
        if merged and merged[-1][0] == sql:
            merged[-1][1].extend(rows)
        else:
            merged.append((sql, list(rows)))
    return list(merged)


def _write_registration_rows(
    op: Register, group: Group, cursors: Mapping[str, int], head_seq: int
) -> None:
    """Decide which forwarders are added (at the head) and which are removed."""
    wanted = set(op.names)
    known = (set(cursors) | set(group.registered)) - group.removed
    for name in known - wanted:
        group.registered.pop(name, None)
        group.removed.add(name)
    for name in sorted(wanted - known):
        group.removed.discard(name)
        group.registered[name] = head_seq


async def _write_registration(conn: aiosqlite.Connection, group: Group, now: float) -> None:
    if group.removed:
        await conn.executemany(
            "DELETE FROM forwarders WHERE name = ?", [(n,) for n in group.removed]
        )
    await conn.executemany(
        "INSERT OR REPLACE INTO forwarders (name, cursor, created_at) VALUES (?, ?, ?)",
        [(name, seq, now) for name, seq in group.registered.items()],
    )


async def _write_appends(
    conn: aiosqlite.Connection,
    appends: list[Append],
    group: Group,
    head_seq: int,
    now: float,
    keyring: Keyring,
) -> int:
    known = await _known_client_ids(conn, appends)
    client_rows: list[tuple[str, float]] = []
    kept: list[EventRecord] = []
    for op in appends:
        stored = 0
        for record in op.records:
            if record.client_supplied_id and record.event_id is not None:
                if record.event_id in known:
                    continue
                known.add(record.event_id)
                client_rows.append((record.event_id, now))
            kept.append(record)
            stored += 1
        group.results.append(AppendResult(len(op.records), len(op.records) - stored))
    seq = head_seq
    rows = []
    for part in batches.split(kept):
        group.parts.append(Part(seq + 1, part))
        rows.append(batches.batch_row(seq + 1, part, now, keyring))
        seq += len(part)
    group.received_at = now
    if rows:
        await conn.executemany(batches.INSERT, rows)
        await conn.execute("UPDATE meta SET value = ? WHERE key = 'high_water_seq'", (seq,))
    if client_rows:
        await conn.executemany(
            "INSERT INTO client_ids (event_id, received_at) VALUES (?, ?)", client_rows
        )
    return sum(batches.row_bytes(row) for row in rows)


async def _known_client_ids(conn: aiosqlite.Connection, appends: list[Append]) -> set[str]:
    wanted = list({r.event_id for op in appends for r in op.records if r.client_supplied_id})
    known: set[str] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = await conn.execute_fetchall(
            f"SELECT event_id FROM client_ids WHERE event_id IN ({marks})", chunk
        )
        known.update(str(row[0]) for row in rows)
    return known
