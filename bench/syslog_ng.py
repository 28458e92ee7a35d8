"""The peer: the same end-to-end workload through syslog-ng's durable http() destination.

syslog-ng (Debian: ``syslog-ng-core`` and ``syslog-ng-mod-http``) runs in the
foreground with a configuration, persist file, pid file, control socket and
disk buffer all under the run's temporary directory; no system path is read
or written. Its source is ``network()`` on a free loopback TCP port with
``flags(no-parse)``, so each line received is one message carried as is; its
destination is ``http()`` posting to an nginx sink like the daemon's, with
``batch-lines(100)``, ``batch-timeout(50)`` (the daemon's ``maxEvents: 100,
maxWaitMs: 50``), ``workers(1)`` and ``disk-buffer(reliable(yes))``: every
message is written to the disk buffer before it counts as taken, which is
the durability of the daemon's ``synchronous: normal`` (survives a crash of
the process, not a power loss). The log path has ``flags(flow-control)`` so
that syslog-ng slows the sender down instead of dropping messages when its
buffers fill up; nothing is dropped, and the run checks that with the
sink's count.

Each request body is the batch's messages joined by ``\\n`` (``body("${MESSAGE}")``
and ``delimiter("\\n")``), so the sink counts ``round(content_length / (E + 1))``
events per request, E being the byte length of one event line: exact for any
batch of fewer than E events. libcurl would send ``Expect: 100-continue`` and
wait before sending a body; the empty ``Expect:`` header turns that off so
syslog-ng is not slowed by a round trip the daemon does not make.

Throughput is measured like the daemon's scenario 1: events/s from the first
byte sent until the sink's access log has all N (the ``$msec`` of the request
that completed them); CPU is that of syslog-ng's process tree over the same
window, and memory the peak of its summed RSS sampled every ~100 ms.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import (
    BenchError,
    CpuWindow,
    TreeSampler,
    free_port,
    stop_process,
    wait_for_port,
)
from bench.sinks import Sink, wait_for_events

CONFIG = """@version: {version}
options {{
  stats-freq(0);
  threaded(yes);
  log-msg-size(65536);
  time-reopen(1);
}};

source s_bench {{
  network(
    ip("127.0.0.1") port({port}) transport("tcp")
    flags(no-parse)
    max-connections(4) log-iw-size(40000) log-fetch-limit(1000)
  );
}};

destination d_sink {{
  http(
    url("{url}")
    method("POST")
    headers("Content-Type: application/x-ndjson" "Expect:")
    body("${{MESSAGE}}")
    delimiter("\\n")
    batch-lines(100)
    batch-timeout(50)
    workers(1)
    timeout(10)
    persist-name("bench_sink")
    disk-buffer(
      reliable(yes)
      disk-buf-size({disk_bytes})
      mem-buf-size({memory_bytes})
      dir("{disk_dir}")
    )
  );
}};

log {{ source(s_bench); destination(d_sink); flags(flow-control); }};
"""

MEMORY_BUFFER_BYTES = 16 * 1024 * 1024


def binary() -> str | None:
    """syslog-ng's path, or None when it is not installed."""
    found = shutil.which("syslog-ng")
    return found or ("/usr/sbin/syslog-ng" if Path("/usr/sbin/syslog-ng").exists() else None)


def version() -> str | None:
    """syslog-ng's version (``3.38.1``), or None when it is not installed or does not answer."""
    path = binary()
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"syslog-ng \d+ \((\d+\.\d+(?:\.\d+)?)\)", out)
    return match.group(1) if match else None


def http_module_present() -> bool:
    """Whether the http() destination module (``syslog-ng-mod-http``) is installed."""
    patterns = ("syslog-ng/*/libhttp.so", "syslog-ng/libhttp.so", "*/syslog-ng/libhttp.so")
    return any(any(Path("/usr/lib").glob(pattern)) for pattern in patterns)


def unavailable_reason() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if binary() is None:
        return "syslog-ng is not installed (Debian: syslog-ng-core syslog-ng-mod-http)"
    if not http_module_present():
        return "syslog-ng's http() module is not installed (Debian: syslog-ng-mod-http)"
    if version() is None:
        return "syslog-ng --version did not answer"
    return None


