"""End to end: the real daemon under connection floods, slowloris, and a rival on its socket.

Every flood is real sockets on loopback (TCP or the Unix socket) against the
real ``audit-forwarder run`` process; each test opens a bounded number of
them, closes every one itself, and finishes in well under twenty seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    DaemonProcess,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    wait_for,
)

FLOOD = 2000
Spawn = Callable[[Path, dict[str, Any]], DaemonProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Daemons with their files in a directory of their own; killed at teardown if running."""
    created: list[DaemonProcess] = []

    def make(directory: Path, config: dict[str, Any]) -> DaemonProcess:
        directory.mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(directory, config)
        created.append(daemon)
        return daemon

    yield make
    for daemon in created:
        daemon.stop()


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """Room in this test process for a flood's worth of sockets; the limit restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-files limit ({hard}) is below {needed}")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def config_for(directory: Path, receiver: ScriptedReceiver, **ingest: Any) -> dict[str, Any]:
    """A daemon configuration under ``directory`` delivering in batches to ``receiver``."""
    config = daemon_config(directory, [forwarder_config(receiver.url, batch={"maxEvents": 500})])
    config["ingest"].update(ingest)
    config["logging"]["level"] = "info"
    return config


async def sample(daemon: DaemonProcess, name: str, **labels: str) -> float | None:
    """One sample of the daemon's /metrics, or None when it is not exposed."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def tcp_address(daemon: DaemonProcess) -> tuple[str, int]:
    """The daemon's ingest host and port."""
    host, port = daemon.ingest_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def open_tcp(address: tuple[str, int], count: int) -> AsyncIterator[list[socket.socket]]:
    """``count`` connected TCP sockets that send nothing; all closed on exit."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sockets.append(sock)
        await asyncio.wait_for(
            asyncio.gather(*(loop.sock_connect(sock, address) for sock in sockets)), 15
        )
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def read_to_end(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """What the server sends until it closes (a reset ends it too)."""
    loop = asyncio.get_running_loop()
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout):
            received += chunk
    return received


def event_request(event_id: str) -> bytes:
    """A complete POST /v1/events of one event, closing the connection after the answer."""
    body = json.dumps({"id": event_id, "event_type": "flood.test"}).encode()
    return (
        b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def test_2000_idle_connections_under_a_1024_fd_limit_leave_ingest_and_probes_working(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn, many_sockets: None
) -> None:
    """Started at soft 1024/hard 4096, the daemon runs at 4096, holds 2,000 idle connections
    and still answers 202 and /readyz; after they close, ingest still works."""
    daemon = spawn(tmp_path, config_for(tmp_path, receiver))
    daemon.preexec_fn = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))
    await daemon.start()
    assert daemon.process is not None
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
    assert any(
        line.split()[3:5] == ["4096", "4096"]
        for line in limits.splitlines()
        if line.startswith("Max open files")
    )

    async with open_tcp(tcp_address(daemon), FLOOD):

        async def flood_held() -> bool:
            return (await sample(daemon, "audit_forwarder_ingest_connections") or 0) >= FLOOD

        await wait_for(flood_held, timeout=10, message="the daemon holding every idle connection")
        status, payload, _ = await post_events(daemon.ingest_url, '{"during": "flood"}')
        assert (status, payload["accepted"]) == (202, 1)
        assert await daemon.probe("/readyz") == 200

    status, _, _ = await post_events(daemon.ingest_url, '{"after": "flood"}')
    assert status == 202
    await wait_for(lambda: len(receiver.delivered) >= 1, message="the events delivered")
    assert await daemon.terminate() == 0


async def test_a_burst_of_2000_connections_on_the_unix_socket_gets_every_answer(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn, many_sockets: None
) -> None:
    """2,000 connects in one go, one event each, with no connection limit set: every one is
    answered 202 and every event is delivered."""
    daemon = spawn(tmp_path, config_for(tmp_path, receiver))
    await daemon.start()
    assert daemon.socket_path is not None
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    connect_errors: list[int] = []
    try:
        # No await in this loop: the burst is faster than any accept loop.
        for _ in range(FLOOD):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            sockets.append(sock)
            if error := sock.connect_ex(daemon.socket_path):
                connect_errors.append(error)
        assert connect_errors == []

        async def post_one(sock: socket.socket, event_id: str) -> bytes:
            await loop.sock_sendall(sock, event_request(event_id))
            return await read_to_end(sock)

        ids = [f"burst-{number}" for number in range(FLOOD)]
        answers = await asyncio.gather(*(post_one(s, i) for s, i in zip(sockets, ids, strict=True)))
    finally:
        for sock in sockets:
            sock.close()

    assert Counter(status_of(answer) for answer in answers) == {202: FLOOD}
    await wait_for(lambda: set(ids) <= delivered_ids(receiver), message="every 202 event delivered")
    assert await daemon.terminate() == 0


async def test_connections_over_maxconnections_on_the_unix_socket_get_a_clean_503(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn, many_sockets: None
) -> None:
    """With ``maxConnections: 200`` and 200 connections inside a request, each of 1,800 more
    is answered a clean 503 (counted as over_limit), and the 200 then finish with 202."""
    limit = 200
    daemon = spawn(tmp_path, config_for(tmp_path, receiver, maxConnections=limit))
    await daemon.start()
    assert daemon.socket_path is not None
    loop = asyncio.get_running_loop()
    ids = [f"held-{number}" for number in range(limit)]
    requests = [event_request(event_id) for event_id in ids]
    holders: list[socket.socket] = []
    latecomers: list[socket.socket] = []
    try:
        # The holders send all but the last byte of their request: each is inside a request,
        # so the daemon may neither shed them nor admit anyone else.
        for request in requests:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            holders.append(sock)
            sock.connect(daemon.socket_path)
            sock.sendall(request[:-1])
            sock.setblocking(False)

        async def all_held() -> bool:
            return (await sample(daemon, "audit_forwarder_ingest_connections") or 0) >= limit

        await wait_for(all_held, timeout=10, message="the daemon holding every holder")
        for _ in range(FLOOD - limit):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            latecomers.append(sock)
            assert sock.connect_ex(daemon.socket_path) == 0
        refusals = await asyncio.gather(*(read_to_end(sock) for sock in latecomers))
        for answer in refusals:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert status_of(answer) == 503, answer[:200]
            assert b"Connection: close" in head
            assert json.loads(body)["error"] == "too_many_connections"

        async def finish(sock: socket.socket, request: bytes) -> bytes:
            await loop.sock_sendall(sock, request[-1:])
            return await read_to_end(sock)

        answers = await asyncio.gather(
            *(finish(s, r) for s, r in zip(holders, requests, strict=True))
        )
    finally:
        for sock in holders + latecomers:
            sock.close()

    assert Counter(status_of(answer) for answer in answers) == {202: limit}
    await wait_for(lambda: set(ids) <= delivered_ids(receiver), message="every 202 event delivered")
    counted = await sample(
        daemon, "audit_forwarder_ingest_connections_closed_total", reason="over_limit"
    )
    assert counted == FLOOD - limit
    assert await daemon.terminate() == 0


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer, 0 when there is none."""
    head = answer.partition(b"\r\n\r\n")[0]
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def delivered_ids(receiver: ScriptedReceiver) -> set[str]:
    """Every event id the receiver has been delivered."""
    return {event["id"] for request in receiver.delivered for event in request.json()}


