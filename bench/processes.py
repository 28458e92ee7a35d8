"""The processes under test: start-up waits, process-tree accounting and stopping.

A process's CPU and memory are those of its whole process tree (the process
and every descendant, found through ``/proc/<pid>/task/*/children``), so they
stay right when work moves into child processes. CPU is utime + stime plus
the reaped children's share, so the sum stays steady when a child exits
between two readings. Memory is the tree's summed RSS, sampled every ~100 ms
in a thread so the samples keep their pace while a load generator keeps the
event loop busy, with its PSS beside it every ~1 s. ``stop_process`` also
kills descendants that outlived their parent, so no scenario inherits another
one's ports or files.

``BenchError`` lives here, at the bottom of the benchmark's layers, because
every other module raises it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.1


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and what was seen."""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, seconds: float, what: str, process: subprocess.Popen[bytes]) -> None:
    """Block until something accepts on 127.0.0.1:``port``, or raise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with status {process.returncode} while starting")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{what} did not accept connections on 127.0.0.1:{port} within {seconds} s")


# -- /proc accounting ----------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants that exist now (children of every thread)."""
    pids: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        if not Path(f"/proc/{pid}").exists():
            continue
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in children.read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return pids


def start_times(pids: Iterable[int]) -> dict[int, str]:
    """Each pid's start time, to tell it from a later process given the same pid."""
    found = {}
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            found[pid] = fields[19]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and of its children it has reaped."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime: the reaped children's share keeps the sum
    # steady when a child process exits between two readings.
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of the whole process tree under ``root``."""
    return sum(cpu_seconds(pid) for pid in tree_pids(root))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process now (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of one process so far (VmHWM; 0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_rss_bytes(root: int) -> int:
    """Sum of the current RSS of every process in the tree (shared pages count in each)."""
    return sum(rss_bytes(pid) for pid in tree_pids(root))


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process now: shared pages divided among their users."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


SMAPS_FIELDS = (
    "Rss",
    "Pss",
    "Pss_Anon",
    "Pss_File",
    "Shared_Clean",
    "Shared_Dirty",
    "Private_Clean",
    "Private_Dirty",
    "Anonymous",
)


def smaps_rollup(pid: int) -> dict[str, int]:
    """A process's memory from /proc/<pid>/smaps_rollup, in bytes (empty if it is gone).

    ``Rss`` is ``Private_*`` + ``Shared_*``: what the process maps, a page
    shared with another process counted in full in each. ``Pss`` divides each
    shared page among the processes mapping it, so PSS summed over a tree
    counts a page the tree shares once.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in SMAPS_FIELDS:
            found[name] = int(rest.split()[0]) * 1024
    return found


def unique_resident_bytes(pids: Iterable[int]) -> int | None:
    """Bytes of the distinct physical pages the processes map, each counted once.

    This is what a memory cgroup holding only these processes is charged for
    their mappings (anonymous and file-backed; page cache read but not mapped,
    such as SQLite's file reads, comes on top): a page shared by two of them,
    or by a process and its forked child, is one page. Read from
    /proc/<pid>/pagemap, whose page-frame numbers only root may see; None
    otherwise.
    """
    frames: set[int] = set()
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:
            return None
        try:
            for line in maps:
                span, _, rest = line.partition(" ")
                if rest.rstrip().endswith("[vsyscall]"):
                    continue
                start, end = (int(part, 16) for part in span.split("-"))
                entries = os.pread(pagemap, (end - start) // page * 8, start // page * 8)
                for (entry,) in struct.iter_unpack("<Q", entries):
                    if entry >> 63:  # present in RAM
                        frames.add(entry & ((1 << 55) - 1))
        except OSError:
            continue
        finally:
            os.close(pagemap)
    if frames == {0}:
        return None  # without CAP_SYS_ADMIN the kernel reports every frame as 0
    return len(frames) * page


class TreeSampler:
    """Samples a process tree's summed RSS every ~100 ms in a thread; tracks the peak.

    Summed RSS counts a page shared by two processes of the tree twice, so the
    tree's PSS (each shared page divided among its users: the memory the tree
    really holds) is sampled too, every ~1 s because /proc/<pid>/smaps_rollup
    costs milliseconds to read. A thread rather than an asyncio task so the
    samples keep their pace while the load generator keeps the event loop busy.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.samples: list[tuple[float, int]] = []
        self.pss_samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        count = 0
        while True:
            pids = tree_pids(self.root)
            at = time.monotonic()
            self.samples.append((at, sum(rss_bytes(pid) for pid in pids)))
            if count % 10 == 0:
                self.pss_samples.append((at, sum(pss_bytes(pid) for pid in pids)))
            count += 1
            if self._stop.wait(SAMPLE_SECONDS):
                break

    def now(self) -> int:
        """The tree's summed RSS right now."""
        return tree_rss_bytes(self.root)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        """The highest summed RSS sampled between two ``time.monotonic()`` instants.

        Includes a reading taken now when ``until`` is open, so a window
        shorter than the sampling period still has one.
        """
        now = [tree_rss_bytes(self.root)] if until == float("inf") else []
        return max([rss for at, rss in self.samples if since <= at <= until] + now, default=0)

    def peak_pss(self, since: float = 0.0, until: float = float("inf")) -> int:
        """The highest tree PSS sampled between two ``time.monotonic()`` instants (and now)."""
        now = [sum(pss_bytes(pid) for pid in tree_pids(self.root))] if until == float("inf") else []
        return max([pss for at, pss in self.pss_samples if since <= at <= until] + now, default=0)


class CpuWindow:
    """CPU seconds a process tree spends between ``start()`` and ``stop()``."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.begin = 0.0
        self.seconds = 0.0

    def start(self) -> CpuWindow:
        self.begin = tree_cpu_seconds(self.root)
        return self

    def stop(self) -> float:
        self.seconds = tree_cpu_seconds(self.root) - self.begin
        return self.seconds


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Signal a process, wait up to ``timeout`` s, then kill it; then kill its leftovers."""
    if process is None:
        return
    descendants = start_times(tree_pids(process.pid)) if process.poll() is None else {}
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A child that outlived its parent (a crashed daemon's delivery process,
    # an nginx worker) must not keep ports or files of the next scenario.
    for pid, started in descendants.items():
        if pid != process.pid and start_times([pid]).get(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
