"""Scenario 10: the daemon's memory at rest, after start and after a burst has drained.

A sidecar spends most of its life idle, so what it holds then is what every
pod pays. The real daemon starts with one webhook forwarder to a loopback
sink; once it has been serving for a few seconds, every process of its tree
is read from /proc; then a burst of events (NDJSON bodies of 1,000, 100,000
events by default) is sent and delivered, and once nothing is pending and the
daemon has rested again, the tree is read a second time. The peak PSS while
the burst was delivered is kept beside them.

Three figures per reading, because they answer different questions:

* **PSS** (``Pss`` of /proc/<pid>/smaps_rollup, summed): each page shared by
  several processes divided among them, so the sum counts a page the tree
  shares once (pages shared with processes outside the tree, such as libc,
  count for their share only). This is the figure the targets use.
* **private + shared** (``Rss`` summed): every page a process maps counted in
  full in each process, as ``ps`` and per-process RSS show it; a page shared
  by the daemon and a forked delivery process counts twice.
* **distinct pages** (from /proc/<pid>/pagemap, root only): every physical
  page the tree maps counted once, which is what a memory cgroup holding only
  the daemon is charged for its mappings (anonymous and file-backed; page
  cache of the SQLite file that is read but not mapped comes on top).

Run on its own with ``python -m bench.idle [--events N] [--process MODE]``
(``MODE`` sets ``delivery.process``; the default configuration otherwise), or
as scenario 10 of ``python -m bench.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import (
    BenchError,
    TreeSampler,
    smaps_rollup,
    tree_pids,
    unique_resident_bytes,
)
from bench.sinks import Sink
from bench.steps import (
    DELIVERED,
    RECEIVED,
    forwarder_config,
    started,
    started_sink,
    until_delivered,
    wait_until,
    warm_up,
)
from bench.workload import MB, NDJSON, NDJSON_CONNECTIONS, Plan, Run, ndjson_bodies

# Longer than the daemon's memory-trim interval (10 s, forwarder/memory.py),
# so a reading after a burst sees memory the daemon gives back at rest.
REST_SECONDS = 12.0
BURST_EVENTS = 100_000


def reading(daemon: Daemon) -> dict[str, Any]:
    """Every process of the daemon's tree now: per process and summed, in MB."""
    delivery_pid = daemon.started.get("delivery_pid")
    processes = []
    pids = tree_pids(daemon.pid)
    for pid in pids:
        memory = smaps_rollup(pid)
        if not memory:
            continue
        role = "daemon" if pid == daemon.pid else "delivery" if pid == delivery_pid else "child"
        processes.append(
            {
                "role": role,
                "pid": pid,
                "pss_mb": _mb(memory["Pss"]),
                "rss_mb": _mb(memory["Rss"]),
                "private_mb": _mb(memory["Private_Clean"] + memory["Private_Dirty"]),
                "shared_mb": _mb(memory["Shared_Clean"] + memory["Shared_Dirty"]),
                "pss_anon_mb": _mb(memory.get("Pss_Anon", 0)),
                "pss_file_mb": _mb(memory.get("Pss_File", 0)),
            }
        )
    unique = unique_resident_bytes(pids)
    return {
        "pss_mb": round(sum(p["pss_mb"] for p in processes), 1),
        "rss_mb": round(sum(p["rss_mb"] for p in processes), 1),
        "distinct_mb": _mb(unique) if unique is not None else None,
        "processes": processes,
    }


def _mb(value: int) -> float:
    return round(value / MB, 1)


async def rest(daemon: Daemon) -> None:
    """Let the daemon sit idle, checking it stays alive."""
    deadline = time.monotonic() + REST_SECONDS
    while time.monotonic() < deadline:
        daemon.check_alive()
        await asyncio.sleep(0.25)


