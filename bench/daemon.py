"""The daemon under test: the real ``audit-forwarder`` process and its ``/metrics``.

The daemon is the real ``audit-forwarder`` process, driven only through its
configuration file, its HTTP ingest API, ``/metrics`` and its JSON log lines;
the benchmark imports nothing of the ``forwarder`` package. Its listeners bind
port 0 and their addresses are read from its ``probes_listening`` /
``daemon_started`` log lines, so no port has to be chosen in advance.
``/metrics`` is parsed from the Prometheus text exposition here.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.processes import BenchError, stop_process

CLI = str(Path(sys.executable).with_name("audit-forwarder"))


SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE_LINE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


@dataclass
class Daemon:
    """The real audit-forwarder process with a configuration written for the run."""

    work: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    ingest_url: str = ""
    metrics_url: str = ""
    socket_path: str = ""
    started: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        """The daemon's JSON log (stdout and stderr)."""
        return self.work / "daemon.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the daemon's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def start(self, timeout: float = 60) -> Daemon:
        """Start; the bound addresses come from ``probes_listening`` / ``daemon_started``."""
        self.work.mkdir(parents=True, exist_ok=True)
        config_path = self.work / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [CLI, "run", "--config", str(config_path)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        probes: dict[str, Any] = {}
        while not self.started:
            if self.process.poll() is not None:
                raise BenchError(
                    f"the daemon exited with status {self.process.returncode} while starting:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the daemon logged no daemon_started within {timeout} s:\n" + self.log_tail()
                )
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if entry.get("event") == "probes_listening":
                    probes = entry
                elif entry.get("event") == "daemon_started":
                    self.started = entry
            await asyncio.sleep(0.05)
        ingest = self.started.get("ingest") or []
        tcp = [a for a in ingest if not a.startswith("unix:")]
        self.ingest_url = f"http://{tcp[0]}" if tcp else ""
        metrics = self.started.get("metrics") or probes.get("metrics") or []
        if not metrics:
            raise BenchError("neither daemon_started nor probes_listening named a metrics address")
        self.metrics_url = f"http://{metrics[0]}"
        unix = [a.removeprefix("unix:") for a in ingest if a.startswith("unix:")]
        self.socket_path = unix[0] if unix else self.config["ingest"].get("unixSocket") or ""
        return self

    @property
    def pid(self) -> int:
        """The daemon's process id (the root of its process tree)."""
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        """Raise with the log's tail if the daemon has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"the daemon exited with status {self.process.returncode}:\n" + self.log_tail()
            )

    async def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on /metrics now."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.metrics_url}/metrics") as answer,
        ):
            text = await answer.text()
        return parse_metrics(text)

    async def metric(self, name: str, default: float | None = None) -> float:
        """Sum of one metric's samples over all label sets.

        Raises when the daemon does not expose it, unless ``default`` is given.
        """
        values = [value for sample, _, value in await self.samples() if sample == name]
        if not values:
            if default is not None:
                return default
            raise BenchError(f"the daemon's /metrics has no {name}")
        return sum(values)

    async def histogram(self, name: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts (``le`` -> count), summed over label sets."""
        buckets: dict[float, float] = {}
        for sample, labels, value in await self.samples():
            if sample == f"{name}_bucket" and "le" in labels:
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
        return buckets

    def buffer_files(self) -> dict[str, int]:
        """Sizes of the buffer's database file and its WAL on disk (bytes)."""
        path = Path(self.config["buffer"]["path"])
        sizes = {}
        for label, file in (("db", path), ("wal", Path(f"{path}-wal"))):
            sizes[label] = file.stat().st_size if file.exists() else 0
        return sizes

    def stop(self) -> None:
        """SIGTERM and wait (then kill the process and any leftover descendants)."""
        grace = float(self.config.get("shutdownGraceSeconds", 10))
        stop_process(self.process, signal.SIGTERM, timeout=grace + 60)


def daemon_config(work: Path, sink_url: str, **forwarder: Any) -> dict[str, Any]:
    """A benchmark configuration: JSON logs, buffer and socket under ``work``."""
    return {
        "ingest": {"host": "127.0.0.1", "port": 0, "unixSocket": str(work / "ingest.sock")},
        "buffer": {"path": str(work / "buffer.db"), "synchronous": "normal"},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "info", "format": "json"},
        "shutdownGraceSeconds": 5,
        "auditLogForwarders": [{"kind": "webhook", "uri": sink_url, **forwarder}],
    }
