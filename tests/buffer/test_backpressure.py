"""Backpressure on a real file: ``is_full`` follows what the buffer holds; the WAL stays bounded.

Every test opens a real :class:`EventBuffer` on a file in ``tmp_path``; what
it holds is checked against sums computed on a separate plain ``sqlite3``
connection, written here independently of the buffer's own SQL. The WAL
test starves SQLite's automatic checkpoint the way the delivery process
does, with a real reader on its own connection that always has a snapshot open.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.buffer import cleanup, holdings
from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER, purge, replay
from forwarder.buffer.history import INSERT_ATTEMPT, pack_event_ids
from forwarder.buffer.retention import Housekeeper
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.errors import BufferUnavailableError
from tests.support import stored_events, wait_for

OpenBuffer = Callable[..., Awaitable[EventBuffer]]
BODY = b'{"pad": "' + b"x" * 1000 + b'"}'
NOW = 1_700_000_000.0


@pytest.fixture
async def open_buffer(tmp_path: Path) -> AsyncIterator[OpenBuffer]:
    """Open real buffers on ``tmp_path/buffer.db``; all closed at teardown."""
    opened: list[EventBuffer] = []

    async def open_(forwarders: Iterable[str] = ("f",), **options: Any) -> EventBuffer:
        # A clock that stands still: after the first commit the once-a-second
        # purge never runs, so delivered rows stay in the file.
        options.setdefault("clock", lambda: NOW)
        buffer = EventBuffer(tmp_path / "buffer.db", **options)
        opened.append(buffer)
        await buffer.open(forwarders)
        return buffer

    yield open_
    for buffer in opened:
        await buffer.close()


def batch_bytes_on_disk(path: Path, above_seq: int = 0) -> int:
    """What the batch rows holding an event above ``above_seq`` hold, summed by plain SQL."""
    conn = sqlite3.connect(path)
    try:
        (total,) = conn.execute(
            "SELECT sum(length(bodies) + length(lengths) + length(event_types)"
            " + ifnull(length(event_ids), 0) + ifnull(length(only_forwarder), 0))"
            " FROM batches WHERE last_seq > ?",
            (above_seq,),
        ).fetchone()
    finally:
        conn.close()
    return int(total or 0)


def value_bytes(row: Iterable[Any]) -> int:
    """The length of a row's text and blob values (what a stored row is counted as)."""
    return sum(len(value) for value in row if isinstance(value, str | bytes))


def dead_letter(n: int) -> tuple[Any, ...]:
    """A dead_letters row for forwarder ``f``, event id ``e-<n>``."""
    return ("f", n, f"e-{n}", "test.event", NOW, NOW, 400, "400", "HTTP 400", b'{"bad": 1}', BODY)


def attempt(n: int, at: float = NOW) -> tuple[Any, ...]:
    """A delivery_attempts row for forwarder ``f``."""
    ids = pack_event_ids([f"e-{n}"])
    return ("f", at, 1, 1, ids, "dead_letter", "400", 400, 3.5, "HTTP 400", b'{"bad": 1}')


def assert_holds(buffer: EventBuffer, events: int, history: int = 0) -> None:
    """The buffer holds ``events`` bytes of events and ``history`` bytes of history.

    Ingest is refused at the events' bytes, and not above the total. (A limit
    between the two would set the history giving way: see the test of that.)
    """
    assert not buffer.is_full(events + history + 1)
    assert buffer.is_full(events)
    assert buffer.held_bytes() == events + history


async def no_forwarders() -> list[tuple[str, int, float]]:
    """The housekeeper's view of pending work: none."""
    return []


async def append_events(buffer: EventBuffer, count: int) -> None:
    """Append ``count`` events of about 1 KB in one commit."""
    await buffer.append([EventRecord(None, "test.event", BODY, False) for _ in range(count)])


