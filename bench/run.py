"""The benchmark: the real daemon end to end, next to syslog-ng, in one command.

Usage: ``python -m bench.run [--quick] [--only 1,2] [--events N]`` (``make bench``
installs the Debian tools first). Prints one table row per scenario, the
targets with PASS / FAIL, a Markdown table for the README, and writes
everything with the machine's description to ``bench/results/`` (git-ignored).
Targets are reported, never asserted; the exit status is 1 only when a
scenario could not be measured.

Each scenario starts the real ``audit-forwarder`` process with a configuration
written for it (buffer, socket and logs in a temporary directory; one webhook
forwarder with ``batch: {maxEvents: 100, maxWaitMs: 50}`` and ``format:
json``) and drives it only through that file, its ingest API, ``/metrics`` and
its log lines. Deliveries go to a loopback nginx sink that reads each body,
answers 200 and logs ``$msec`` and ``$content_length`` (see ``bench.sinks``);
without nginx, an aiohttp sink in its own process, and the output says so.
Events are ~500-byte JSON objects of the same length, so the sink counts them
from body bytes: a warm-up of 1,000 events (untimed) learns the delivered bytes
per event, and every timed count is cross-checked against the daemon's
``audit_forwarder_events_delivered_total``. CPU is that of the daemon's whole
process tree from /proc (utime + stime, plus reaped children's); memory is the
summed RSS of the tree sampled every ~100 ms (a page shared by two processes
counts twice), with the tree's PSS (shared pages divided among their users)
sampled every ~1 s beside it in the results.

The scenarios, each described in the module that measures it:

1. End to end: N events in NDJSON bodies of 1,000, until the sink has them
   all (``bench.throughput``).
2. Single-event ingest, one event per request, over TCP and over the Unix
   socket (``bench.single_event``).
3. Latency: single-event requests offered at a steady 2,000 events/s, timed
   per event (``bench.latency``).
4. Backlog: built while the sink is down, then drained (``bench.backlog``).
5. Scale: scenario 1 after 2,000,000 older events (``bench.throughput``).
6. Scenario 1 with ``buffer.synchronous: full`` (``bench.throughput``).
7. A far receiver: a sink answering after 50 ms, at 1, 4 and 16 requests in
   flight and with adaptive concurrency (``bench.far_receiver``).
8. Scenario 1 with the buffer encrypted at rest (``buffer.encryption``,
   AES-256-GCM; ``bench.throughput``), shown beside scenario 1 as a ratio.
10. Idle memory: every process of the daemon after start and after a burst
    has drained, PSS and private + shared (``bench.idle``).

Whatever scenarios were chosen, the run ends with the command line's start-up
time (``--help``, ``check-config``, ``status``; ``bench.cli_startup``).

syslog-ng (``bench.syslog_ng``) takes scenario 1's workload over TCP in the
same run, counted at the same kind of sink, and scenarios 1, 4, 5 and 6 are
also shown as ratios to it; when it is missing or fails, the output says why
and shows our figures without ratios.

This module only reads the command line, runs the chosen scenarios in order
(one that fails is recorded and the others still run), then prints and saves
what they found, so the whole benchmark stays one ``python -m`` away. Below
it: ``bench.workload`` (the events, the plan and the run's state),
``bench.steps`` (what every scenario does: configure and start the daemon and
its sink, warm up, wait, cross-check the counts), ``bench.report`` (the
table, the targets, the Markdown and the machine's description), and the
harness: ``bench.processes`` (process-tree accounting), ``bench.sinks``,
``bench.daemon`` and ``bench.load`` (the load generators; ``bench.unix_load``
runs as a process of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.backlog import backlog
from bench.cli_startup import run_cli_startup, startup_report
from bench.far_receiver import far_receiver_steps
from bench.idle import idle_steps
from bench.latency import latency
from bench.nats import nats_steps
from bench.processes import BenchError
from bench.report import (
    ROOT,
    machine_description,
    markdown,
    print_table,
    table_rows,
    targets,
    verdict,
)
from bench.single_event import single_event
from bench.sinks import Sink
from bench.throughput import end_to_end, run_syslog_ng
from bench.workload import QUICK, Plan, Run

RESULTS = ROOT / "bench" / "results"


async def measure(run: Run) -> None:
    """Run the selected scenarios in order; a failed one is recorded and the rest go on."""
    chosen = run.plan.scenarios
    steps: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = []
    if chosen & {1, 4, 5, 6}:
        steps.append(("syslog-ng", "syslog-ng, scenario 1's workload", lambda: run_syslog_ng(run)))
    if 1 in chosen:
        steps.append(("1", "end to end", lambda: end_to_end(run, "1", "end to end")))
        steps.append(
            (
                "1-single",
                "end to end, one client connection",
                lambda: end_to_end(run, "1-single", "end to end, one connection", connections=1),
            )
        )
    if 2 in chosen:
        steps.append(("2-tcp", "single-event ingest, TCP", lambda: single_event(run, "tcp")))
        steps.append(
            ("2-unix", "single-event ingest, Unix socket", lambda: single_event(run, "unix"))
        )
    if 3 in chosen:
        steps.append(("3", "latency", lambda: latency(run)))
    if 4 in chosen:
        steps.append(("4", "backlog", lambda: backlog(run)))
    if 5 in chosen:
        history = run.plan.history
        steps.append(
            (
                "5",
                "scale",
                lambda: end_to_end(
                    run, "5", f"end to end after {history:,} delivered", history=history
                ),
            )
        )
    if 6 in chosen:
        steps.append(
            (
                "6",
                "synchronous: full",
                lambda: end_to_end(run, "6", "end to end, synchronous: full", "full"),
            )
        )
    if 8 in chosen:
        steps.append(
            (
                "8",
                "buffer encrypted",
                lambda: end_to_end(run, "8", "end to end, buffer encrypted", encrypted=True),
            )
        )
    steps += nats_steps(run)
    steps += far_receiver_steps(run)
    steps += idle_steps(run)
    for key, title, step in steps:
        print(f"- {key}: {title} ...", flush=True)
        started_at = time.monotonic()
        try:
            result = await step()
        except Exception as exc:  # one scenario's failure must not lose the others
            detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
            run.failures[key] = detail
            if key == "syslog-ng":
                print(f"  syslog-ng could not run, figures without ratios: {detail}", flush=True)
            else:
                print(f"  FAILED: {detail}", flush=True)
            continue
        run.results[key] = result
        print(f"  done in {time.monotonic() - started_at:.0f} s", flush=True)
    compare_variants(run)


def compare_variants(run: Run) -> None:
    """Scenarios 6 and 8 as ratios to scenario 1, which they vary."""
    s1, s6 = run.results.get("1"), run.results.get("6")
    if s1 and s6:
        s6["vs_normal_events_per_second"] = round(
            s6["events_per_second"] / s1["events_per_second"], 2
        )
    s8 = run.results.get("8")
    if s1 and s8:
        s8["vs_plain_events_per_second"] = round(
            s8["events_per_second"] / s1["events_per_second"], 2
        )
        s8["vs_plain_cpu"] = round(s8["cpu_seconds_per_100k"] / s1["cpu_seconds_per_100k"], 2)


def parse_args(argv: list[str] | None = None) -> Plan:
    """The plan from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down counts, a few minutes")
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temporary directory (logs, configs)"
    )
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,2")
    parser.add_argument(
        "--events", type=int, default=0, help="events for scenarios 1, 2, 5, 6 and syslog-ng"
    )
    args = parser.parse_args(argv)
    plan = replace(QUICK if args.quick else Plan(), keep_temp=args.keep_temp)
    if args.only:
        try:
            chosen = frozenset(int(part) for part in args.only.split(",") if part.strip())
        except ValueError:
            parser.error(f"--only takes scenario numbers 1-10, not {args.only!r}")
        if not chosen or not chosen <= set(range(1, 11)):
            parser.error(f"--only takes scenario numbers 1-10, not {args.only!r}")
        plan = replace(plan, scenarios=chosen)
    if args.events:
        if not 1000 <= args.events < 100_000_000:
            parser.error("--events must be between 1,000 and 100,000,000")
        plan = replace(plan, events=args.events, single_requests=args.events)
    return plan


