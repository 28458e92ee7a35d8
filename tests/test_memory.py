"""The memory trimmer: a collection and malloc_trim after work, nothing at rest."""

from __future__ import annotations

import gc

from forwarder.memory import BUSY_CPU_SECONDS, MemoryTrimmer
from tests.support import wait_for


class Clock:
    """A CPU clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_process_that_worked_is_collected_and_trimmed() -> None:
    """More than a sliver of CPU since the last wake: one collection and one trim."""
    clock = Clock()
    trimmer = MemoryTrimmer(cpu_clock=clock)
    collections_before = sum(stat["collections"] for stat in gc.get_stats())
    clock.now += BUSY_CPU_SECONDS * 4
    trimmer.trim_if_worked(100.0)
    assert trimmer.trims == 1
    assert sum(stat["collections"] for stat in gc.get_stats()) > collections_before


def test_an_idle_process_is_left_alone() -> None:
    """Below the busy threshold nothing runs, so an idle daemon pays nothing."""
    clock = Clock()
    trimmer = MemoryTrimmer(cpu_clock=clock)
    clock.now += BUSY_CPU_SECONDS / 2
    assert trimmer.trim_if_worked(100.0) == clock.now
    assert trimmer.trims == 0


async def test_the_task_trims_after_work_and_stops_cleanly() -> None:
    """The periodic task trims once the clock shows work; stop() ends it, twice safely."""
    clock = Clock()
    trimmer = MemoryTrimmer(interval=0.01, cpu_clock=clock)
    trimmer.start()
    assert trimmer.task is not None
    clock.now += 1.0
    await wait_for(lambda: trimmer.trims >= 1, timeout=5, message="a trim")
    await trimmer.stop()
    await trimmer.stop()
    assert trimmer.task is None