async def test_is_full_compares_the_limit_with_pending_bytes_not_the_file(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Pending event bytes fill the limit; once delivered they free it, while the file is bigger."""
    path = tmp_path / "buffer.db"
    buffer = await open_buffer()
    await append_events(buffer, 1)
    # The purge runs at its first chance, here; then, the clock standing still, never again.
    await buffer.execute([], acks={"f": 1})
    assert stored_events(path) == []
    for _ in range(20):
        await append_events(buffer, 10)

    pending = batch_bytes_on_disk(path)
    assert pending >= 200 * len(BODY)
    assert buffer.size_bytes() > pending + 1  # the file and its WAL are past both limits below
    assert buffer.is_full(pending)
    assert not buffer.is_full(pending + 1)
    assert not buffer.is_full(None)
    assert buffer.held_bytes() == pending

    await buffer.execute([], acks={"f": buffer.head_seq})

    assert len(stored_events(path)) == 200  # delivered, not yet purged
    assert not buffer.is_full(pending)
    assert buffer.held_bytes() == 0


async def test_a_forwarder_behind_holds_the_bytes_until_it_passes_or_is_removed(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """The slowest forwarder decides what is pending; a removed one stops holding anything."""
    path = tmp_path / "buffer.db"
    buffer = await open_buffer(["fast", "slow"])
    for _ in range(3):
        await append_events(buffer, 100)
    commit_bytes = batch_bytes_on_disk(path) // 3
    assert commit_bytes > holdings.SPAN_BYTES  # one span per commit: released commit by commit
    assert_holds(buffer, 3 * commit_bytes)

    await buffer.execute([], acks={"fast": buffer.head_seq})
    assert_holds(buffer, 3 * commit_bytes)

    await buffer.execute([], acks={"slow": 100})
    assert batch_bytes_on_disk(path, above_seq=100) == 2 * commit_bytes
    assert_holds(buffer, 2 * commit_bytes)

    await buffer.register_forwarders(["fast"])
    assert_holds(buffer, 0)


async def test_dead_letters_and_history_count_until_they_are_deleted(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Dead letters and history rows are held from their commit to their deletion, by any path."""
    buffer = await open_buffer()
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_letter(1), dead_letter(2)])])
    await buffer.execute([(INSERT_ATTEMPT, [attempt(1), attempt(2, at=NOW - 7200)])])
    assert_holds(
        buffer,
        events=value_bytes(dead_letter(1)) + value_bytes(dead_letter(2)),
        history=value_bytes(attempt(1)) + value_bytes(attempt(2)),
    )
    assert buffer.held_bytes_by_kind() == {
        "pending_events": 0,
        "dead_letters": value_bytes(dead_letter(1)) + value_bytes(dead_letter(2)),
        "history": value_bytes(attempt(1)) + value_bytes(attempt(2)),
    }
    assert buffer.held_bytes() == sum(buffer.held_bytes_by_kind().values())

    # A replay moves the event from the dead letters to the pending events.
    assert await replay(buffer, ["f"], "f", ["e-1"]) == {
        "replayed": 1,
        "skipped_unknown_forwarder": 0,
    }
    held = buffer.held_bytes_by_kind()
    assert held["dead_letters"] == value_bytes(dead_letter(2))
    assert held["pending_events"] == batch_bytes_on_disk(tmp_path / "buffer.db") > len(BODY)

    assert await purge(buffer, "f", []) == 1
    housekeeper = Housekeeper(buffer, 3600, 100_000, no_forwarders, clock=lambda: NOW)
    assert (await housekeeper.purge_once())["delivery_attempts"] == 1  # the older attempt
    held = buffer.held_bytes_by_kind()
    assert (held["dead_letters"], held["history"]) == (0, value_bytes(attempt(1)))


