"""``buffer salvage`` on real SQLite files damaged the ways disks and people damage them.

Every buffer here is written by the real :class:`EventBuffer`, then damaged
by zeroing bytes of the file (a whole page, or the 100-byte header), then
salvaged; what the fresh file holds is read back through a separate plain
``sqlite3`` connection, the way the restarted daemon would see it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER
from forwarder.buffer.lock import BufferLock
from forwarder.buffer.salvage import salvage
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.errors import BufferLockedError, BufferUnusableError
from tests.support import stored_events


def body(n: int, pad: int = 0) -> bytes:
    """Event ``n`` as ingested; ``pad`` bytes of filler make batches span overflow pages."""
    return b'{"n": %d, "pad": "%s"}' % (n, b"x" * pad)


async def build(
    path: Path, batches: int, per_batch: int, pad: int = 0, acked: int = 0, dead: int = 0
) -> None:
    """A buffer of ``batches`` commits of ``per_batch`` events (``n`` from 0), forwarder ``f``.

    ``acked`` moves the cursor of ``f``; ``dead`` adds that many dead letters.
    """
    buffer = EventBuffer(path)
    await buffer.open(["f"])
    try:
        for batch in range(batches):
            records = [
                EventRecord(None, "k", body(batch * per_batch + i, pad), False)
                for i in range(per_batch)
            ]
            await buffer.append(records)
        rows = [
            ("f", n + 1, f"dead-{n}", "k", 1.0, 2.0, 400, "400", "bad", b"no", body(n))
            for n in range(dead)
        ]
        await buffer.execute([(INSERT_DEAD_LETTER, rows)], acks={"f": acked} if acked else None)
    finally:
        await buffer.close()


def page_size_of(path: Path) -> int:
    """The page size recorded in the file's header."""
    with path.open("rb") as file:
        file.seek(16)
        size = int.from_bytes(file.read(2), "big")
    return 65536 if size == 1 else size


def zero_page_holding(path: Path, marker: bytes) -> int:
    """Overwrite with zeros the page that holds ``marker``; return the page number (from 0)."""
    data = path.read_bytes()
    offset = data.find(marker)
    assert offset > 0, f"{marker!r} is not in {path}"
    page_size = page_size_of(path)
    page = offset // page_size
    with path.open("r+b") as file:
        file.seek(page * page_size)
        file.write(bytes(page_size))
    return page


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on a fresh connection to ``path``."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def numbers(path: Path) -> list[int]:
    """The ``n`` of every event in the buffer, in seq order (each event's seq is n + 1)."""
    events = stored_events(path)
    assert all(int(e.body.split(b",")[0][6:]) == e.seq - 1 for e in events)
    return [e.seq - 1 for e in events]


async def test_a_zeroed_leaf_page_loses_only_the_rows_it_held(tmp_path: Path) -> None:
    """The scan steps over a zeroed b-tree leaf: every other row is copied, the gap is counted."""
    path = tmp_path / "buffer.db"
    await build(path, batches=2000, per_batch=1)
    zero_page_holding(path, b'{"n": 1000,')

    report = salvage(path, ["f"])

    recovered = numbers(path)
    lost = sorted(set(range(2000)) - set(recovered))
    assert 1000 in lost
    assert lost == list(range(lost[0], lost[-1] + 1))  # one leaf: one contiguous run
    assert 0 < len(lost) < 400  # the rest of the table was stepped over to, not dropped
    assert report.events_recovered == len(recovered) == 2000 - len(lost)
    assert report.events_unreadable == len(lost)
    assert report.events_unreadable_exact
    assert report.incomplete_tables == ["batches"]
    assert Path(report.moved_to).exists()
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize(
    "marker",
    # Batch 5 (events 200..239) spills into two overflow pages. Zeroing the first
    # breaks the chain (SQLite refuses the row); zeroing the last leaves the chain
    # whole and only the check that every event is JSON notices.
    [b'{"n": 220,', b'{"n": 230,'],
    ids=["middle-overflow-page", "last-overflow-page"],
)
async def test_a_zeroed_overflow_page_loses_its_batch_and_keeps_cursors_and_dead_letters(
    tmp_path: Path, marker: bytes
) -> None:
    """A batch whose overflow page is zeroed is lost alone; cursor, dead letters, ids survive."""
    path = tmp_path / "buffer.db"
    await build(path, batches=10, per_batch=40, pad=1000, acked=20, dead=3)
    ids_before = {e.seq: e.event_id for e in stored_events(path)}
    zero_page_holding(path, marker)

    report = salvage(path, ["f"])

    assert numbers(path) == [n for n in range(400) if not 200 <= n < 240]
    assert report.events_unreadable == 40
    assert report.batches_recovered == 9
    assert report.batches_unreadable == 1
    assert rows(path, "SELECT name, cursor FROM forwarders") == [("f", 20)]
    assert rows(path, "SELECT event_id FROM dead_letters ORDER BY id") == [
        ("dead-0",),
        ("dead-1",),
        ("dead-2",),
    ]
    assert report.dead_letters_recovered == 3
    # The instance number came along: generated ids are the ones already sent.
    assert {e.seq: e.event_id for e in stored_events(path)} == {
        seq: event_id for seq, event_id in ids_before.items() if not 201 <= seq <= 240
    }


