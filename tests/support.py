"""Test support: a scripted receiver, a polling helper, and the daemon as a real process.

Everything here is real: receivers are aiohttp servers on loopback, the daemon
is the installed ``audit-forwarder`` console script in a subprocess, and
waiting is done by polling a condition against a deadline, never by sleeping
a fixed time and hoping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from forwarder.buffer.batches import Batch, StoredEvent, id_prefix

CLI = str(Path(sys.executable).with_name("audit-forwarder"))


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)


@dataclass
class Received:
    """One request as a receiver saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Reply:
    """One scripted answer: status, headers, body, and an optional delay first."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    delay: float = 0.0


class ScriptedReceiver:
    """A real aiohttp receiver that records every request and answers from a script.

    Answers are taken from ``script`` in order; when it is empty, ``default``
    is used. Requests answered with a non-2xx are recorded in ``attempts`` but
    not in ``delivered``.
    """

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.attempts: list[Received] = []
        self.delivered: list[Received] = []
        self.port = 0
        # Answers computed from the request (e.g. 413 for big batches), instead of the script.
        self.decide: Callable[[web.Request], Awaitable[Reply]] | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> ScriptedReceiver:
        """Listen on loopback; on the same port again after :meth:`stop`."""
        runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def respond(self, *replies: Reply) -> None:
        """Queue answers for the next requests."""
        self.script.extend(replies)

    @property
    def url(self) -> str:
        """Base URL of the receiver."""
        return f"http://127.0.0.1:{self.port}/"

    def events(self) -> list[Any]:
        """Every delivered JSON body, parsed."""
        return [request.json() for request in self.delivered]

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request and answer from the script."""
        received = Received(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        self.attempts.append(received)
        if self.decide is not None:
            reply = await self.decide(request)
        else:
            reply = self.script.popleft() if self.script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if 200 <= reply.status < 300:
            self.delivered.append(received)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def app(self) -> web.Application:
        """The aiohttp application to serve."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def forwarder_config(url: str, **options: Any) -> dict[str, Any]:
    """One ``auditLogForwarders`` entry pointing at ``url`` with fast retries."""
    entry: dict[str, Any] = {
        "kind": "webhook",
        "uri": url,
        "retry": {"initialBackoffSeconds": 0.05, "maxBackoffSeconds": 0.2},
    }
    entry.update(options)
    return entry


def daemon_config(
    tmp_path: Path, forwarders: list[dict[str, Any]], **sections: Any
) -> dict[str, Any]:
    """A complete configuration on free ports with the buffer under ``tmp_path``."""
    config: dict[str, Any] = {
        "ingest": {"host": "127.0.0.1", "port": 0, "unixSocket": str(tmp_path / "ingest.sock")},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "debug", "format": "json"},
        "shutdownGraceSeconds": 5,
        "auditLogForwarders": forwarders,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class DaemonProcess:
    """The real ``audit-forwarder run`` in a subprocess, its output in a file."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.config = config
        self.env = {**os.environ, **(env or {})}
        # Run in the child before exec, e.g. to start it under a low open-files limit.
        self.preexec_fn: Callable[[], None] | None = None
        self.log_path = tmp_path / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ingest_url = ""
        self.metrics_url = ""
        self.socket_path: str | None = config["ingest"].get("unixSocket")
        self._log_offset = 0

    async def start(self, wait_ready: bool = True) -> DaemonProcess:
        """Start the process and wait until ``/readyz`` answers 200."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [CLI, "run", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=self.preexec_fn,
            )
        probes = await wait_for(
            lambda: self._log_line("probes_listening"), timeout=20, message="probes_listening"
        )
        self.metrics_url = f"http://{probes['metrics'][0]}"
        if wait_ready:
            await self.wait_started()
        return self

    async def wait_started(self) -> None:
        """Wait for the daemon_started line (ingest addresses) and /readyz 200."""
        started = await wait_for(
            lambda: self._log_line("daemon_started"), timeout=20, message="daemon_started"
        )
        tcp = [a for a in started["ingest"] if not a.startswith("unix:")]
        self.ingest_url = f"http://{tcp[0]}" if tcp else ""
        await wait_for(self._ready, timeout=20, message="/readyz 200")

    def _log_line(self, event: str) -> dict[str, Any] | None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.output()}")
        for entry in self.log_entries():
            if entry.get("event") == event:
                return entry
        return None

    async def _ready(self) -> bool:
        return await self.probe("/readyz") == 200

    def output(self) -> str:
        """Everything the process printed since its latest start."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self._log_offset :].decode("utf-8", "replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines printed since the latest start."""
        entries = []
        for line in self.output().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the process."""
        assert self.process is not None
        self.process.send_signal(signum)

    async def exit_code(self, timeout: float = 20.0) -> int:
        """Wait (without blocking the event loop) for the process to exit."""
        process = self.process
        assert process is not None
        await wait_for(lambda: process.poll() is not None, timeout, message="daemon exit")
        return int(process.returncode)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.exit_code(timeout)

    async def probe(self, path: str) -> int:
        """GET a probe path on the metrics listener; 0 if nothing answers."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.metrics_url}{path}") as response,
            ):
                return response.status
        except aiohttp.ClientError:
            return 0

    def stop(self) -> None:
        """Make sure the process is gone (fixture teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


async def post_events(
    url: str,
    body: bytes | str,
    content_type: str = "application/json",
    *,
    socket_path: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST to ``/v1/events`` over TCP (``url``) or a Unix socket; return status, JSON, headers."""
    connector = aiohttp.UnixConnector(path=socket_path) if socket_path else None
    base = "http://localhost" if socket_path else url
    data = body.encode() if isinstance(body, str) else body
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"{base}/v1/events",
            data=data,
            headers={"Content-Type": content_type, **(headers or {})},
        ) as response,
    ):
        payload = await response.json(content_type=None)
        return response.status, payload, dict(response.headers)


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run the real console script without blocking the loop the receivers run on."""
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def stored_events(path: Path) -> list[StoredEvent]:
    """Every event in the buffer file, decoded from its batches on a separate connection."""
    conn = sqlite3.connect(path)
    try:
        instance = conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        prefix = id_prefix(int(instance[0]) if instance else 0)
        rows = conn.execute(
            "SELECT first_seq, last_seq, received_at, only_forwarder, event_types, event_ids,"
            " lengths, bodies FROM batches ORDER BY first_seq"
        ).fetchall()
    finally:
        conn.close()
    events: list[StoredEvent] = []
    for row in rows:
        events.extend(Batch(row, prefix).events(0, row[1] - row[0] + 1))
    return events


async def read_all(
    buffer: Any, forwarder: str, after_seq: int = 0, limit: int = 100_000
) -> list[StoredEvent]:
    """Every event for ``forwarder`` after ``after_seq`` (up to ``limit``), over as many
    ``read_after`` calls as it takes: one call may return fewer than it was asked for."""
    events: list[StoredEvent] = []
    while len(events) < limit:
        more = await buffer.read_after(forwarder, after_seq, limit - len(events))
        if not more:
            break
        events.extend(more)
        after_seq = more[-1].seq
    return events


def free_port() -> int:
    """A free loopback port for a server that cannot be told to pick its own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
