"""The sinks: a fast loopback HTTP sink that logs what it received, and its log.

The sink is nginx (Debian's ``nginx`` package) configured by the benchmark to
answer 200 and discard the body. nginx's ``return 200`` answers as soon as it
has the headers and discards the body afterwards, so a sender would be told
"delivered" before the sink had its bytes (and libcurl senders, which wait
for ``100 Continue``, would never send them at all). The sink therefore
proxies every request to a second nginx server on a Unix socket that answers
200: a proxy reads the whole body before it forwards, so the 200 and the
access-log line come only after the sink has every byte. The access log has
one ``$msec $request_length $content_length $status`` line per request; the
benchmark counts events from the body bytes and takes each request's arrival
time from ``$msec`` (so how often the log is polled does not bias a timing).

Without nginx the sink falls back to an aiohttp server in a separate process
that writes the same log and says so, because a Python sink competes with the
daemon for the same cores and lowers every figure. The latency scenario uses
the aiohttp sink on purpose (``RecordingSink``): it records the arrival time
of every event, which nginx cannot do without reading bodies in a script.

``wait_for_events`` is here because it waits on a sink's count, whichever
process feeds it (the daemon, or syslog-ng in ``bench.syslog_ng``).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import BenchError, free_port, stop_process, wait_for_port

# ``user``: nginx started by root would run its worker as nobody, which may not
# enter the run's private temporary directory; the worker runs as whoever
# started the benchmark (for anyone else nginx ignores the line).
NGINX_CONF = """
user {user} {group};
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format counts '$msec $request_length $content_length $status';
  access_log off;
  client_body_temp_path {work}/tmp/body;
  proxy_temp_path {work}/tmp/proxy;
  fastcgi_temp_path {work}/tmp/fastcgi;
  uwsgi_temp_path {work}/tmp/uwsgi;
  scgi_temp_path {work}/tmp/scgi;
  client_body_buffer_size 16m;
  client_max_body_size 256m;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  # The same server twice: a POST is retried on a fresh connection when a
  # kept-alive one fails, instead of turning into a 502.
  upstream discard {{
    server unix:{work}/discard.sock;
    server unix:{work}/discard.sock;
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    access_log {log} counts;
    location / {{
      proxy_pass http://discard;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
      proxy_next_upstream error timeout invalid_header non_idempotent;
      proxy_next_upstream_tries 3;
    }}
  }}
  server {{
    listen unix:{work}/discard.sock;
    location / {{ return 200; }}
  }}
}}
"""

# argv: port, access log, and optionally an arrivals file. With the arrivals
# file it records ``<seq> <CLOCK_MONOTONIC ns>`` for every event in a body
# (seq from ``"request_id":"req_<seq>"``), taken once the whole body is read.
AIOHTTP_SINK = r"""
import re, sys, time
from aiohttp import web
SEQ = re.compile(rb'"request_id":\s*"req_(\d+)"')
log = open(sys.argv[2], "a", buffering=1)
arrivals = open(sys.argv[3], "a", buffering=1) if len(sys.argv) > 3 else None
async def sink(request):
    body = await request.read()
    arrived = time.monotonic_ns()
    if arrivals is not None:
        arrivals.write("".join(f"{int(s)} {arrived}\n" for s in SEQ.findall(body)))
    log.write(f"{time.time():.3f} {len(body)} {len(body)} 200\n")
    return web.Response(status=200)
app = web.Application(client_max_size=256 * 1024 * 1024)
app.router.add_route("*", "/{tail:.*}", sink)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass
class SinkLog:
    """Reads a sink's access log incrementally: requests, bytes and arrival times.

    Events are counted from body bytes: ``round(content_length / per_event)``
    per request, where ``per_event`` is the delivered size of one event
    including its share of the framing (see ``calibrate``). Rounding per
    request is exact for bodies of up to a few hundred events of ~500 bytes
    whatever their framing (``[``, ``,``, ``\\n``).
    """

    path: Path
    per_event: float = 0.0
    offset: int = 0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (msec, content_length)
    events: int = 0
    requests: int = 0
    refused: int = 0  # requests answered other than 2xx (none expected)
    body_bytes: int = 0
    _tail: bytes = b""

    def poll(self) -> None:
        """Take in the lines written since the last poll."""
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        self.offset += len(chunk)
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            parts = line.split()
            if len(parts) != 4:
                continue
            if not parts[3].startswith(b"2"):
                self.refused += 1
                continue
            length = int(parts[2]) if parts[2] != b"-" else 0
            self.arrivals.append((float(parts[0]), length))
            self.requests += 1
            self.body_bytes += length
            if self.per_event:
                self.events += round(length / self.per_event)

    def set_per_event(self, per_event: float) -> None:
        """Count events with this delivered size per event from now on (recounts the past)."""
        self.per_event = per_event
        self.events = sum(round(length / per_event) for _, length in self.arrivals)

    def time_reaching(self, events: int) -> float | None:
        """Wall-clock time (``$msec``) of the request that brought the count to ``events``."""
        total = 0
        for msec, length in self.arrivals:
            total += round(length / self.per_event)
            if total >= events:
                return msec
        return None


