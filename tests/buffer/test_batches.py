"""The on-disk batch layout: splitting, reading across batches, pending counts, migration."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from forwarder.buffer import batches
from forwarder.buffer.batches import EventRecord
from forwarder.buffer.schema import MIGRATIONS, migrate
from forwarder.buffer.store import EventBuffer
from tests.support import read_all, stored_events, wait_for


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real buffer whose reads always go to SQLite (no in-memory tail)."""
    opened = EventBuffer(tmp_path / "buffer.db")
    await opened.open(["a", "b"])
    yield opened
    await opened.close()


def record(
    n: int, *, only: str | None = None, kind: str | None = "t", size: int = 0
) -> EventRecord:
    """A numbered event, optionally padded to about ``size`` bytes."""
    body = b'{"n": %d, "pad": "%s"}' % (n, b"x" * size)
    return EventRecord(None, kind, body, False, only_forwarder=only)


def test_split_cuts_at_a_change_of_forwarder_and_at_the_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Consecutive records share a batch until the replay target changes or a limit is hit."""
    monkeypatch.setattr(batches, "MAX_BATCH_EVENTS", 3)
    monkeypatch.setattr(batches, "MAX_BATCH_BYTES", 250)
    records = [
        record(1),
        record(2),
        record(3, only="a"),
        record(4, only="a"),
        record(5),
        record(6),
        record(7),
        record(8),
        record(9, size=300),  # bigger than the byte limit alone: a batch of its own
        record(10),
    ]
    parts = [[number_of(r.body) for r in part] for part in batches.split(records)]
    assert parts == [[1, 2], [3, 4], [5, 6, 7], [8], [9], [10]]


async def test_a_large_append_is_stored_as_several_batches_and_read_back_whole(
    buffer: EventBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events cut into several rows read back as one contiguous, ordered stream."""
    monkeypatch.setattr(batches, "MAX_BATCH_EVENTS", 7)
    await buffer.append([record(n) for n in range(1, 51)])
    rows = await buffer.query("SELECT first_seq, last_seq FROM batches ORDER BY first_seq")
    assert rows[0] == (1, 7)
    assert rows[-1] == (50, 50)
    assert len(rows) == 8
    events = await buffer.read_after("a", 0, 100)
    assert [e.seq for e in events] == list(range(1, 51))
    assert [number_of(e.body) for e in events] == list(range(1, 51))
    # A read starting mid-batch and ending mid-batch.
    assert [e.seq for e in await buffer.read_after("a", 10, 6)] == [11, 12, 13, 14, 15, 16]


def number_of(body: bytes) -> int:
    """The ``n`` field of a test event."""
    value = orjson.loads(body)["n"]
    assert isinstance(value, int)
    return value


async def test_a_long_replay_for_another_forwarder_is_skipped_not_mistaken_for_the_end(
    buffer: EventBuffer,
) -> None:
    """Events beyond a replay batch for someone else, longer than the read, are still found."""
    await buffer.append([record(1)])
    await buffer.append([record(n, only="b") for n in range(2, 3002)])
    await buffer.append([record(3002)])
    assert [e.seq for e in await buffer.read_after("a", 0, 100)] == [1]  # one fetch per call
    assert [e.seq for e in await buffer.read_after("a", 1, 10)] == [3002]
    assert [e.seq for e in await read_all(buffer, "a")] == [1, 3002]
    assert len(await read_all(buffer, "b")) == 3002  # all three batches


async def test_ids_are_kept_when_given_and_generated_from_the_seq_otherwise(
    buffer: EventBuffer, tmp_path: Path
) -> None:
    """A client id and a replayed id are stored; a missing id is made from seq, stably."""
    await buffer.append(
        [
            EventRecord("client-1", "t", b"{}", True),
            EventRecord(None, "t", b"{}", False),
            EventRecord("replayed", "t", b"{}", False, only_forwarder="a"),
        ]
    )
    events = await buffer.read_after("a", 0, 10)
    assert events[0].event_id == "client-1"
    assert events[2].event_id == "replayed"
    generated = events[1].event_id
    assert generated not in {"client-1", "replayed"}
    assert [e.event_id for e in stored_events(tmp_path / "buffer.db")] == [
        "client-1",
        generated,
        "replayed",
    ]


