"""The report: the result table, the targets, the Markdown for the README, the machine.

Targets are reported, never asserted: each is PASS, FAIL, or n/a when a
scenario it needs did not run, and a scenario that failed shows as a row with
its reason. Only scenarios 1, 4, 5 and 6 carry ratios to syslog-ng, because
only they move events end to end as syslog-ng's run does; the others'
figures stand alone. The machine's description (cores, CPU, memory, Python,
kernel, and the versions of nginx, syslog-ng, wrk, the daemon and the git
checkout) goes with every result, because figures compare only on one
machine, and best within one run.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import syslog_ng
from bench.daemon import CLI
from bench.load import wrk_version
from bench.sinks import Sink
from bench.workload import Run

ROOT = Path(__file__).resolve().parent.parent


def ratio(ours: float | None, theirs: float | None) -> str:
    """``1.23x`` or an empty cell."""
    if ours is None or not theirs:
        return ""
    return f"{ours / theirs:.2f}x"


def table_rows(run: Run) -> list[list[str]]:
    """One row per scenario: the figures and, where comparable, the ratio to syslog-ng."""
    peer = run.results.get("syslog-ng", {})
    rows = []
    for key, result in run.results.items():
        rate = result.get("events_per_second") or result.get("drain_events_per_second")
        if key == "3":
            rate = result.get("offered_events_per_second")
        comparable = key in ("1", "1-single", "4", "5", "6", "8")
        cells = [
            key,
            result.get("title", f"syslog-ng {result.get('version', '')} (durable http())"),
            f"{rate:,}" if rate is not None else "",
            ratio(rate, peer.get("events_per_second")) if comparable else "",
            f"{result['cpu_seconds_per_100k']:.2f}" if "cpu_seconds_per_100k" in result else "",
            ratio(result.get("cpu_seconds_per_100k"), peer.get("cpu_seconds_per_100k"))
            if comparable
            else "",
            f"{result['peak_rss_mb']:.1f}" if "peak_rss_mb" in result else "",
            latency_cells(result),
            notes(key, result),
        ]
        rows.append(cells)
    for key, reason in run.failures.items():
        status = "not run" if key == "syslog-ng" else "FAILED"
        rows.append([key, status, "", "", "", "", "", "", reason.splitlines()[0][:100]])
    return rows


def latency_cells(result: dict[str, Any]) -> str:
    """p50 / p99 (/ max) in ms: acknowledgement for scenario 2, ack-to-arrival for 3."""
    if "p99_ms" in result:
        return f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} / {result['max_ms']:.1f}"
    if "ack_p99_ms" in result:
        return f"{result['ack_p50_ms']:.1f} / {result['ack_p99_ms']:.1f}"
    return ""


def notes(key: str, result: dict[str, Any]) -> str:
    """The row's extra facts: generator, drain, buffer file, synchronous mode."""
    if key == "syslog-ng":
        return f"events/s to sink; {result['generator']}"
    if key.startswith("2"):
        return f"ack/s; {result['generator']}; gen CPU {result['generator_cpu_share']:.0%}"
    if key == "3":
        return (
            f"offered/s; p50/p99/max ack->sink; send->sink p99 {result['send_to_arrival_p99_ms']}"
            f" ms; generator lag p99 {result['generator_lag_p99_ms']} ms; histogram p99"
            f" {result.get('histogram_p99_ms')} ms; daemon CPU {result['cpu_share']:.0%}"
        )
    if key == "4":
        return (
            f"drain/s; RSS {result['rss_at_10pct_mb']} MB at 10% -> peak"
            f" {result['peak_rss_mb']} MB; buffer {result['buffer_empty_mb']:.1f} ->"
            f" {result['buffer_full_mb']:.0f} -> {result['buffer_after_drain_mb']:.1f} MB"
        )
    if key == "10":
        return (
            f"idle PSS {result['after_start']['pss_mb']} MB after start,"
            f" {result['after_burst']['pss_mb']} MB after {result['burst_events']:,} drained"
            f" (private+shared {result['after_start']['rss_mb']} /"
            f" {result['after_burst']['rss_mb']} MB); {result['processes']} process(es);"
            " RSS column: burst peak"
        )
    if key.startswith("7"):
        return (
            f"events/s to a sink answering after 50 ms; batches of 100; ordering relaxed;"
            f" limit at the end {result['concurrency_limit_at_end']:g}"
        )
    text = f"events/s to sink; synchronous={result['synchronous']}"
    if key == "5":
        text += f"; after {result['history_events']:,} older events"
    if key == "1-single":
        text += "; one client connection, each body waits for its 202"
    if key == "8":
        text += "; buffer encrypted (AES-256-GCM)"
    return text


