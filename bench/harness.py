"""Benchmark harness: a fast loopback sink, the real daemon, and process-tree accounting.

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

Without nginx the harness falls back to an aiohttp sink in a separate process
that writes the same log and says so, because a Python sink competes with the
daemon for the same cores and lowers every figure. The latency scenario uses
the aiohttp sink on purpose (``RecordingSink``): it records the arrival time
of every event, which nginx cannot do without reading bodies in a script.

The daemon is the real ``audit-forwarder`` process, driven only through its
configuration file, its HTTP ingest API, ``/metrics`` and its JSON log lines.
Its CPU and memory are those of its whole process tree (the daemon and every
descendant, found through ``/proc/<pid>/task/*/children``), so they stay right
when work moves into child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

CLI = str(Path(sys.executable).with_name("audit-forwarder"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.1

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


# -- the sink ------------------------------------------------------------------


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


# -- the daemon ----------------------------------------------------------------

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


# -- load generators -------------------------------------------------------------


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a load generator is timed.

    A full collection in the benchmark's own process stalls its event loop for
    tens to hundreds of milliseconds (growing with the objects it holds), which
    would show up as acknowledgement latency the daemon did not cause. What
    the generator leaves for the collector meanwhile is collected afterwards.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class LoadResult:
    """What a closed-loop load generator saw."""

    requests: int
    events: int
    elapsed: float  # seconds from the first request sent to the last answer
    started_wall: float  # time.time() just before the first byte was sent
    latencies: list[float]  # per request, seconds from send to acknowledgement
    generator_cpu: float  # CPU seconds this process spent meanwhile


async def post_bodies(
    url: str,
    bodies: Sequence[bytes],
    *,
    content_type: str,
    connections: int,
    events_per_body: int,
) -> LoadResult:
    """POST every body to ``/v1/events`` with an aiohttp pool of keep-alive connections.

    ``connections`` clients each send their next body as soon as the previous
    one is acknowledged (202); any other answer raises BenchError.
    """
    connector = aiohttp.TCPConnector(limit=connections)
    target = f"{url}/v1/events"
    headers = {"Content-Type": content_type}
    latencies: list[float] = []
    next_body = iter(bodies)

    async def client(session: aiohttp.ClientSession) -> None:
        for body in next_body:
            sent = time.perf_counter()
            async with session.post(target, data=body, headers=headers) as answer:
                text = await answer.read()
                if answer.status != 202:
                    raise BenchError(
                        f"ingest answered {answer.status}: {text[:300].decode(errors='replace')}"
                    )
            latencies.append(time.perf_counter() - sent)

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = os.times()
        started_wall = time.time()
        started = time.perf_counter()
        try:
            with collector_paused():
                await asyncio.gather(*(client(session) for _ in range(connections)))
        except aiohttp.ClientError as exc:
            raise BenchError(f"ingest request failed: {exc!r}") from None
        elapsed = time.perf_counter() - started
        after = os.times()
    return LoadResult(
        requests=len(bodies),
        events=len(bodies) * events_per_body,
        elapsed=elapsed,
        started_wall=started_wall,
        latencies=latencies,
        generator_cpu=(after.user + after.system) - (cpu.user + cpu.system),
    )


@dataclass
class OfferResult:
    """What an open-loop generator saw: per event, when it was sent and acknowledged."""

    sent_ns: list[int]  # CLOCK_MONOTONIC ns just before each request
    acked_ns: list[int]  # CLOCK_MONOTONIC ns when each 202 was read
    elapsed: float  # seconds from the first send to the last send
    lag_ms: list[float]  # how late a 5 ms timer fired: the generator's own delay


async def measure_lag(lag_ms: list[float]) -> None:
    """Append how late (ms) a 5 ms timer fires, until cancelled: the event loop's lag."""
    while True:
        due = time.monotonic() + 0.005
        await asyncio.sleep(0.005)
        lag_ms.append((time.monotonic() - due) * 1000)


def as_bench_error(exc: BaseException) -> BenchError:
    """A request's failure as a BenchError (kept as is when it already is one)."""
    return exc if isinstance(exc, BenchError) else BenchError(f"ingest request failed: {exc!r}")