async def test_pending_counts_cover_only_the_part_of_each_batch_in_range(
    buffer: EventBuffer,
) -> None:
    """Counting from inside a batch to inside another counts each event once, by type."""
    await buffer.append([record(n, kind="x" if n % 2 else "y") for n in range(1, 11)])
    await buffer.append([record(n, kind="x") for n in range(11, 21)])
    rows = await buffer.query(batches.PENDING, (5, 15, 4, "a"))
    counts = batches.pending_counts(rows, 4, 15)
    assert {kind: count for kind, (count, _) in counts.items()} == {"x": 8, "y": 3}


async def test_version_2_events_are_migrated_into_batches(tmp_path: Path) -> None:
    """A buffer written with one row per event keeps every pending event, id and type."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.executemany(
        "INSERT INTO events (seq, event_id, event_type, received_at, only_forwarder, body)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (7, "id-7", "t", 100.0, None, b'{"n": 7}'),
            (8, "id-8", None, 101.0, "a", b'{"n": 8}'),
            (9, "id-9", "u", 102.0, None, b'{"n": 9}\n'),
        ],
    )
    conn.execute("INSERT INTO forwarders (name, cursor, created_at) VALUES ('a', 6, 0)")
    conn.execute("UPDATE meta SET value = 9 WHERE key = 'high_water_seq'")
    assert migrate(conn) == 2
    conn.close()

    migrated = EventBuffer(path)
    await migrated.open(["a"])
    try:
        assert migrated.head_seq == 9
        assert migrated.event_count == 3
        events = await migrated.read_after("a", 6, 10)
        assert [(e.seq, e.event_id, e.event_type, e.only_forwarder, e.body) for e in events] == [
            (7, "id-7", "t", None, b'{"n": 7}'),
            (8, "id-8", None, "a", b'{"n": 8}'),
            (9, "id-9", "u", None, b'{"n": 9}\n'),
        ]
        await migrated.append([record(10)])
        assert [e.seq for e in await migrated.read_after("a", 9, 10)] == [10]
    finally:
        await migrated.close()


async def test_many_small_batches_read_in_order_and_evicted_ones_are_read_again(
    buffer: EventBuffer,
) -> None:
    """Single-event commits beyond the reader's cache bound still read back whole and in order."""
    for n in range(1, batches.CACHED_BATCHES * 2 + 1):
        await buffer.append([record(n)])
    events = await read_all(buffer, "a")
    assert [e.seq for e in events] == list(range(1, batches.CACHED_BATCHES * 2 + 1))
    assert [number_of(e.body) for e in events[:3]] == [1, 2, 3]
    # The first batches were evicted to stay within the bound: read from the disk again.
    assert [e.seq for e in await buffer.read_after("b", 10, 5)] == [11, 12, 13, 14, 15]


async def test_a_cursor_inside_a_batch_survives_a_restart(tmp_path: Path) -> None:
    """Half a batch delivered, then a restart: the rest is read, and the batch goes after it."""
    path = tmp_path / "restart.db"
    first = EventBuffer(path)
    await first.open(["a"])
    await first.append([record(n) for n in range(1, 11)])
    await first.execute([], acks={"a": 5})
    await first.close()

    reopened = EventBuffer(path)
    await reopened.open(["a"])
    try:
        assert reopened.cursor("a") == 5
        assert reopened.event_count == 10  # the batch stays whole
        assert [e.seq for e in await read_all(reopened, "a", 5)] == [6, 7, 8, 9, 10]
        await reopened.execute([], acks={"a": 10})
        await wait_for(lambda: reopened.event_count == 0, timeout=10, message="the purge")
        assert stored_events(path) == []
    finally:
        await reopened.close()