async def test_a_rolled_back_group_changes_nothing_held(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Rows counted inside a transaction that fails are not held, now or after the next commit."""
    buffer = await open_buffer()
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_letter(1)])])
    held = value_bytes(dead_letter(1))
    assert_holds(buffer, held)
    no_body = (*dead_letter(3)[:-1], None)  # NOT NULL: the whole group rolls back

    with pytest.raises(BufferUnavailableError):
        await buffer.execute([(INSERT_DEAD_LETTER, [dead_letter(2), no_body])])

    assert_holds(buffer, held)
    await buffer.execute([(INSERT_ATTEMPT, [attempt(1)])])
    assert_holds(buffer, held, history=value_bytes(attempt(1)))
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)
    finally:
        conn.close()


async def test_what_is_held_is_counted_again_when_the_file_is_reopened(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """At open, the events beyond the cursors, the dead letters and the history are summed."""
    path = tmp_path / "buffer.db"
    buffer = await open_buffer()
    for _ in range(3):
        await append_events(buffer, 100)
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_letter(1)])], acks={"f": 150})
    await buffer.execute([(INSERT_ATTEMPT, [attempt(1)])])
    await buffer.close()

    reopened = await open_buffer()

    pending = batch_bytes_on_disk(path, above_seq=150)
    assert_holds(
        reopened, events=pending + value_bytes(dead_letter(1)), history=value_bytes(attempt(1))
    )
    assert reopened.held_bytes_by_kind() == {
        "pending_events": pending,
        "dead_letters": value_bytes(dead_letter(1)),
        "history": value_bytes(attempt(1)),
    }
    await reopened.execute([(INSERT_DEAD_LETTER, [dead_letter(2)])])  # still counted after reopen
    assert reopened.held_bytes_by_kind()["dead_letters"] == 2 * value_bytes(dead_letter(1))
    # The backlog found at open is released as it drains, not only once all of it is gone.
    await reopened.execute([], acks={"f": 200})
    assert reopened.held_bytes_by_kind()["pending_events"] == batch_bytes_on_disk(path, 200)


async def test_history_gives_way_to_events_instead_of_refusing_ingest(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """History filling the limit is trimmed, oldest first; only events fill it for ingest."""
    buffer = await open_buffer()
    await buffer.execute([(INSERT_ATTEMPT, [attempt(n, at=NOW + n) for n in range(5000)])])
    await append_events(buffer, 10)
    held = buffer.held_bytes_by_kind()
    limit = held["history"] // 2
    assert held["pending_events"] < limit < buffer.held_bytes()

    assert not buffer.is_full(limit)

    await wait_for(
        lambda: buffer.held_bytes() <= limit * holdings.HISTORY_YIELD_TO,
        message="the history to give way",
    )
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        kept, oldest, newest = conn.execute(
            "SELECT count(*), min(attempted_at), max(attempted_at) FROM delivery_attempts"
        ).fetchone()
    finally:
        conn.close()
    assert 0 < kept < 5000
    assert (oldest, newest) == (NOW + 5000 - kept, NOW + 4999)  # the newest are kept
    history = sum(value_bytes(attempt(n)) for n in range(5000 - kept, 5000))
    assert buffer.held_bytes_by_kind()["history"] == history
    # Events alone at the limit are refused, and the history left is not touched for them.
    assert_holds(buffer, buffer.held_bytes_by_kind()["pending_events"], history)
    await append_events(buffer, 1)
    assert buffer.held_bytes_by_kind()["history"] == history


@contextlib.contextmanager
def busy_reader(path: Path) -> Iterator[None]:
    """A reader on its own connection that always holds a snapshot (each for 20 ms)."""
    stop = threading.Event()

    def read() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("BEGIN")
                conn.execute("SELECT max(first_seq) FROM batches").fetchall()
                stop.wait(0.02)  # the length of one read, not a wait for anything
                conn.execute("COMMIT")
        finally:
            conn.close()

    thread = threading.Thread(target=read, name="busy-reader")
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


async def test_the_wal_stays_bounded_while_a_reader_starves_the_automatic_checkpoint(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Steady writes with a reader always on the WAL: it is cut at its bound instead of growing."""
    fast = lambda: time.time() * 100  # noqa: E731  maintenance intervals pass 100x faster
    path = tmp_path / "buffer.db"
    buffer = await open_buffer(clock=fast)
    wal = f"{path}-wal"
    peak = 0
    with busy_reader(path):
        for _ in range(500):  # about 100 MB of events, each delivered at once
            await append_events(buffer, 200)
            await buffer.execute([], acks={"f": buffer.head_seq})
            peak = max(peak, os.stat(wal).st_size)
    assert peak > cleanup.WAL_MAX_BYTES  # the automatic checkpoint alone did not keep it small
    assert peak < cleanup.WAL_MAX_BYTES + 32 * 1024 * 1024