HEADER = ["#", "scenario", "events/s", "vs sl", "CPU-s/100k", "vs sl", "RSS MB", "ms", "notes"]


def print_table(rows: list[list[str]]) -> None:
    """The result table, fixed-width."""
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    for row in [HEADER, *rows]:
        cells = [
            cell.rjust(w) if i in (2, 3, 4, 5, 6) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[-1]]))


@dataclass
class Target:
    """A target from the issue, what was measured against it and whether it passes."""

    name: str
    measured: str
    passed: bool | None  # None: not measured in this run


Judged = tuple[str, bool]  # what was measured, and whether it meets the target


def targets(run: Run) -> list[Target]:
    """Every target, PASS / FAIL, or n/a when a scenario it needs did not run."""
    r = run.results
    found: list[Target] = []

    def add(name: str, needs: tuple[str, ...], judge: Callable[..., Judged]) -> None:
        if all(key in r for key in needs):
            measured, passed = judge(*(r[key] for key in needs))
            found.append(Target(name, measured, passed))
        else:
            found.append(Target(name, "not measured", None))

    def vs_peer(s1: dict[str, Any], peer: dict[str, Any]) -> Judged:
        x = s1["events_per_second"] / peer["events_per_second"]
        ours, theirs = s1["events_per_second"], peer["events_per_second"]
        return f"{x:.2f}x ({ours:,} vs {theirs:,} events/s)", x >= 1.0

    add("end to end >= 1.0x syslog-ng's durable throughput", ("1", "syslog-ng"), vs_peer)
    add(
        "end to end, one client connection >= 1.0x syslog-ng",
        ("1-single", "syslog-ng"),
        vs_peer,
    )
    add(
        "end to end <= 0.6 CPU-s per 100k events (every process of the daemon)",
        ("1",),
        lambda s1: (f"{s1['cpu_seconds_per_100k']:.2f}", s1["cpu_seconds_per_100k"] <= 0.6),
    )
    for transport in ("tcp", "unix"):
        add(
            f"single-event ingest ({transport}) >= 10,000 acknowledged events/s",
            (f"2-{transport}",),
            lambda s2: (
                f"{s2['events_per_second']:,} ({s2['generator'].split(',')[0]})",
                s2["events_per_second"] >= 10_000,
            ),
        )
        add(
            f"single-event ingest ({transport}) p99 acknowledgement <= 25 ms",
            (f"2-{transport}",),
            lambda s2: (f"{s2['ack_p99_ms']:.1f} ms", s2["ack_p99_ms"] <= 25),
        )
    add(
        "latency at 2k events/s: p99 ingest-to-delivery <= 250 ms",
        ("3",),
        lambda s3: (
            f"{s3['p99_ms']:.1f} ms ack -> arrival (send -> arrival"
            f" {s3['send_to_arrival_p99_ms']:.1f} ms)",
            s3["p99_ms"] <= 250,
        ),
    )
    add(
        "idle memory <= 60 MB PSS summed over the daemon's processes (after start, after a burst)",
        ("10",),
        lambda s10: (
            f"{s10['after_start']['pss_mb']} MB after start, {s10['after_burst']['pss_mb']} MB"
            f" after a burst (private+shared {s10['after_start']['rss_mb']} /"
            f" {s10['after_burst']['rss_mb']} MB, {s10['processes']} process(es))",
            s10["idle_pss_mb"] <= 60,
        ),
    )
    add(
        "memory under load <= 80 MB PSS (peak in scenario 1)",
        ("1",),
        lambda s1: (f"{s1['peak_pss_mb']:.1f} MB PSS", s1["peak_pss_mb"] <= 80),
    )
    add(
        "memory does not grow with the backlog (peak <= 1.2x RSS at 10% of it)",
        ("4",),
        lambda s4: (
            f"{s4['rss_at_10pct_mb']} MB at 10% -> peak {s4['peak_rss_mb']} MB",
            s4["peak_rss_mb"] <= 1.2 * s4["rss_at_10pct_mb"],
        ),
    )

    def drain(s4: dict[str, Any], s1: dict[str, Any]) -> Judged:
        x = s4["drain_events_per_second"] / s1["events_per_second"]
        return (
            f"{x:.0%} ({s4['drain_events_per_second']:,} vs {s1['events_per_second']:,})",
            x >= 0.8,
        )

    add("backlog drain >= 80% of the steady end-to-end rate", ("4", "1"), drain)
    add(
        "buffer file returns near its empty size after the drain (<= empty + 16 MB)",
        ("4",),
        lambda s4: (
            f"{s4['buffer_after_drain_mb']:.1f} MB (empty {s4['buffer_empty_mb']:.1f},"
            f" with backlog {s4['buffer_full_mb']:.0f})",
            s4["buffer_after_drain_mb"] <= s4["buffer_empty_mb"] + 16,
        ),
    )

    def scale(s5: dict[str, Any], s1: dict[str, Any]) -> Judged:
        speed = s5["events_per_second"] / s1["events_per_second"]
        cost = s5["cpu_seconds_per_100k"] / s1["cpu_seconds_per_100k"]
        return (
            f"{speed:.2f}x events/s, {cost:.2f}x CPU per event",
            speed >= 0.9 and cost <= 1.1,
        )

    add("scale: scenario 5 within 10% of scenario 1", ("5", "1"), scale)
    add(
        "buffer encrypted: within 10% of plain (scenario 8 vs 1, events/s and CPU per event)",
        ("8", "1"),
        lambda s8, s1: (
            f"{s8['events_per_second'] / s1['events_per_second']:.2f}x events/s,"
            f" {s8['cpu_seconds_per_100k'] / s1['cpu_seconds_per_100k']:.2f}x CPU per event",
            s8["events_per_second"] >= 0.9 * s1["events_per_second"]
            and s8["cpu_seconds_per_100k"] <= 1.1 * s1["cpu_seconds_per_100k"],
        ),
    )
    add(
        "far receiver (50 ms): >= 20,000 events/s at 16 in flight, batches of 100",
        ("7-16",),
        lambda s7: (
            f"{s7['events_per_second']:,} events/s",
            s7["events_per_second"] >= 20_000,
        ),
    )
    return found


