"""The SQLite buffer on a real file: ordering, group commit, durability, dedup, fan-out, schema.

Every test opens a real :class:`EventBuffer` on a file in ``tmp_path``. The
only thing injected is the clock, where the writer's once-a-second purge
would otherwise make a test wait; everything else is checked on the real
database, often through a second, plain ``sqlite3`` connection so that
"committed" means what another process would see."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forwarder.buffer.store import AppendResult, StoredEvent
from forwarder.errors import BufferUnavailableError
from tests.buffer.stores import Clock, OpenBuffer, append_numbered, on_disk, record
from tests.support import read_all, stored_events, wait_for


async def test_append_resolves_after_commit_with_contiguous_seqs(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """append() returns an AppendResult only once the rows are visible to another connection."""
    buffer = await open_buffer()
    assert buffer.head_seq == 0

    result = await append_numbered(buffer, [1, 2, 3])

    assert result == AppendResult(accepted=3, duplicates=0)
    assert [(e.seq, e.body) for e in stored_events(tmp_path / "buffer.db")] == [
        (1, b'{"n": 1}'),
        (2, b'{"n": 2}'),
        (3, b'{"n": 3}'),
    ]
    assert await append_numbered(buffer, [4]) == AppendResult(1, 0)
    assert buffer.head_seq == 4
    assert buffer.event_count == 4


async def test_reads_from_any_position_give_the_same_events(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """read_after from any seq and limit returns the same ordered, contiguous events."""
    clock = Clock()
    buffer = await open_buffer(clock=clock)
    for group in ([1, 2, 3, 4], [5, 6, 7], [8, 9, 10]):
        await append_numbered(buffer, group)

    everything = await buffer.read_after("f", 0, 100)
    assert [e.seq for e in everything] == list(range(1, 11))
    assert [e.body for e in everything] == [f'{{"n": {n}}}'.encode() for n in range(1, 11)]
    assert everything[0] == StoredEvent(
        1, "generated-1", "test.event", clock.now, None, b'{"n": 1}'
    )
    for after_seq in range(12):
        for limit in (1, 3, 100):
            read = await buffer.read_after("f", after_seq, limit)
            assert read == everything[after_seq : after_seq + limit], (after_seq, limit)
            assert [e.seq for e in read] == list(range(after_seq + 1, 11))[:limit]


async def test_only_forwarder_rows_go_to_that_forwarder_only(open_buffer: OpenBuffer) -> None:
    """A row with only_forwarder set is read by that forwarder and skipped by the others."""
    buffer = await open_buffer(["a", "b"])
    await buffer.append([record(1), record(2, only="a"), record(3), record(4, only="b")])
    await append_numbered(buffer, [5])

    assert [e.seq for e in await read_all(buffer, "a")] == [1, 2, 3, 5]
    assert [e.seq for e in await read_all(buffer, "b")] == [1, 3, 4, 5]
    assert [e.seq for e in await buffer.read_after("a", 1, 2)] == [2, 3]
    assert [e.seq for e in await buffer.read_after("b", 1, 1)] == [3]
    replay = (await buffer.read_after("a", 1, 1))[0]
    assert replay.only_forwarder == "a"


async def test_concurrent_appends_are_group_committed(open_buffer: OpenBuffer) -> None:
    """200 concurrent appends all resolve with contiguous seqs in far fewer transactions."""
    buffer = await open_buffer()
    statements: list[str] = []
    assert buffer._writer is not None
    # SQLite's own statement trace on the writer connection: counts real COMMITs.
    await buffer._writer.set_trace_callback(statements.append)

    results = await asyncio.gather(*(append_numbered(buffer, [n]) for n in range(200)))

    assert results == [AppendResult(1, 0)] * 200
    stored = await buffer.read_after("f", 0, 1000)
    assert [e.seq for e in stored] == list(range(1, 201))
    assert [e.body for e in stored] == [f'{{"n": {n}}}'.encode() for n in range(200)]
    assert buffer.head_seq == 200
    assert buffer.event_count == 200
    # All 200 are queued before the writer wakes, so they normally share one
    # transaction; the bound only asks for real sharing (10+ appends per commit).
    assert 1 <= statements.count("COMMIT") < 20


async def test_append_cancelled_while_committing_does_not_kill_the_writer(
    open_buffer: OpenBuffer,
) -> None:
    """A caller cancelled while its append commits does not break later appends."""
    buffer = await open_buffer()
    appending = asyncio.create_task(append_numbered(buffer, [1]))
    await asyncio.sleep(0)  # one loop turn: the task queues its write and awaits the commit
    appending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await appending

    result = await asyncio.wait_for(append_numbered(buffer, [2]), timeout=10)

    assert result == AppendResult(1, 0)
    assert buffer.writer_task is not None
    assert not buffer.writer_task.done()
    # The cancelled caller's events were committed all the same (at least once).
    assert [e.body for e in await buffer.read_after("f", 0, 10)] == [b'{"n": 1}', b'{"n": 2}']


async def test_wait_beyond_returns_once_a_newer_event_is_committed(
    open_buffer: OpenBuffer,
) -> None:
    """wait_beyond(seq) stays pending through non-event commits and returns on a newer event."""
    buffer = await open_buffer()
    await append_numbered(buffer, [1])
    await asyncio.wait_for(buffer.wait_beyond(0), timeout=5)  # already beyond: returns at once

    waiter = asyncio.create_task(buffer.wait_beyond(1))
    await buffer.execute([], acks={"f": 1})  # a commit that appends nothing
    assert not waiter.done()

    await append_numbered(buffer, [2])
    await asyncio.wait_for(waiter, timeout=5)
    assert buffer.head_seq == 2


# -- durability ------------------------------------------------------------------


async def test_events_cursors_and_dedup_ids_survive_reopen(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """After close and reopen: events, acked cursors and client ids persist; seq continues."""
    buffer = await open_buffer(["a", "b", "held"])  # "held" stays at 0: nothing is purged
    await buffer.append([record(1, client_id="client-1"), record(2), record(3)])
    buffer.ack("a", 2)  # not awaited: committed by the next group (here: close's drain)
    await buffer.execute([], acks={"b": 1})
    await buffer.close()
    await buffer.close()  # a second close is harmless
    with pytest.raises(BufferUnavailableError) as refused:
        await append_numbered(buffer, [99])
    assert refused.value.reason == "shutting_down"

    reopened = await open_buffer(["a", "b", "held"])

    assert reopened.cursor("a") == 2
    assert reopened.cursor("b") == 1
    assert reopened.head_seq == 3
    assert reopened.event_count == 3
    assert [e.body for e in await reopened.read_after("b", 1, 10)] == [b'{"n": 2}', b'{"n": 3}']
    duplicate = await reopened.append([record(4, client_id="client-1")])
    assert duplicate == AppendResult(accepted=1, duplicates=1)
    await append_numbered(reopened, [5])
    assert [e.seq for e in await reopened.read_after("a", 2, 10)] == [3, 4]
    assert reopened.head_seq == 4


async def test_seq_is_never_reused_after_everything_was_purged(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """With every event purged, a reopened buffer still continues above the old head."""
    path = tmp_path / "buffer.db"
    buffer = await open_buffer()
    await append_numbered(buffer, [1, 2, 3])
    buffer.ack("f", 3)
    await wait_for(lambda: buffer.event_count == 0, timeout=10, message="events purged")
    await buffer.close()
    assert stored_events(path) == []

    reopened = await open_buffer()
    assert reopened.head_seq == 3
    assert reopened.cursor("f") == 3
    await append_numbered(reopened, [4])

    assert [e.seq for e in await reopened.read_after("f", 3, 10)] == [4]
    assert [e.seq for e in stored_events(path)] == [4]


async def test_synchronous_full_commits_durably(open_buffer: OpenBuffer, tmp_path: Path) -> None:
    """synchronous="full" is applied to the writer and appends commit and survive reopen."""
    buffer = await open_buffer(synchronous="full")
    assert buffer._writer is not None
    rows = await buffer._writer.execute_fetchall("PRAGMA synchronous")
    assert next(iter(rows))[0] == 2  # FULL
    assert await append_numbered(buffer, [1, 2]) == AppendResult(2, 0)
    await buffer.close()

    reopened = await open_buffer(synchronous="full")
    assert [e.seq for e in await reopened.read_after("f", 0, 10)] == [1, 2]


# -- duplicates ------------------------------------------------------------------


async def test_client_ids_are_deduplicated_within_and_across_appends(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """A client-supplied id is stored once whether repeated in one append, one group, or later."""
    buffer = await open_buffer()
    first = await buffer.append(
        [record(1, client_id="x"), record(2, client_id="x"), record(3, client_id="y")]
    )
    later = await buffer.append([record(4, client_id="y"), record(5, client_id="z")])
    same_group = await asyncio.gather(
        buffer.append([record(6, client_id="w")]), buffer.append([record(7, client_id="w")])
    )

    assert first == AppendResult(accepted=3, duplicates=1)
    assert later == AppendResult(accepted=2, duplicates=1)
    assert sorted(r.duplicates for r in same_group) == [0, 1]
    stored = await buffer.read_after("f", 0, 100)
    assert [e.event_id for e in stored] == ["x", "y", "z", "w"]
    assert [e.body for e in stored][:3] == [b'{"n": 1}', b'{"n": 3}', b'{"n": 5}']
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert sorted(on_disk(tmp_path / "buffer.db", "SELECT event_id FROM client_ids")) == [
        ("w",),
        ("x",),
        ("y",),
        ("z",),
    ]


async def test_generated_ids_are_not_deduplicated(open_buffer: OpenBuffer, tmp_path: Path) -> None:
    """Events with generated ids are never treated as duplicates, nor remembered as client ids."""
    buffer = await open_buffer()
    result = await buffer.append([record(1, event_id="same"), record(2, event_id="same")])
    again = await buffer.append([record(3, event_id="same")])

    assert result == AppendResult(2, 0)
    assert again == AppendResult(1, 0)
    assert [e.seq for e in await buffer.read_after("f", 0, 10)] == [1, 2, 3]
    assert on_disk(tmp_path / "buffer.db", "SELECT count(*) FROM client_ids") == [(0,)]


# -- fan-out and purge -------------------------------------------------------------


async def test_registering_forwarders_drops_removed_and_starts_new_at_head(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """register_forwarders(["a", "c"]) deletes b (no longer holding the purge); c starts at head."""
    clock = Clock()
    buffer = await open_buffer(["a", "b"], clock=clock)
    await append_numbered(buffer, [1, 2, 3])
    await buffer.execute([], acks={"a": 3})
    assert buffer.event_count == 3  # b holds them back

    clock.advance()
    await buffer.register_forwarders(["a", "c"])

    assert buffer.cursor("c") == buffer.head_seq == 3
    with pytest.raises(KeyError):
        buffer.cursor("b")
    assert on_disk(tmp_path / "buffer.db", "SELECT name, cursor FROM forwarders ORDER BY name") == [
        ("a", 3),
        ("c", 3),
    ]
    await wait_for(lambda: buffer.event_count == 0, timeout=10, message="b's backlog purged")
    await append_numbered(buffer, [4])
    assert [e.seq for e in await buffer.read_after("c", buffer.cursor("c"), 10)] == [4]


# -- schema ------------------------------------------------------------------------