async def test_a_zeroed_header_is_rebuilt_and_nothing_is_lost(tmp_path: Path) -> None:
    """With its first 100 bytes zeroed the file is 'not a database'; salvage reads it all."""
    path = tmp_path / "buffer.db"
    await build(path, batches=50, per_batch=10, acked=7)
    with path.open("r+b") as file:
        file.write(bytes(100))
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        rows(path, "SELECT count(*) FROM batches")

    report = salvage(path, ["f"])

    assert report.header_rebuilt
    assert numbers(path) == list(range(500))
    assert report.events_unreadable == 0
    assert rows(path, "SELECT name, cursor FROM forwarders") == [("f", 7)]


async def test_unreadable_cursors_restart_the_configured_forwarders_before_the_first_event(
    tmp_path: Path,
) -> None:
    """Without its cursors the copy redelivers everything it recovered, never skips an event."""
    path = tmp_path / "buffer.db"
    # One batch half delivered: it stays whole in the file, and so does the real cursor.
    await build(path, batches=1, per_batch=100, acked=50)
    ((root,),) = rows(path, "SELECT rootpage FROM sqlite_schema WHERE name = 'forwarders'")
    page_size = page_size_of(path)
    with path.open("r+b") as file:
        file.seek((int(str(root)) - 1) * page_size)
        file.write(bytes(page_size))

    report = salvage(path, ["f", "archive"])

    assert numbers(path) == list(range(100))
    assert report.cursors_reset == ["f", "archive"]
    assert sorted(rows(path, "SELECT name, cursor FROM forwarders")) == [("archive", 0), ("f", 0)]
    assert not report.events_unreadable_exact
    assert any("receive every recovered event again" in note for note in report.notes)


async def test_salvage_is_refused_while_a_daemon_holds_the_lock(tmp_path: Path) -> None:
    """The lock's holder is named, and the file is left exactly as it was."""
    path = tmp_path / "buffer.db"
    await build(path, batches=3, per_batch=2)
    before = path.read_bytes()
    held = BufferLock(path)
    held.acquire()
    try:
        with pytest.raises(BufferLockedError) as refused:
            salvage(path, ["f"])
    finally:
        held.release()
    assert refused.value.holder_pid == os.getpid()
    assert f"PID {os.getpid()}" in str(refused.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.db", "buffer.db.lock"]


async def test_a_file_that_is_not_a_buffer_is_left_alone(tmp_path: Path) -> None:
    """Another program's SQLite file is refused as foreign; salvage moves nothing."""
    path = tmp_path / "buffer.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()

    with pytest.raises(BufferUnusableError) as refused:
        salvage(path, ["f"])

    assert refused.value.kind == "foreign"
    assert rows(path, "SELECT name FROM sqlite_schema") == [("invoices",)]
    assert not [p for p in tmp_path.iterdir() if "damaged" in p.name]