@dataclass
class Sink:
    """A loopback HTTP sink that answers 200 and logs what it received."""

    work: Path
    port: int = 0
    kind: str = ""
    process: subprocess.Popen[bytes] | None = None
    log: SinkLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = SinkLog(self.work / "sink-access.log")

    @property
    def url(self) -> str:
        """Where forwarders should send."""
        return f"http://127.0.0.1:{self.port}/ingest"

    @staticmethod
    def nginx_binary() -> str | None:
        """nginx's path, or None when it is not installed."""
        found = shutil.which("nginx")
        return found or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

    def start(self, port: int = 0) -> Sink:
        """Start nginx (or the aiohttp fallback) on ``port`` (a free one when 0)."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = port or self.port or free_port()
        nginx = self.nginx_binary()
        if nginx:
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
            conf = self.work / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    work=self.work,
                    port=self.port,
                    log=self.log.path,
                    user=pwd.getpwuid(os.getuid()).pw_name,
                    group=grp.getgrgid(os.getgid()).gr_name,
                )
            )
            (self.work / "discard.sock").unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [nginx, "-c", str(conf), "-e", str(self.work / "nginx-error.log")]
            )
            self.kind = "nginx"
        else:
            self.process = subprocess.Popen(self._fallback_argv())
            self.kind = "aiohttp (nginx not installed: figures are lower than with nginx)"
        try:
            wait_for_port(self.port, 15, f"the {self.kind.split()[0]} sink", self.process)
        except BenchError:
            self.stop()
            raise
        return self

    def requests(self) -> int:
        """2xx requests the sink has logged so far."""
        self.log.poll()
        return self.log.requests

    def _fallback_argv(self) -> list[str]:
        return [sys.executable, "-c", AIOHTTP_SINK, str(self.port), str(self.log.path)]

    def stop(self) -> None:
        """Stop the sink (nginx: graceful quit, so the log is complete)."""
        graceful = signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM
        stop_process(self.process, graceful, timeout=10)
        self.process = None

    @property
    def pid(self) -> int:
        """The sink's (master) process id."""
        assert self.process is not None
        return self.process.pid


@dataclass
class RecordingSink(Sink):
    """The aiohttp sink that also records each event's arrival (``<seq> <monotonic ns>``)."""

    @property
    def arrivals_path(self) -> Path:
        """One ``<seq> <CLOCK_MONOTONIC ns>`` line per event received."""
        return self.work / "arrivals.log"

    def start(self, port: int = 0) -> RecordingSink:
        """Start the aiohttp recording sink (never nginx: it cannot see inside bodies)."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = port or self.port or free_port()
        self.process = subprocess.Popen([*self._fallback_argv(), str(self.arrivals_path)])
        self.kind = "aiohttp recording sink (per-event arrival times)"
        try:
            wait_for_port(self.port, 15, "the recording sink", self.process)
        except BenchError:
            self.stop()
            raise
        return self

    def read_arrivals(self) -> dict[int, int]:
        """Arrival time (monotonic ns) of each sequence number, first arrival kept."""
        found: dict[int, int] = {}
        if not self.arrivals_path.exists():
            return found
        for line in self.arrivals_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                found.setdefault(int(parts[0]), int(parts[1]))
        return found


async def wait_for_events(
    sink: Sink,
    events: int,
    seconds: float,
    what: str,
    processes: Sequence[subprocess.Popen[bytes] | None] = (),
) -> float:
    """Poll the sink until it has ``events``; return the ``$msec`` of the request completing them.

    Raises BenchError when ``seconds`` pass first or one of ``processes`` exits.
    """
    deadline = time.monotonic() + seconds
    while True:
        sink.log.poll()
        if sink.log.events >= events:
            reached = sink.log.time_reaching(events)
            assert reached is not None
            return reached
        for process in processes:
            if process is not None and process.poll() is not None:
                raise BenchError(
                    f"{what}: pid {process.pid} exited with status {process.returncode}"
                    f" while the sink had {sink.log.events:,} of {events:,} events"
                )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what}: the sink has {sink.log.events:,} of {events:,} events"
                f" ({sink.log.requests:,} requests, {sink.log.refused:,} refused)"
                f" after {seconds:.0f} s"
            )
        await asyncio.sleep(0.05)
