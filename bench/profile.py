"""Where the daemon's CPU goes under scenario 1's workload: per thread, and per frame with py-spy.

Usage: ``python -m bench.profile [--events N] [--connections C] [--py-spy OUT]``.
Starts the real daemon with scenario 1's configuration and an nginx sink
(``bench.steps``), warms it up, then posts N events in NDJSON bodies of
1,000 over C keep-alive connections (1 by default: one application waiting
for each 202) and waits until the sink has them all. It prints events/s,
the daemon's CPU-s per 100k events, and the CPU of each of its threads from
``/proc/<pid>/task`` (user and system apart): the event loop, and each
aiosqlite connection's thread, which runs SQLite's own work.

With ``--py-spy OUT`` the timed window is also sampled by py-spy (install it
yourself, ``pip install py-spy``: it is not a dependency) into ``OUT`` as
collapsed stacks (``--format raw``), one line per distinct stack with its
sample count, which ``--top`` summarises by self and cumulative share per
function. Sampling costs the daemon nothing (``--nonblocking``), but py-spy
takes CPU on the same two cores, so throughput figures from such a run are
not comparable with ``bench.run``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import CpuWindow
from bench.sinks import Sink
from bench.steps import forwarder_config, started, started_sink, until_delivered, warm_up
from bench.workload import NDJSON, Plan, Run, ndjson_bodies

TICKS = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[str, tuple[str, float, float]]:
    """Per thread of ``pid``: (name, user seconds, system seconds)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            times[tid] = (name, int(fields[11]) / TICKS, int(fields[12]) / TICKS)
    return times


def summarise(path: Path, top: int) -> None:
    """Print the ``top`` functions of a py-spy raw profile by self and by cumulative share."""
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            cumulative[frame] += samples
    print(f"{total} samples")
    for title, counts in (("self", own), ("cumulative", cumulative)):
        print(f"-- by {title}")
        for frame, samples in counts.most_common(top):
            print(f"{samples / total * 100:5.1f}%  {frame}")


async def profile(events: int, connections: int, spy_output: Path | None) -> None:
    """Drive scenario 1's workload once and print what the daemon spent on it."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    run = Run(Plan(events=events), tmp)
    bodies = ndjson_bodies(events)
    try:
        with contextlib.ExitStack() as stack:
            sink = started_sink(stack, Sink(tmp / "sink"), run)
            daemon = await started(stack, Daemon(tmp / "daemon", forwarder_config(tmp, sink.url)))
            await warm_up(daemon, sink)
            sink.log.poll()
            base = sink.log.events
            spy = None
            if spy_output is not None:
                argv = ["py-spy", "record", "--format", "raw", "--rate", "400", "--nonblocking"]
                spy = subprocess.Popen(
                    [*argv, "--output", str(spy_output), "--pid", str(daemon.pid)],
                    stdout=subprocess.DEVNULL,
                )
                stack.callback(spy.kill)
                await asyncio.sleep(1.0)  # py-spy attaches before the window opens
            before = thread_times(daemon.pid)
            cpu = CpuWindow(daemon.pid).start()
            load = await post_bodies(
                daemon.ingest_url,
                bodies,
                content_type=NDJSON,
                connections=connections,
                events_per_body=1000,
            )
            finished = await until_delivered(daemon, sink, base + events, 120, "profile")
            cpu.stop()
            after = thread_times(daemon.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = finished - load.started_wall
    print(
        f"{events:,} events over {connections} connection(s): {events / elapsed:,.0f} events/s,"
        f" {cpu.seconds / events * 100_000:.3f} CPU-s per 100k events"
    )
    for tid, (name, user, system) in sorted(after.items(), key=lambda item: -sum(item[1][1:])):
        _, user_before, system_before = before.get(tid, (name, 0.0, 0.0))
        spent_user, spent_system = user - user_before, system - system_before
        if spent_user + spent_system > 0:
            print(f"  thread {tid} ({name}): user {spent_user:.2f} s, system {spent_system:.2f} s")


def main() -> int:
    """Read the command line and run one profile."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--py-spy", type=Path, dest="spy", help="write py-spy raw stacks here")
    parser.add_argument("--top", type=int, default=25, help="functions shown from the profile")
    args = parser.parse_args()
    if args.spy is not None and shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 1
    asyncio.run(profile(args.events, args.connections, args.spy))
    if args.spy is not None:
        summarise(args.spy, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
