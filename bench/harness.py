"""Benchmark harness: a fast loopback sink, the real daemon, and process accounting.

The sink is nginx (Debian's ``nginx`` package) configured to answer 200 and
discard the body, with an access log from which requests and bytes are
counted; it is never the bottleneck. Without nginx the harness falls back to
an aiohttp sink in a separate process and says so, because a Python sink
competes with the daemon for the same cores and lowers every figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

CLI = str(Path(sys.executable).with_name("audit-forwarder"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  log_format counts '$request_length $status';
  access_log {work}/sink-access.log counts buffer=256k flush=100ms;
  client_body_temp_path {work}/body;
  client_body_buffer_size 16m;
  client_max_body_size 256m;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200; }}
  }}
}}
"""

AIOHTTP_SINK = """
import sys
from aiohttp import web
log = open(sys.argv[2], "a", buffering=1)
async def sink(request):
    body = await request.read()
    log.write(f"{len(body)} 200\\n")
    return web.Response(status=200)
app = web.Application(client_max_size=256 * 1024 * 1024)
app.router.add_route("*", "/{tail:.*}", sink)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of a process so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sink:
    """A loopback HTTP sink that answers 200 and counts what it received."""

    work: Path
    port: int = 0
    kind: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where forwarders should send."""
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def log_path(self) -> Path:
        """The access log with one `<request bytes> <status>` line per request."""
        return self.work / "sink-access.log"

    def start(self) -> Sink:
        """Start nginx, or the aiohttp fallback when nginx is absent."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx:
            conf = self.work / "nginx.conf"
            (self.work / "body").mkdir(exist_ok=True)
            conf.write_text(NGINX_CONF.format(work=self.work, port=self.port))
            self.process = subprocess.Popen([nginx, "-c", str(conf), "-e", "stderr"])
            self.kind = "nginx"
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-c", AIOHTTP_SINK, str(self.port), str(self.log_path)]
            )
            self.kind = "aiohttp (nginx not installed: figures are lower than with nginx)"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("the sink did not start")

    def requests(self) -> int:
        """2xx requests the sink has logged so far."""
        if not self.log_path.exists():
            return 0
        return sum(1 for line in self.log_path.read_text().splitlines() if line.endswith(" 200"))

    def stop(self) -> None:
        """Stop the sink."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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

    async def start(self) -> Daemon:
        """Start and wait for /readyz."""
        self.work.mkdir(parents=True, exist_ok=True)
        config_path = self.work / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        log_path = self.work / "daemon.log"
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [CLI, "run", "--config", str(config_path)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not self.started:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start:\n{log_path.read_text()}")
            for line in log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == "daemon_started":
                    self.started = entry
            await asyncio.sleep(0.05)
        tcp = [a for a in self.started["ingest"] if not a.startswith("unix:")]
        self.ingest_url = f"http://{tcp[0]}" if tcp else ""
        self.metrics_url = f"http://{self.started['metrics'][0]}"
        self.socket_path = self.config["ingest"].get("unixSocket") or ""
        return self

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    async def metric(self, name: str) -> float:
        """Sum of a metric's samples from /metrics."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.metrics_url}/metrics") as answer,
        ):
            text = await answer.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def daemon_config(work: Path, sink_url: str, **forwarder: Any) -> dict[str, Any]:
    """A benchmark configuration: quiet logs, buffer and socket under ``work``."""
    return {
        "ingest": {"host": "127.0.0.1", "port": 0, "unixSocket": str(work / "ingest.sock")},
        "buffer": {"path": str(work / "buffer.db"), "synchronous": "normal"},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "info", "format": "json"},
        "auditLogForwarders": [{"kind": "webhook", "uri": sink_url, **forwarder}],
    }