@dataclass
class SyslogNg:
    """One syslog-ng process in the foreground, everything under ``work``."""

    work: Path
    sink_url: str
    disk_bytes: int
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """syslog-ng's own messages (stderr)."""
        return self.work / "syslog-ng.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines syslog-ng wrote, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> SyslogNg:
        """Write the configuration, check its syntax, start, wait for the source port."""
        path = binary()
        found_version = version()
        if path is None or found_version is None:
            raise BenchError("syslog-ng is not installed")
        self.work.mkdir(parents=True, exist_ok=True)
        disk_dir = self.work / "disk-buffer"
        disk_dir.mkdir(exist_ok=True)
        self.port = free_port()
        conf = self.work / "syslog-ng.conf"
        conf.write_text(
            CONFIG.format(
                version=".".join(found_version.split(".")[:2]),
                port=self.port,
                url=self.sink_url,
                disk_bytes=self.disk_bytes,
                memory_bytes=MEMORY_BUFFER_BYTES,
                disk_dir=disk_dir,
            )
        )
        argv = [
            path,
            "-F",
            "-f",
            str(conf),
            "--persist-file",
            str(self.work / "syslog-ng.persist"),
            "--pidfile",
            str(self.work / "syslog-ng.pid"),
            "--control",
            str(self.work / "syslog-ng.ctl"),
            "--stderr",
        ]
        check = subprocess.run(
            [*argv, "--syntax-only"], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise BenchError(f"syslog-ng refused its configuration: {check.stderr.strip()}")
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, 30, "syslog-ng", self.process)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{exc}:\n{self.log_tail()}") from None
        return self

    @property
    def pid(self) -> int:
        """syslog-ng's process id."""
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM and wait (then kill)."""
        stop_process(self.process, signal.SIGTERM, timeout=30)
        self.process = None


async def send_lines(port: int, data: bytes) -> None:
    """Write ``data`` to syslog-ng's TCP source and close once it has all been taken."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def run(
    work: Path, warmup: bytes, lines: bytes, events: int, line_bytes: int
) -> dict[str, Any]:
    """Run the workload through syslog-ng; return its figures (raises BenchError on failure).

    ``warmup`` (1000 lines) goes through first and is waited for, untimed; then
    ``lines`` (``events`` lines of ``line_bytes`` bytes plus ``\\n``) is timed.
    """
    sink = Sink(work / "sink")
    peer = SyslogNg(work / "syslog-ng", "", disk_bytes=max(1 << 30, 3 * len(lines)))
    try:
        sink.start()
        sink.log.set_per_event(line_bytes + 1)
        peer.sink_url = sink.url
        peer.start()
        warm_events = warmup.count(b"\n")
        await send_lines(peer.port, warmup)
        await wait_for_events(sink, warm_events, 60, "syslog-ng warm-up", [peer.process])
        cpu = CpuWindow(peer.pid)
        with TreeSampler(peer.pid) as rss:
            cpu.start()
            started_mono = time.monotonic()
            started = time.time()
            await send_lines(peer.port, lines)
            finished = await wait_for_events(
                sink, warm_events + events, max(120.0, events / 2000), "syslog-ng", [peer.process]
            )
            cpu.stop()
            peak = rss.peak(since=started_mono)
            peak_pss = rss.peak_pss(since=started_mono)
        elapsed = max(finished - started, 1e-3)
        sink.log.poll()
        if sink.log.events != warm_events + events:
            raise BenchError(
                f"syslog-ng: the sink counted {sink.log.events - warm_events:,} events for"
                f" {events:,} sent (duplicates or a different body framing)"
            )
        return {
            "scenario": "syslog-ng",
            "version": version(),
            "events": events,
            "events_per_second": round(events / elapsed),
            "seconds": round(elapsed, 3),
            "cpu_seconds_per_100k": round(cpu.seconds / events * 100_000, 3),
            "peak_rss_mb": round(peak / 2**20, 1),
            "peak_pss_mb": round(peak_pss / 2**20, 1),
            "sink": sink.kind,
            "generator": "one TCP connection, raw NDJSON lines",
        }
    except BenchError as exc:
        raise BenchError(f"{exc}\nsyslog-ng's log:\n{peer.log_tail()}") from None
    finally:
        peer.stop()
        sink.stop()
