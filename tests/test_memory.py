"""The memory trimmer and what it releases: after work only, nothing at rest."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from forwarder.buffer.batches import EventRecord
from forwarder.buffer.store import EventBuffer
from forwarder.memory import BUSY_CPU_SECONDS, MemoryTrimmer
from tests.support import read_all, wait_for

MB = 1024 * 1024


class Clock:
    """A CPU clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Releases:
    """A release callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def test_a_process_that_worked_is_released_collected_and_trimmed() -> None:
    """More than a sliver of CPU since the last wake: the callbacks, one collection, one trim."""
    clock, release = Clock(), Releases()
    trimmer = MemoryTrimmer(cpu_clock=clock, release=[release, release])
    collections_before = sum(stat["collections"] for stat in gc.get_stats())
    clock.now += BUSY_CPU_SECONDS * 4
    await trimmer.trim_if_worked(100.0)
    assert trimmer.trims == 1
    assert release.calls == 2
    assert sum(stat["collections"] for stat in gc.get_stats()) > collections_before


async def test_an_idle_process_is_left_alone() -> None:
    """Below the busy threshold nothing runs, not even the callbacks: idle costs nothing."""
    clock, release = Clock(), Releases()
    trimmer = MemoryTrimmer(cpu_clock=clock, release=[release])
    clock.now += BUSY_CPU_SECONDS / 2
    assert await trimmer.trim_if_worked(100.0) == clock.now
    assert trimmer.trims == 0
    assert release.calls == 0


async def test_the_task_trims_after_work_and_stops_cleanly() -> None:
    """The periodic task trims once the clock shows work; stop() ends it, twice safely."""
    clock, release = Clock(), Releases()
    trimmer = MemoryTrimmer(interval=0.01, cpu_clock=clock, release=[release])
    trimmer.start()
    assert trimmer.task is not None
    clock.now += 1.0
    await wait_for(lambda: trimmer.trims >= 1, timeout=5, message="a trim")
    assert release.calls == trimmer.trims
    await trimmer.stop()
    await trimmer.stop()
    assert trimmer.task is None


async def test_releasing_the_buffer_frees_its_decoded_batches_and_reads_stay_whole(
    tmp_path: Path,
) -> None:
    """After a burst is read, release_memory gives back the cached batches; reads still work."""
    buffer = EventBuffer(tmp_path / "buffer.db")
    await buffer.open(["a"])
    try:
        body = b'{"pad": "%s"}' % (b"x" * 1000)
        await buffer.append([EventRecord(None, "t", body, False) for _ in range(3000)])
        tracemalloc.start()
        try:
            assert len(await read_all(buffer, "a")) == 3000  # the reader now caches ~3 MB
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
            await buffer.release_memory()
            gc.collect()
            released, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held - released > 2 * MB
        again = await read_all(buffer, "a")
        assert [e.seq for e in again] == list(range(1, 3001))
        assert {e.body for e in again} == {body}
    finally:
        await buffer.close()