async def main(plan: Plan) -> int:
    """Measure, print and save; 1 when a scenario could not be measured."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels the run like Ctrl-C does, so every process is stopped.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    machine = machine_description()
    print(
        f"audit-forwarder benchmark{' (quick)' if plan.quick else ''}: scenarios"
        f" {','.join(map(str, sorted(plan.scenarios)))} on {machine['cores']} cores,"
        f" {machine['memory_mb']:,} MB, Python {machine['python']}",
        flush=True,
    )
    if Sink.nginx_binary() is None:
        print("  sink: nginx is not installed; using the aiohttp fallback sink (lower figures)")
    with contextlib.ExitStack() as stack:
        if plan.keep_temp:
            tmp = tempfile.mkdtemp(prefix="af-bench-")
            print(f"  temporary directory (kept): {tmp}")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="af-bench-"))
        run = Run(plan, Path(tmp))
        await measure(run)
        cli_startup = await run_cli_startup(run)
    found = targets(run)
    print()
    print_table(table_rows(run))
    print()
    print(f"sink: {run.sink_kind or 'none started'}")
    if "syslog-ng" in run.failures:
        print(f"syslog-ng: not compared ({run.failures['syslog-ng'].splitlines()[0]})")
    print()
    print("targets:")
    for target in found:
        print(f"  {verdict(target):<4}  {target.name}: {target.measured}")
    print()
    print("Markdown for the README:")
    print()
    print(markdown(run, machine, found))
    if cli_startup is not None:
        print()
        print(startup_report(cli_startup))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "plan": {**plan.__dict__, "scenarios": sorted(plan.scenarios)},
                "sink": run.sink_kind,
                "results": run.results,
                "failures": run.failures,
                "warnings": run.warnings,
                "targets": [t.__dict__ for t in found],
                "cli_startup": cli_startup,
            },
            indent=2,
        )
    )
    print()
    print(f"results: {out.relative_to(ROOT)}")
    return 1 if set(run.failures) - {"syslog-ng"} else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the processes the benchmark started are stopped", file=sys.stderr)
        sys.exit(130)
