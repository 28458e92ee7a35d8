"""The buffer file: schema and migrations, a full disk, and space handed back after a drain."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.buffer import cleanup
from forwarder.buffer.schema import PAGE_SIZE, SCHEMA_VERSION, SchemaTooNewError, migrate
from forwarder.buffer.store import AppendResult, EventBuffer, EventRecord
from forwarder.errors import BufferUnavailableError
from tests.buffer.stores import Clock, OpenBuffer, append_numbered, on_disk, record
from tests.support import stored_events, wait_for


async def test_fresh_file_gets_current_schema_and_incremental_vacuum(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """A new file has the current schema, 16 KiB pages and auto_vacuum = INCREMENTAL."""
    path = tmp_path / "fresh" / "buffer.db"
    await open_buffer(path=path)

    assert on_disk(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert on_disk(path, "PRAGMA auto_vacuum") == [(2,)]
    assert on_disk(path, "PRAGMA page_size") == [(PAGE_SIZE,)]
    assert on_disk(path, "PRAGMA journal_mode") == [("wal",)]


async def test_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A file whose user_version is above SCHEMA_VERSION is refused and left untouched."""
    path = tmp_path / "buffer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    buffer = EventBuffer(path)

    with pytest.raises(SchemaTooNewError):
        await buffer.open(["f"])

    await buffer.close()
    assert on_disk(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert on_disk(path, "SELECT name FROM sqlite_master") == []


async def test_reopening_does_not_rerun_migrations(open_buffer: OpenBuffer, tmp_path: Path) -> None:
    """Reopening a current file keeps its data; migrate() on it is a no-op returning the version."""
    path = tmp_path / "buffer.db"
    buffer = await open_buffer()
    await append_numbered(buffer, [1])
    await buffer.close()
    schema_before = on_disk(path, "SELECT sql FROM sqlite_master ORDER BY name")
    meta_before = on_disk(path, "SELECT key, value FROM meta ORDER BY key")

    reopened = await open_buffer()
    assert [e.seq for e in await reopened.read_after("f", 0, 10)] == [1]
    await reopened.close()

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn) == SCHEMA_VERSION
    finally:
        conn.close()
    assert on_disk(path, "SELECT sql FROM sqlite_master ORDER BY name") == schema_before
    # The instance number behind generated ids is kept: ids stay unique and sorted.
    assert on_disk(path, "SELECT key, value FROM meta ORDER BY key") == meta_before
    assert ("high_water_seq", 1) in meta_before
    assert [key for key, _ in meta_before] == ["high_water_seq", "instance"]


# -- failure -------------------------------------------------------------------------