async def offer_steady(
    url: str, bodies: Sequence[bytes], rate: float, connections: int
) -> OfferResult:
    """Send one single-event request per body at a steady ``rate`` per second (open loop).

    Each request is started at its scheduled time whether or not earlier ones
    were answered (up to ``connections`` in flight; more wait for a
    connection), so a slow daemon does not lower the offered load. A 5 ms
    timer measures the event loop's lag meanwhile: a 202 is read (and its
    time taken) up to that late, which bounds the error of ``acked_ns``.
    """
    sent_ns = [0] * len(bodies)
    acked_ns = [0] * len(bodies)
    target = f"{url}/v1/events"
    headers = {"Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession, index: int, body: bytes) -> None:
        sent_ns[index] = time.monotonic_ns()
        async with session.post(target, data=body, headers=headers) as answer:
            text = await answer.read()
            acked_ns[index] = time.monotonic_ns()
            if answer.status != 202:
                raise BenchError(
                    f"ingest answered {answer.status}: {text[:300].decode(errors='replace')}"
                )

    lag_ms: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        lag_task = asyncio.create_task(measure_lag(lag_ms))
        try:
            with collector_paused():
                started = time.monotonic()
                for index, body in enumerate(bodies):
                    if failures:
                        break
                    delay = started + index / rate - time.monotonic()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(one(session, index, body))
                    in_flight.add(task)
                    task.add_done_callback(finished)
                elapsed = time.monotonic() - started
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            lag_task.cancel()
            for task in list(in_flight):
                task.cancel()
    if failures:
        raise as_bench_error(failures[0])
    return OfferResult(sent_ns=sent_ns, acked_ns=acked_ns, elapsed=elapsed, lag_ms=lag_ms)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%(body)s]==]
local share = %(requests)d
local answered = 0
function response(status, headers, body)
  answered = answered + 1
  if answered == share then
    io.write("%(marker)s\\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""
WRK_MARKER = "BENCH-SHARE-ANSWERED"


def wrk_version() -> str | None:
    """wrk's version string, or None when it is not installed."""
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"wrk (\S+)", out)
    return match.group(1) if match else "unknown"


async def wrk_fixed_requests(
    url: str, body: bytes, requests: int, connections: int, seconds: int, work: Path
) -> dict[str, Any]:
    """``requests`` single-event requests with wrk (one thread, keep-alive).

    wrk has no request-count option and its summary divides by the wall time
    of the whole run, so the Lua script stops wrk's thread when the
    ``requests``-th answer arrives and prints a marker; on the marker wrk gets
    SIGINT, which ends its run at once and makes it report the real elapsed
    time. Answers already read in the same poll round are counted too, so wrk
    may report a few more than ``requests``; the figures use its count.
    ``seconds`` bounds the run: if it passes first, the figures are the count
    measured until then (``stopped_by`` says which happened).
    """
    if b"]==]" in body:
        raise BenchError("the event body cannot be embedded in the wrk script")
    script = work / "single.lua"
    script.write_text(
        WRK_SCRIPT % {"body": body.decode(), "requests": requests, "marker": WRK_MARKER}
    )
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"{url}/v1/events",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    stopped_by = "time limit"
    generator_cpu = 0.0
    try:
        async with asyncio.timeout(seconds + 30):
            while raw := await process.stdout.readline():
                line = raw.decode(errors="replace").rstrip()
                if line == WRK_MARKER:
                    generator_cpu = cpu_seconds(process.pid)
                    process.send_signal(signal.SIGINT)
                    stopped_by = "request count"
                    continue
                lines.append(line)
            await process.wait()
    except TimeoutError:
        raise BenchError("wrk did not finish in time") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    figures = parse_wrk(lines)
    figures.update(stopped_by=stopped_by, generator_cpu=generator_cpu)
    return figures


def parse_wrk(lines: list[str]) -> dict[str, Any]:
    """Figures from wrk's summary: requests, seconds, requests/s, p50/p99, errors."""
    figures: dict[str, Any] = {}
    for line in lines:
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["requests_per_second"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures[f"p{parts[0][:2]}_ms"] = _milliseconds(parts[1])
        elif "requests in" in line:
            figures["requests"] = int(parts[0])
            figures["seconds"] = _seconds(parts[3].rstrip(","))
        elif line.strip().startswith("Non-2xx"):
            figures["non_2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            figures["socket_errors"] = line.strip()
    if "requests" not in figures or "requests_per_second" not in figures:
        raise BenchError("wrk's output has no summary:\n" + "\n".join(lines))
    return figures


def _milliseconds(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("m", 60_000.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise BenchError(f"wrk printed an unknown duration {text!r}")


def _seconds(text: str) -> float:
    return _milliseconds(text) / 1000