async def idle_memory(
    run: Run, key: str = "10", process: str | None = None, burst: int = 0
) -> dict[str, Any]:
    """The daemon's tree after start, during a burst (peak) and after the burst drained."""
    events = burst or min(run.plan.events, BURST_EVENTS)
    work = run.tmp / f"scenario-{key}"
    config = forwarder_config(work, "")
    title = "idle memory" + (f", delivery.process: {process}" if process else "")
    row: dict[str, Any] = {"scenario": key, "title": title, "delivery_process": process}
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, Sink(work / "sink"), run)
        config["auditLogForwarders"][0]["uri"] = sink.url
        if process is not None:
            config["delivery"] = {"process": process}
        daemon = await started(stack, Daemon(work / "daemon", config))
        await rest(daemon)
        row["after_start"] = reading(daemon)
        bodies = ndjson_bodies(events, start=200_000_000)
        with TreeSampler(daemon.pid) as sampler:
            await warm_up(daemon, sink)
            since = time.monotonic()
            base = sink.log.events
            await post_bodies(
                daemon.ingest_url,
                bodies,
                content_type=NDJSON,
                connections=NDJSON_CONNECTIONS,
                events_per_body=1000,
            )
            await until_delivered(
                daemon, sink, base + events, max(120.0, events / 2000), f"scenario {key}"
            )
            row["burst_peak_pss_mb"] = _mb(sampler.peak_pss(since=since))
            row["burst_peak_rss_mb"] = _mb(sampler.peak(since=since))
        del bodies

        # Drained: the daemon counts every event it received as delivered.
        # (Not audit_forwarder_pending_events: with a separate delivery
        # process it can stay above 0 after a burst; see the report.)
        async def drained() -> bool:
            daemon.check_alive()
            return await daemon.metric(DELIVERED) >= await daemon.metric(RECEIVED)

        await wait_until(drained, 60, f"scenario {key}: events undelivered after the burst")
        await rest(daemon)
        row["after_burst"] = reading(daemon)
    row.update(
        burst_events=events,
        idle_pss_mb=max(row["after_start"]["pss_mb"], row["after_burst"]["pss_mb"]),
        peak_rss_mb=row["burst_peak_rss_mb"],
        processes=len(row["after_start"]["processes"]),
    )
    return row


def idle_steps(run: Run) -> list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]]:
    """Scenario 10 as a ``bench.run`` step; none unless it was chosen."""
    if 10 not in run.plan.scenarios:
        return []
    return [("10", "idle memory", lambda: idle_memory(run, "10"))]


def describe(row: dict[str, Any]) -> str:
    """The scenario's readings as a small text table."""
    out = [f"{row['title']} ({row['processes']} processes, burst of {row['burst_events']:,})"]
    out.append(
        f"  {'when':<12} {'process':<9} {'pid':>7} {'PSS':>7} {'priv+shr':>9}"
        f" {'private':>8} {'shared':>7} {'PSS anon':>9} {'PSS file':>9}"
    )
    for when in ("after_start", "after_burst"):
        found = row[when]
        for p in found["processes"]:
            out.append(
                f"  {when:<12} {p['role']:<9} {p['pid']:>7} {p['pss_mb']:>7.1f}"
                f" {p['rss_mb']:>9.1f} {p['private_mb']:>8.1f} {p['shared_mb']:>7.1f}"
                f" {p['pss_anon_mb']:>9.1f} {p['pss_file_mb']:>9.1f}"
            )
        distinct = found["distinct_mb"]
        out.append(
            f"  {when:<12} {'summed':<9} {'':>7} {found['pss_mb']:>7.1f} {found['rss_mb']:>9.1f}"
            f"   distinct pages {distinct if distinct is not None else 'n/a (not root)'} MB"
        )
    out.append(
        f"  burst peak: PSS {row['burst_peak_pss_mb']} MB, private+shared"
        f" {row['burst_peak_rss_mb']} MB (MB = MiB)"
    )
    return "\n".join(out)


async def main(argv: list[str] | None = None) -> int:
    """Measure once and print the table and the JSON row."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=BURST_EVENTS, help="events in the burst")
    parser.add_argument(
        "--process", choices=("auto", "inline", "separate"), help="delivery.process to configure"
    )
    parser.add_argument("--json", action="store_true", help="print the row as JSON too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="af-idle-") as tmp:
        run = Run(Plan(events=args.events), Path(tmp))
        try:
            row = await idle_memory(run, process=args.process, burst=args.events)
        except BenchError as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
    print(describe(row))
    if args.json:
        print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
