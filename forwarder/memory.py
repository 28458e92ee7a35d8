"""The daemon's memory: what it never imports, and giving memory back after a burst.

Measured: after a burst of 100,000 events has drained, the daemon held ~23 MB
more anonymous memory than before it, almost all of it free space inside
glibc's heaps (``malloc_trim(0)`` returned it; ``MALLOC_ARENA_MAX`` did not).
glibc only gives back the top of a heap by itself, so a sidecar that saw one
burst would keep its peak for the rest of its life.

``MemoryTrimmer`` wakes every ``interval`` seconds and, when the process used
more than a sliver of CPU since the last wake (it worked: buffers were
allocated and freed), first calls its ``release`` callbacks, then runs a full
garbage collection and ``malloc_trim(0)``. An idle process is left alone, so
trimming costs nothing at rest and a few milliseconds per interval under
load. Where glibc is absent (musl, macOS) it does nothing.

The callbacks drop what is only there to make the next read faster. After
the trim, ~10 MB more than at start was still held after a burst (measured
with tracemalloc, glibc's ``mallinfo2`` and /proc/<pid>/smaps): the buffer's
cache of decoded batches (up to 4 MB of event bodies the cursors had all
passed, plus the glibc arena pages they pinned: 6.7 MB in all) and SQLite's
page caches (0.7 MB). The daemon passes ``EventBuffer.release_memory``,
which empties both. Under load that costs a re-read of at most a batch per
forwarder every ``interval``; at rest it is what a burst leaves behind.
What stays after that (~4 MB) is fragmentation: pymalloc arenas with a few
live objects in each, which CPython only returns when empty, and pages of
the SQLite threads' glibc arenas. A fixed ``M_MMAP_THRESHOLD`` of 256 KB
(large buffers mapped and unmapped each time instead of kept in a heap) was
measured too: 7 MB lower peak under load, but 7% more CPU per event, so
it is not set.

``leave_out_unused_libraries`` keeps ``rich`` out of the daemon's process.
structlog imports it at its own import whenever it is installed (the
``top`` extra and the dev environment install it), to render tracebacks in
colour for ``logging.format: console``; the daemon never draws with it, and
with ``pygments``, which it brings, it cost 3.4 MB of the daemon's private
memory (measured; pure Python, so nothing is mapped from files). structlog
has no setting to skip that import, so the daemon's ``run`` command puts
``None`` in ``sys.modules`` for it before structlog is first imported: the
import system's documented way to make an import fail
(``ModuleNotFoundError``), which structlog catches, falling back to plain
tracebacks. Only the ``run`` process does this; ``top`` (which draws with
rich) and every other command run in processes of their own. Uninstalling
rich would do the same for the daemon but take ``top``'s table away; a
sitecustomize or an import hook would affect every command. This module
imports only the standard library, so calling it does not import structlog
itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

TRIM_INTERVAL_SECONDS = 10.0
# CPU seconds per interval below which the process counts as idle.
BUSY_CPU_SECONDS = 0.05
# Imported by other libraries when installed, never used by the daemon (see above).
UNUSED_LIBRARIES = ("rich",)


def leave_out_unused_libraries() -> None:
    """Make importing :data:`UNUSED_LIBRARIES` fail in this process, unless already imported.

    Call it before structlog is first imported: the ``run`` command does.
    """
    for name in UNUSED_LIBRARIES:
        # None is what the import system reads as "not importable" (typeshed omits it).
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols (CDLL(None)) include the C library's; not
    # ctypes.util.find_library, whose imports alone cost ~3 MB.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """Owns the trimming task. Constructing it does no I/O."""

    def __init__(
        self,
        interval: float = TRIM_INTERVAL_SECONDS,
        cpu_clock: Callable[[], float] = time.process_time,
        release: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self._interval = interval
        self._cpu_clock = cpu_clock
        self._release = tuple(release)
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The trimming task, for its owner to supervise."""
        return self._task

    def start(self) -> None:
        """Start the periodic task (nothing to do without glibc)."""
        if self._trim is not None:
            self._task = asyncio.create_task(self._run(self._cpu_clock()), name="memory-trim")

    async def stop(self) -> None:
        """Cancel the task. Safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def trim_if_worked(self, cpu_before: float) -> float:
        """Release, collect and trim when more than a sliver of CPU was used since ``cpu_before``.

        Returns the CPU clock to compare with at the next wake.
        """
        cpu_now = self._cpu_clock()
        if cpu_now - cpu_before < BUSY_CPU_SECONDS or self._trim is None:
            return cpu_now
        for release in self._release:
            await release()
        gc.collect()
        self._trim(0)
        self.trims += 1
        # Releasing, collecting and trimming are not work to trim after.
        return self._cpu_clock()

    async def _run(self, cpu_before: float) -> None:
        while True:
            await asyncio.sleep(self._interval)
            cpu_before = await self.trim_if_worked(cpu_before)