def markdown(run: Run, machine: dict[str, Any], found: list[Target]) -> str:
    """The README table."""
    out = [
        f"Measured {machine['date']} on {machine['cores']} cores ({machine['cpu']}),"
        f" {machine['memory_mb']:,} MB, Python {machine['python']}, sink {run.sink_kind},"
        f" syslog-ng {machine['syslog_ng'] or 'absent'}, with `make bench`"
        + (" --quick" if run.plan.quick else "")
        + ":",
        "",
        "| # | scenario | events/s | vs syslog-ng | CPU-s / 100k events | vs syslog-ng"
        " | peak RSS MB | p50 / p99 (/ max) ms | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table_rows(run)
    ]
    out += ["", "| target | measured | |", "|---|---|---|"]
    out += [f"| {t.name} | {t.measured} | {verdict(t)} |" for t in found]
    return "\n".join(out)


def verdict(target: Target) -> str:
    """PASS, FAIL or n/a."""
    return {True: "PASS", False: "FAIL", None: "n/a"}[target.passed]


def machine_description() -> dict[str, Any]:
    """Cores, memory, Python and tool versions, for the results file."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = next(
        int(line.split()[1]) // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "time": time.strftime("%H:%M:%S %z"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": command_version(["nginx", "-v"], r"nginx/(\S+)", Sink.nginx_binary()),
        "syslog_ng": syslog_ng.version(),
        "wrk": wrk_version(),
        "audit_forwarder": command_version([CLI, "version"], r"(\d+\.\d+\S*)", CLI),
        "git": command_version(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], r"(\S+)", "git"
        ),
    }


def command_version(argv: list[str], pattern: str, binary: str | None) -> str | None:
    """The first match of ``pattern`` in a command's output, or None."""
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None
