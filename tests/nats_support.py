"""Real NATS servers for the tests: one JetStream server, or a three-node JetStream cluster.

Each server is the Debian ``nats-server`` binary started on free loopback
ports with its JetStream store in a temporary directory, and is ready when
its monitoring port's ``/healthz`` answers 200 (polled with a deadline, never
a fixed sleep). Streams are created and read with nats-py's JetStream
manager, so the tests see exactly what a consumer of the stream would.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from tests.support import free_port, wait_for

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
needs_nats_server = pytest.mark.skipif(
    not Path(NATS_SERVER).exists(), reason="nats-server is not installed (make test-tools)"
)


@dataclass
class NatsServer:
    """One ``nats-server -js`` process on loopback."""

    workdir: Path
    name: str = "n1"
    extra_args: list[str] = field(default_factory=list)
    config_text: str | None = None
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        """Start the process (not waiting: see :meth:`wait_healthy`)."""
        store = self.workdir / f"{self.name}-js"
        store.mkdir(parents=True, exist_ok=True)
        args = [NATS_SERVER, "-js", "-sd", str(store), "-a", "127.0.0.1"]
        args += ["-p", str(self.port), "-m", str(self.monitor_port), "-n", self.name]
        if self.config_text is not None:
            config = self.workdir / f"{self.name}.conf"
            config.write_text(self.config_text)
            args += ["-c", str(config)]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [*args, *self.extra_args], stdout=out, stderr=subprocess.STDOUT
            )

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        """Poll ``/healthz`` until it answers 200 (JetStream included)."""

        async def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"nats-server exited:\n{self.log_path.read_text()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{self.monitor_port}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, timeout=timeout, interval=0.05, message=f"{self.name} /healthz")

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to hand anything over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Make sure the process is gone."""
        self.kill()


# A free port can be taken by another process between our probe and the server's bind.
BIND_FAILED = "address already in use"
START_ATTEMPTS = 3


async def start_server(workdir: Path, **options: Any) -> NatsServer:
    """A single JetStream server, healthy (on fresh ports again if one was taken meanwhile)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = NatsServer(workdir, **options)
        server.start()
        try:
            await server.wait_healthy()
        except AssertionError as exc:
            server.stop()
            if BIND_FAILED not in str(exc) or attempt == START_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable")


async def start_cluster(workdir: Path, size: int = 3) -> list[NatsServer]:
    """A JetStream cluster of ``size`` nodes on loopback, every node healthy.

    If a node cannot start, every node is stopped (none is left running); when a
    port was taken meanwhile, the whole cluster starts again on fresh ports.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        servers = [NatsServer(workdir, name=f"n{index + 1}") for index in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{s.cluster_port}" for s in servers)
        for server in servers:
            server.extra_args = [
                "--cluster_name",
                "audit",
                "--cluster",
                f"nats://127.0.0.1:{server.cluster_port}",
                "--routes",
                routes,
            ]
            server.start()
        try:
            for server in servers:
                await server.wait_healthy(timeout=40)
        except BaseException as exc:
            for server in servers:
                server.stop()
            if BIND_FAILED not in str(exc) or attempt == START_ATTEMPTS:
                raise
            continue
        return servers
    raise AssertionError("unreachable")


@asynccontextmanager
async def client(*urls: str, **options: Any) -> AsyncIterator[Client]:
    """A nats-py connection for the test's own checks."""
    options.setdefault("max_reconnect_attempts", 2)
    connection = await nats.connect(list(urls), **options)
    try:
        yield connection
    finally:
        await connection.close()


async def create_stream(
    url: str | list[str],
    name: str = "AUDIT",
    subjects: tuple[str, ...] = ("audit.>",),
    connect: dict[str, Any] | None = None,
    **config: Any,
) -> None:
    """Create a file-storage stream (retrying while a cluster is still forming)."""
    urls = [url] if isinstance(url, str) else url
    async with client(*urls, **(connect or {})) as connection:
        manager = connection.jetstream(timeout=10)
        stream = StreamConfig(
            name=name, subjects=list(subjects), storage=StorageType.FILE, **config
        )

        async def created() -> bool:
            try:
                await manager.add_stream(stream)
            except nats.errors.Error:
                return False
            return True

        await wait_for(created, timeout=30, interval=0.5, message=f"stream {name} created")


@dataclass(frozen=True)
class StoredMessage:
    """One message as the stream holds it."""

    seq: int
    subject: str
    msg_id: str | None
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def stream_count(urls: list[str], name: str = "AUDIT") -> int:
    """How many messages stream ``name`` holds (0 while it cannot be asked)."""
    try:
        async with client(*urls) as connection:
            info = await connection.jetstream(timeout=5).stream_info(name)
    except (nats.errors.Error, OSError):
        return 0
    return int(info.state.messages)


async def stream_messages(urls: list[str], name: str = "AUDIT") -> list[StoredMessage]:
    """Every message of stream ``name``, in stream order (read by sequence)."""
    async with client(*urls) as connection:
        manager = connection.jetstream(timeout=10)
        info = await manager.stream_info(name)
        found = []
        first, last = info.state.first_seq, info.state.last_seq
        for seq in range(first, last + 1) if info.state.messages else ():
            message = await manager.get_msg(name, seq)
            headers = message.headers or {}
            found.append(
                StoredMessage(
                    seq,
                    message.subject or "",
                    headers.get("Nats-Msg-Id"),
                    message.data or b"",
                    dict(headers),
                )
            )
        return found


def nats_forwarder(servers: list[str], **options: Any) -> dict[str, Any]:
    """One ``kind: nats`` forwarder entry with fast retries."""
    entry: dict[str, Any] = {
        "kind": "nats",
        "name": "bus",
        "servers": servers,
        "subject": "audit.{event_type}",
        "retry": {"initialBackoffSeconds": 0.05, "maxBackoffSeconds": 0.5},
        "timeoutSeconds": 2,
    }
    entry.update(options)
    return entry
