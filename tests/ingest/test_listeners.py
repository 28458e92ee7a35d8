"""Listeners: serving on the Unix socket, the open-files limit, the backlog, the limits' config.

Sockets are real files in ``tmp_path`` and real listeners; the open-files
limit is checked in a child process started under ``soft 1024, hard 4096``,
so the test process keeps its own limit.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from forwarder.ingest.listeners import (
    MAX_DEFAULT_CONNECTIONS,
    MIN_DEFAULT_CONNECTIONS,
    REQUESTED_BACKLOG,
    SOMAXCONN_PATH,
    Listeners,
    default_max_connections,
    listen_backlog,
)
from forwarder.ingest.unix_socket import ListenerError
from tests.config.helpers import ONE_FORWARDER, load, problems

MakeListeners = Callable[[], Listeners]


async def hello(request: web.Request) -> web.Response:
    """Answer 200 with a fixed body."""
    return web.Response(text="hello")


def hello_app() -> web.Application:
    """An app with one route."""
    app = web.Application()
    app.router.add_get("/", hello)
    return app


@pytest.fixture
async def make_listeners() -> AsyncIterator[MakeListeners]:
    """Listeners groups that are closed at teardown."""
    made: list[Listeners] = []

    def make() -> Listeners:
        listeners = Listeners(
            "test", max_connections=10, idle_timeout_seconds=5.0, request_timeout_seconds=5.0
        )
        made.append(listeners)
        return listeners

    yield make
    for listeners in made:
        await listeners.close()


async def get_over_socket(path: Path) -> str:
    """GET / over the Unix socket at ``path``; the body."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
        session.get("http://localhost/") as response,
    ):
        return await response.text()


def leave_stale_socket(path: Path) -> None:
    """A socket file whose process is gone: bound, listened on, closed, never unlinked."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.listen()
    dead.close()


async def test_a_stale_socket_file_is_replaced_and_served(
    tmp_path: Path, make_listeners: MakeListeners
) -> None:
    """A socket file nobody listens on (ECONNREFUSED) is replaced; clients reach the new one."""
    path = tmp_path / "ingest.sock"
    leave_stale_socket(path)
    listeners = make_listeners()
    with capture_logs() as logs:
        await listeners.serve_unix(hello_app(), path)
    removed = [entry for entry in logs if entry["event"] == "stale_socket_removed"]
    assert [entry["path"] for entry in removed] == [str(path)]
    assert path.stat().st_mode & 0o777 == 0o660
    assert await get_over_socket(path) == "hello"
    assert listeners.addresses == [f"unix:{path}"]


async def test_a_live_socket_is_refused_and_left_serving(
    tmp_path: Path, make_listeners: MakeListeners
) -> None:
    """A second group on a served path fails naming it; the first keeps its file and clients."""
    path = tmp_path / "ingest.sock"
    first = make_listeners()
    await first.serve_unix(hello_app(), path)
    inode = path.stat().st_ino

    second = make_listeners()
    with pytest.raises(ListenerError, match=f"{path} is in use by another process"):
        await second.serve_unix(hello_app(), path)
    await second.close()

    assert path.stat().st_ino == inode
    assert await get_over_socket(path) == "hello"


async def test_close_removes_the_socket_it_bound_and_only_that(
    tmp_path: Path, make_listeners: MakeListeners
) -> None:
    """Stop removes our socket file, but not one that replaced it meanwhile."""
    ours = tmp_path / "ours.sock"
    listeners = make_listeners()
    await listeners.serve_unix(hello_app(), ours)
    await listeners.close()
    assert not ours.exists()

    replaced = tmp_path / "replaced.sock"
    listeners = make_listeners()
    await listeners.serve_unix(hello_app(), replaced)
    replaced.unlink()
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        successor.bind(str(replaced))
        inode = replaced.stat().st_ino
        await listeners.close()
        assert replaced.stat().st_ino == inode
    finally:
        successor.close()


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    """Started with soft 1024 and hard 4096, the process runs with 4096 after the call."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("this machine's hard open-files limit is below 4096")
    code = (
        "import resource\n"
        "from forwarder.ingest.listeners import raise_open_files_limit\n"
        "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)),
        check=True,
    )
    assert result.stdout.splitlines()[-1].split() == ["4096", "4096", "4096"]


def test_the_backlog_is_ours_capped_by_somaxconn(tmp_path: Path) -> None:
    """4096 is asked for; a smaller net.core.somaxconn wins; without /proc, 4096."""
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    assert listen_backlog(somaxconn) == 128
    somaxconn.write_text("65535\n")
    assert listen_backlog(somaxconn) == REQUESTED_BACKLOG
    assert listen_backlog(tmp_path / "missing") == REQUESTED_BACKLOG


def test_the_default_cap_leaves_descriptors_for_everything_else() -> None:
    """At 1024 open files the cap is 608; at 4096, 3680; bounded both ways."""
    assert default_max_connections(1024) == 608
    assert default_max_connections(4096) == 3680
    assert default_max_connections(100) == MIN_DEFAULT_CONNECTIONS
    assert default_max_connections(1 << 20) == MAX_DEFAULT_CONNECTIONS


async def test_a_burst_of_connections_waits_in_the_backlog_instead_of_failing(
    tmp_path: Path, make_listeners: MakeListeners
) -> None:
    """2,000 connects made faster than the loop accepts all succeed (no EAGAIN) on the socket."""
    if int(SOMAXCONN_PATH.read_text()) < 2048:
        pytest.skip("net.core.somaxconn is below 2048 on this machine")
    path = tmp_path / "burst.sock"
    listeners = make_listeners()
    await listeners.serve_unix(hello_app(), path)
    failures: list[int] = []
    clients: list[socket.socket] = []
    try:
        # No await in this loop: the listener cannot accept until it ends.
        for _ in range(2000):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            result = client.connect_ex(str(path))
            if result:
                failures.append(result)
    finally:
        for client in clients:
            client.close()
    assert failures == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("maxConnections: 0", "ingest.maxConnections: input should be greater than or equal to 1"),
        ("maxConnections: lots", "ingest.maxConnections: input should be a valid integer"),
        ("idleTimeoutSeconds: 0", "ingest.idleTimeoutSeconds: input should be greater than 0"),
        ("requestTimeoutSeconds: .inf", "ingest.requestTimeoutSeconds: input should be a finite"),
        (
            "requestTimeoutSeconds: 7200",
            "ingest.requestTimeoutSeconds: input should be less than or equal to 3600",
        ),
    ],
)
def test_connection_limits_are_validated_with_their_yaml_path(
    tmp_path: Path, setting: str, message: str
) -> None:
    """Bad connection limits are refused, each named by its YAML path."""
    found = problems(tmp_path, f"ingest: {{{setting}}}\n{ONE_FORWARDER}")
    assert any(problem.startswith(message) for problem in found), found


def test_connection_limits_default_to_the_documented_values(tmp_path: Path) -> None:
    """Without settings: cap from the open-files limit, 60 s idle, 15 s per request."""
    ingest = load(tmp_path, ONE_FORWARDER).ingest
    assert ingest.max_connections is None
    assert (ingest.idle_timeout_seconds, ingest.request_timeout_seconds) == (60.0, 15.0)
