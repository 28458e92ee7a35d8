"""Opening the buffer's connections and reading back the state a restart resumes from.

Split from the store so that the store holds the running buffer and this
module holds what happens once per start: the connection settings (WAL,
durability, small page caches, a bounded WAL after checkpoints) and the few
queries that recover the head, the cursors and the instance number. Nothing
here is on a hot path, and all of it must agree with ``schema.py``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

from forwarder.buffer.cleanup import BUSY_TIMEOUT_MS


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
    await writer.execute("PRAGMA cache_size = -2000")
    # After a checkpoint the WAL file is cut back to this size instead of
    # keeping its peak: audit_forwarder_buffer_bytes counts it.
    await writer.execute("PRAGMA journal_size_limit = 16777216")
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