async def test_slowloris_connections_are_cut_at_the_deadline_while_others_are_served(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn
) -> None:
    """200 connections dripping a header byte at a time are closed after requestTimeoutSeconds
    (a late body gets 408), while a normal client is answered 202 at once."""
    daemon = spawn(tmp_path, config_for(tmp_path, receiver, requestTimeoutSeconds=2))
    await daemon.start()
    loop = asyncio.get_running_loop()
    closed_after: dict[int, float] = {}

    async with open_tcp(tcp_address(daemon), 200) as slow:
        opened = loop.time()
        head = b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"y" * 100

        async def drip(index: int, sock: socket.socket) -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    await loop.sock_sendall(sock, bytes([byte]))
                    await asyncio.sleep(0.25)  # the attacker's pace

        async def watch(index: int, sock: socket.socket) -> None:
            await read_to_end(sock, timeout=12)
            closed_after[index] = loop.time() - opened

        tasks = [asyncio.create_task(drip(i, s)) for i, s in enumerate(slow)]
        watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(slow)]
        try:
            started = loop.time()
            status, _, _ = await post_events(daemon.ingest_url, '{"normal": "client"}')
            assert status == 202
            assert loop.time() - started < 1.5

            late_body = socket.create_connection(tcp_address(daemon))
            late_body.setblocking(False)
            try:
                await loop.sock_sendall(
                    late_body,
                    b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
                )
                answer = await read_to_end(late_body)
            finally:
                late_body.close()
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"

            await wait_for(lambda: len(closed_after) == 200, timeout=10, message="slow ones cut")
        finally:
            for task in tasks + watchers:
                task.cancel()
            await asyncio.gather(*tasks, *watchers, return_exceptions=True)

    assert min(closed_after.values()) >= 1.5
    assert max(closed_after.values()) < 6
    timeouts = await sample(
        daemon, "audit_forwarder_ingest_connections_closed_total", reason="timeout"
    )
    assert timeouts is not None
    assert timeouts >= 201
    assert await daemon.terminate() == 0


async def test_a_second_daemon_on_the_same_socket_refuses_and_leaves_the_first_serving(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn
) -> None:
    """A second daemon (its own buffer, the same socket path) exits 1 naming the path; the
    first daemon's socket file is untouched and its clients still get 202."""
    shared = tmp_path / "shared.sock"
    first = spawn(
        tmp_path / "first", config_for(tmp_path / "first", receiver, unixSocket=str(shared))
    )
    await first.start()
    inode = shared.stat().st_ino

    second_dir = tmp_path / "second"
    second = spawn(second_dir, config_for(second_dir, receiver, unixSocket=str(shared)))
    code, _, err = await run_cli("run", "--config", str(second.config_path))
    assert code == 1
    assert f"{shared} is in use by another process" in err
    assert len(err.strip().splitlines()) == 1

    assert shared.stat().st_ino == inode
    status, payload, _ = await post_events("", '{"still": "served"}', socket_path=str(shared))
    assert (status, payload["accepted"]) == (202, 1)
    assert await first.terminate() == 0
    assert not shared.exists()


async def test_a_socket_left_by_kill_9_is_replaced_on_the_next_start(
    tmp_path: Path, receiver: ScriptedReceiver, spawn: Spawn
) -> None:
    """After SIGKILL the socket file stays behind; the restarted daemon replaces it and serves."""
    daemon = spawn(tmp_path, config_for(tmp_path, receiver))
    await daemon.start()
    assert daemon.socket_path is not None
    daemon.kill()
    assert Path(daemon.socket_path).exists()

    await daemon.start()
    status, _, _ = await post_events("", '{"after": "restart"}', socket_path=daemon.socket_path)
    assert status == 202
    assert any(entry["event"] == "stale_socket_removed" for entry in daemon.log_entries())
    assert await daemon.terminate() == 0