async def test_disk_full_fails_the_append_and_stores_nothing(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """When SQLite cannot grow the file, append fails as buffer_full; a higher limit heals it."""
    buffer = await open_buffer()
    await append_numbered(buffer, [1])
    writer = buffer._writer
    assert writer is not None
    page_count = next(iter(await writer.execute_fetchall("PRAGMA page_count")))[0]
    await writer.execute_fetchall(f"PRAGMA max_page_count = {page_count}")
    big = EventRecord("big", "test.event", b'{"pad": "' + b"x" * 200_000 + b'"}', False)

    with pytest.raises(BufferUnavailableError) as failed:
        await buffer.append([record(2), big])

    assert failed.value.reason == "buffer_full"
    assert buffer.head_seq == 1
    assert buffer.event_count == 1
    assert [e.seq for e in stored_events(tmp_path / "buffer.db")] == [1]
    assert [e.seq for e in await buffer.read_after("f", 0, 10)] == [1]

    await writer.execute_fetchall("PRAGMA max_page_count = 1073741823")
    assert await buffer.append([record(2), big]) == AppendResult(2, 0)
    assert [e.seq for e in await buffer.read_after("f", 0, 10)] == [1, 2, 3]


async def test_file_returns_near_its_empty_size_after_a_backlog_drains(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Once a backlog is delivered, an idle buffer deletes it and hands the pages back."""
    fast = lambda: time.time() * 100  # noqa: E731  maintenance intervals pass 100x faster
    buffer = await open_buffer(clock=fast)
    empty = buffer.size_bytes()
    body = b'{"pad": "' + b"x" * 2000 + b'"}'
    for _ in range(20):
        await buffer.append([EventRecord(None, "t", body, False) for _ in range(2_000)])
    full = buffer.size_bytes()
    # 40,000 events of 2 KB: about 77 MiB in the file, the WAL or both, whenever it was cut.
    assert full > 70 * 1024 * 1024
    await buffer.execute([], acks={"f": buffer.head_seq})  # everything delivered

    await wait_for(lambda: buffer.event_count == 0, timeout=30, message="the purge")
    await wait_for(
        lambda: buffer.size_bytes() < empty + 20 * 1024 * 1024,
        timeout=60,
        message="the file to shrink back",
    )
    assert stored_events(tmp_path / "buffer.db") == []


async def test_a_vacuum_ending_below_its_threshold_still_cuts_the_wal(
    open_buffer: OpenBuffer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps of 4 MiB with a 4 MiB threshold leave a remainder below it: the WAL still goes."""
    monkeypatch.setattr(cleanup, "VACUUM_STEP_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(cleanup, "VACUUM_MIN_FREE_BYTES", 4 * 1024 * 1024)
    fast = lambda: time.time() * 100  # noqa: E731  maintenance intervals pass 100x faster
    path = tmp_path / "buffer.db"
    buffer = await open_buffer(clock=fast)
    empty = buffer.size_bytes()
    body = b'{"pad": "' + b"x" * 2000 + b'"}'
    for _ in range(4):
        await buffer.append([EventRecord(None, "t", body, False) for _ in range(5_000)])
    await buffer.execute([], acks={"f": buffer.head_seq})
    await wait_for(lambda: buffer.event_count == 0, timeout=30, message="the purge")
    wal = Path(f"{path}-wal")
    # The WAL may be cut more than once on the way (its bound), so wait for the end state.
    await wait_for(
        lambda: wal.stat().st_size == 0 and buffer.size_bytes() < empty + 8 * 1024 * 1024,
        timeout=30,
        message="the remainder vacuumed and the WAL cut to zero",
    )


async def test_wal_is_cut_to_zero_once_a_reader_lets_go_of_an_old_snapshot(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """A checkpoint blocked by a reader (as the delivery process is) is retried until done."""
    fast = lambda: time.time() * 100  # noqa: E731  maintenance intervals pass 100x faster
    path = tmp_path / "buffer.db"
    buffer = await open_buffer(clock=fast)
    body = b'{"pad": "' + b"x" * 2000 + b'"}'
    await buffer.append([EventRecord(None, "t", body, False) for _ in range(5_000)])
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM batches").fetchone()[0] > 0  # snapshot held
        for _ in range(5):
            await buffer.append([EventRecord(None, "t", body, False) for _ in range(5_000)])
        with capture_logs() as logs:
            await buffer.execute([], acks={"f": buffer.head_seq})
            await wait_for(
                lambda: any(e["event"] == "buffer_checkpoint_deferred" for e in logs),
                timeout=30,
                message="the drain's checkpoint to find the reader",
            )
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 0
        reader.execute("COMMIT")
    finally:
        reader.close()
    await wait_for(lambda: wal.stat().st_size == 0, timeout=30, message="the WAL cut to zero")


async def test_events_are_purged_only_after_every_forwarder_passed_them(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """With forwarders a and b, acking a keeps the events; acking b as well deletes them.

    Two commits make two batches: seqs 1-2 and 3. A batch goes once every
    forwarder has passed its last event, never half of it.
    """
    clock = Clock()
    buffer = await open_buffer(["a", "b"], clock=clock)
    await append_numbered(buffer, [1, 2])
    await append_numbered(buffer, [3])

    clock.advance()  # the purge is due: only the slower cursor holds it back
    buffer.ack("a", 3)
    await buffer.execute([])  # a later write: the ack and any purge are committed by now
    assert buffer.cursor("a") == 3
    assert buffer.event_count == 3
    assert [e.seq for e in await buffer.read_after("b", 0, 10)] == [1, 2, 3]

    clock.advance()
    buffer.ack("b", 1)
    await buffer.execute([])
    assert buffer.event_count == 3  # half of the first batch delivered: it stays whole
    assert [e.seq for e in await buffer.read_after("b", 1, 10)] == [2, 3]
    clock.advance()
    buffer.ack("b", 2)
    await wait_for(lambda: buffer.event_count == 1, timeout=10, message="seq 1-2 purged")
    assert [e.seq for e in stored_events(tmp_path / "buffer.db")] == [3]
    buffer.ack("b", 3)
    clock.advance()
    await wait_for(lambda: buffer.event_count == 0, timeout=10, message="seq 3 purged")
    assert stored_events(tmp_path / "buffer.db") == []
    assert on_disk(tmp_path / "buffer.db", "SELECT name, cursor FROM forwarders ORDER BY name") == [
        ("a", 3),
        ("b", 3),
    ]
