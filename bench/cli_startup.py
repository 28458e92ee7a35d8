"""CLI start-up: how long the operator commands take from exec to exit, medians of 10.

Usage: ``python -m bench.cli_startup [--runs N]``; ``bench.run`` also runs it at
the end of every benchmark. Target (issue 15): ``audit-forwarder --help``,
``check-config`` and ``status`` each finish in at most 150 ms.

Each command is the installed ``audit-forwarder`` console script, run with
``subprocess.run`` and timed with ``time.perf_counter`` around it: fork,
exec, interpreter start, imports, the command's work and exit, which is what
an operator (or a probe script) waits for. ``status`` asks a real daemon,
started for the measurement with a configuration like the other scenarios'
(Unix socket and TCP on loopback, no events sent), so its figure includes the
round trip to the admin API. ``python -c pass`` with the same interpreter is
measured beside them as the floor no command can go below. One untimed run
of each comes first, so a cold page cache is not counted.

The commands run with their bytecode cached, as an installed package has it
(pip compiles the wheel's modules): an editable tree under
``PYTHONDONTWRITEBYTECODE=1`` would compile every ``forwarder`` module from
source on each run, which no operator pays. The cache goes to a directory of
the measurement's own (``PYTHONPYCACHEPREFIX``), written by the untimed run,
so the source tree is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.daemon import CLI, Daemon, daemon_config
from bench.processes import BenchError
from bench.workload import Run

RUNS = 10
TARGET_MS = 150.0
# Nothing listens here: no event is sent, so the forwarder never tries it.
UNUSED_SINK = "http://127.0.0.1:9/unused"


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """The median wall-clock time of ``argv`` over ``runs`` runs, after one untimed run."""
    durations = []
    for run in range(runs + 1):
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)} exited {result.returncode}:"
                f" {result.stderr.decode(errors='replace')[-500:]}"
            )
        if run:
            durations.append(elapsed)
    return round(statistics.median(durations) * 1000, 1)


def commands(config: Path) -> dict[str, list[str]]:
    """The measured commands by the name they are reported under."""
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "--help": [CLI, "--help"],
        "check-config": [CLI, "check-config", "-c", str(config)],
        "status": [CLI, "status", "-c", str(config)],
    }


async def cli_startup(work: Path, runs: int = RUNS) -> dict[str, Any]:
    """Median milliseconds per command (``status`` against a daemon started here)."""
    daemon = Daemon(work, daemon_config(work, UNUSED_SINK))
    await daemon.start()
    try:
        config = work / "config.yaml"  # written by Daemon.start
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "bytecode")
        medians = {}
        for name, argv in commands(config).items():
            medians[name] = await asyncio.to_thread(median_ms, argv, runs, env)
    finally:
        daemon.stop()
    return {"runs": runs, "target_ms": TARGET_MS, "median_ms": medians}


def passed(result: dict[str, Any]) -> bool:
    """Whether every command (not the interpreter floor) meets the target."""
    return all(
        ms <= result["target_ms"]
        for name, ms in result["median_ms"].items()
        if name != "python -c pass"
    )


async def run_cli_startup(run: Run) -> dict[str, Any] | None:
    """``bench.run``'s last step: the figures, or None with the failure recorded as ``cli``."""
    print("- cli: CLI start-up ...", flush=True)
    try:
        result = await cli_startup(run.tmp / "cli-startup")
    except BenchError as exc:  # the scenarios' figures still count
        run.failures["cli"] = str(exc)
        print(f"  FAILED: {exc}", flush=True)
        return None
    return result


def startup_report(result: dict[str, Any]) -> str:
    """The figures for a terminal and the README: a Markdown table and the verdict."""
    lines = [
        f"CLI start-up, median of {result['runs']} (`python -m bench.cli_startup`):",
        "",
        "| command | median ms |",
        "|---|---|",
    ]
    for name, ms in result["median_ms"].items():
        shown = name if name.startswith("python") else f"audit-forwarder {name}"
        lines.append(f"| `{shown}` | {ms:.0f} |")
    verdict = "PASS" if passed(result) else "FAIL"
    lines += ["", f"{verdict}  CLI start-up <= {result['target_ms']:.0f} ms for every command"]
    return "\n".join(lines)


async def main(runs: int) -> int:
    """Measure in a temporary directory and print the report."""
    with tempfile.TemporaryDirectory(prefix="af-cli-") as tmp:
        result = await cli_startup(Path(tmp), runs)
    print(startup_report(result))
    print()
    print(yaml.safe_dump(result, sort_keys=False).rstrip())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.cli_startup", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs per command")
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
