"""Opening the buffer's connections and reading back the state a restart resumes from.

Split from the store so that the store holds the running buffer and this
module holds what happens once per start: the connection settings (WAL,
durability, small page caches, a bounded WAL after checkpoints) and the few
queries that recover the head, the cursors and the instance number, and the
check that the configured keys open what is pending (``check_keys``). Nothing
here is on a hot path, and all of it must agree with ``schema.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

from forwarder.buffer.check import missing_key, wrong_key
from forwarder.buffer.cleanup import BUSY_TIMEOUT_MS
from forwarder.buffer.encryption import (
    MAGIC,
    EncryptionError,
    Keyring,
    batch_context,
    key_id_sql,
    sealed_sql,
)
from forwarder.logs import get_logger

log = get_logger("buffer")


@dataclass(frozen=True)
class ResumedState:
    """What the file says about where the buffer stands."""

    head_seq: int  # the highest seq ever assigned (seqs are never reused)
    purged_upto: int  # every seq at or below this is gone from the batches table
    event_count: int
    page_size: int
    instance: int  # random per file: generated ids of two files never collide
    cursors: dict[str, int]


async def connect_writer(
    path: Path, synchronous: Literal["normal", "full"]
) -> aiosqlite.Connection:
    """The single writer connection: WAL, the configured durability, a bounded WAL."""
    writer = await aiosqlite.connect(path, isolation_level=None)
    await writer.execute("PRAGMA journal_mode = WAL")
    await writer.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # 2 MB, SQLite's default, per connection. At rest the memory trimmer empties
    # it (EventBuffer.release_memory); under load 1 MB lowered the peak by only
    # ~2 MB (measured, scenario 1), far inside the 80 MB target.
    await writer.execute("PRAGMA cache_size = -2000")
    # After a checkpoint the WAL file is cut back to this size instead of
    # keeping its peak: audit_forwarder_buffer_bytes counts it.
    await writer.execute("PRAGMA journal_size_limit = 16777216")
    # Checkpoints run on a connection of their own (forwarder.buffer.checkpoints),
    # not inside the writer's COMMIT where they would delay acknowledgements.
    await writer.execute("PRAGMA wal_autocheckpoint = 0")
    return writer


async def connect_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection: WAL readers never block the writer."""
    reader = await aiosqlite.connect(path, isolation_level=None)
    await reader.execute("PRAGMA query_only = 1")
    await reader.execute("PRAGMA cache_size = -2000")
    return reader


async def read_state(writer: aiosqlite.Connection) -> ResumedState:
    """Read the head, counts, cursors and instance; give a new file its instance number."""
    page_size = await writer.execute_fetchall("PRAGMA page_size")
    rows = await writer.execute_fetchall(
        "SELECT (SELECT value FROM meta WHERE key = 'high_water_seq'),"
        " max(last_seq), min(first_seq), sum(last_seq - first_seq + 1) FROM batches"
    )
    high_water, max_seq, min_seq, count = next(iter(rows))
    head_seq = max(high_water or 0, max_seq or 0)
    found = await writer.execute_fetchall("SELECT value FROM meta WHERE key = 'instance'")
    if found:
        instance = int(next(iter(found))[0])
    else:
        instance = secrets.randbits(63)
        await writer.execute("INSERT INTO meta (key, value) VALUES ('instance', ?)", (instance,))
    cursors = await writer.execute_fetchall("SELECT name, cursor FROM forwarders")
    return ResumedState(
        head_seq=head_seq,
        purged_upto=(min_seq - 1) if min_seq is not None else head_seq,
        event_count=int(count or 0),
        page_size=int(next(iter(page_size))[0]),
        instance=instance,
        cursors={str(name): int(cursor) for name, cursor in cursors},
    )


async def check_keys(
    conn: aiosqlite.Connection,
    path: Path,
    keyring: Keyring,
    cursors: Mapping[str, int],
    forwarder_names: Iterable[str],
) -> None:
    """Refuse to start when pending events cannot be opened with the configured keys.

    Pending: in a batch above the lowest cursor of the configured forwarders
    (a new forwarder starts at the head; a removed one's cursor goes). A key
    id that is not configured, or a key that does not open the first batch
    stored under its id, is a :class:`BufferUnusableError` naming the ids:
    the alternative, finding out in a delivery worker, would stop delivery
    later with events acknowledged. Dead letters and history under a missing
    key only warn: they are shown with an error per row, never lost.
    """
    kept = [cursors[name] for name in forwarder_names if name in cursors]
    if not kept:
        return
    key_id = key_id_sql("bodies")
    rows = await conn.execute_fetchall(
        f"SELECT {key_id} AS key_id, sum(last_seq - first_seq + 1), min(first_seq)"
        f" FROM batches WHERE last_seq > ? AND {sealed_sql('bodies')}"
        " GROUP BY key_id",
        (min(kept), MAGIC),
    )
    found = {bytes(kid).decode("ascii", "replace"): (int(n), int(first)) for kid, n, first in rows}
    missing = sorted(kid for kid in found if not keyring.has(kid))
    if missing:
        raise missing_key(path, missing, sum(found[kid][0] for kid in missing), keyring)
    for kid, (_, first) in sorted(found.items()):
        batch = await conn.execute_fetchall(
            "SELECT first_seq, last_seq, bodies FROM batches WHERE first_seq = ?", (first,)
        )
        for first_seq, last_seq, bodies in batch:
            try:
                keyring.open(bytes(bodies), batch_context(first_seq, last_seq))
            except EncryptionError:
                raise wrong_key(path, kid, first_seq, last_seq) from None
    await _warn_unreadable_rows(conn, keyring)


async def _warn_unreadable_rows(conn: aiosqlite.Connection, keyring: Keyring) -> None:
    """Log the dead letters and history answers stored under keys no longer configured."""
    for table, column in (
        ("dead_letters", "body"),
        ("dead_letters", "response_body"),
        ("delivery_attempts", "response_body"),
    ):
        rows = await conn.execute_fetchall(
            f"SELECT {key_id_sql(column)} AS key_id, count(*) FROM {table}"
            f" WHERE {sealed_sql(column)} GROUP BY key_id",
            (MAGIC,),
        )
        unknown = {
            bytes(kid).decode("ascii", "replace"): int(count)
            for kid, count in rows
            if not keyring.has(bytes(kid).decode("ascii", "replace"))
        }
        if unknown:
            log.warning(
                "buffer_rows_under_missing_keys",
                table=table,
                column=column,
                rows_by_key_id=unknown,
            )
