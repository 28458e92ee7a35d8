"""The CLI's admin client: past the admin API's web-page checks, and over TCP when the socket fails.

The client is the real ``AdminClient`` and the server the real admin app on
loopback TCP or a real Unix socket, over a buffer holding three dead letters.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import IngestConfig, Settings
from forwarder.ops.client import AdminClient, AdminRequestError, DaemonUnreachableError
from tests.ops.conftest import AppFactory


def client_settings(**ingest: Any) -> Settings:
    """Settings like a daemon's with these ingest settings."""
    return Settings(
        ingest=IngestConfig(**ingest),
        audit_log_forwarders=[{"kind": "webhook", "uri": "https://siem.example/in"}],
    )


def client_for(**ingest: Any) -> AdminClient:
    """An AdminClient configured like a daemon with these ingest settings."""
    return AdminClient(client_settings(**ingest))


async def exercise(client: AdminClient, buffer: EventBuffer) -> None:
    """Every kind of admin call the CLI makes answers as it should (raises otherwise)."""
    status = await client.request("GET", "/v1/forwarders")
    assert [f["name"] for f in status["forwarders"]] == ["siem", "archive"]
    # The test button sends no body: the client must still label it JSON.
    invocation = await client.request("POST", "/v1/forwarders/siem/test")
    assert invocation["forwarder"] == "siem"
    replayed = await client.request("POST", "/v1/dead-letters/replay", b'{"ids": ["e-1"]}')
    assert replayed == {"replayed": 1, "skipped_unknown_forwarder": 0}
    purged = await client.request("POST", "/v1/dead-letters/purge", b'{"all": true}')
    assert purged == {"purged": 2}
    assert (await buffer.query("SELECT count(*) FROM dead_letters"))[0][0] == 0
    accepted = await client.request("POST", "/v1/events", b'{"n": 1}\n', "application/x-ndjson")
    assert accepted["accepted"] == 1


async def test_the_cli_client_works_over_tcp(tcp_port: int, buffer: EventBuffer) -> None:
    """Status, test button, replay, purge and send all pass the checks over loopback TCP."""
    await exercise(client_for(host="127.0.0.1", port=tcp_port), buffer)


async def test_the_cli_client_works_over_the_unix_socket(
    unix_socket: str, buffer: EventBuffer
) -> None:
    """The same calls pass over the Unix socket, where the client's Host is a placeholder."""
    await exercise(client_for(port=None, unix_socket=unix_socket), buffer)


async def test_the_cli_client_works_when_the_ingest_host_is_a_loopback_name(
    admin_app: AppFactory, buffer: EventBuffer
) -> None:
    """A bind address given as this machine's name (loopback in /etc/hosts) still works."""
    name = socket.gethostname()
    address = socket.gethostbyname(name)
    if not ipaddress.ip_address(address).is_loopback or name.lower() == "localhost":
        pytest.skip(f"this host's name {name!r} does not resolve to loopback")
    runner = web.AppRunner(admin_app("http"), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address, 0).start()
        port = int(runner.addresses[0][1])
        await exercise(client_for(host=name, port=port), buffer)
    finally:
        await runner.cleanup()


def dead_socket(path: Path) -> str:
    """A socket file nothing listens on any more (left by a crash): connecting is refused."""
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))
    return str(path)


@pytest.mark.parametrize("socket_state", ["missing", "refused"])
async def test_an_unreachable_socket_falls_back_to_tcp_and_says_so_once(
    tcp_port: int, buffer: EventBuffer, tmp_path: Path, socket_state: str
) -> None:
    """A missing or refusing socket: every call goes over TCP, one notice for the command."""
    path = tmp_path / "ingest.sock"
    if socket_state == "refused":
        dead_socket(path)
    notices: list[str] = []
    client = AdminClient(client_settings(port=tcp_port, unix_socket=str(path)), notices.append)

    await exercise(client, buffer)

    reason = "No such file or directory" if socket_state == "missing" else "Connection refused"
    assert notices == [
        f"cannot reach the daemon at unix:{path} ({reason}); used TCP 127.0.0.1:{tcp_port} instead"
    ]


async def test_the_notice_also_comes_with_an_error_answer_over_tcp(
    tcp_port: int, tmp_path: Path
) -> None:
    """The daemon answered over TCP (here 404): the fallback is still reported."""
    notices: list[str] = []
    path = tmp_path / "missing.sock"
    client = AdminClient(client_settings(port=tcp_port, unix_socket=str(path)), notices.append)

    with pytest.raises(AdminRequestError) as refused:
        await client.request("GET", "/v1/forwarders/nope/deliveries")

    assert refused.value.reason == "unknown_forwarder"
    assert len(notices) == 1


async def test_when_neither_answers_one_error_names_both(tmp_path: Path) -> None:
    """No socket and nothing on the port: one DaemonUnreachableError naming both, no notice."""
    notices: list[str] = []
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    path = tmp_path / "missing.sock"
    client = AdminClient(client_settings(port=port, unix_socket=str(path)), notices.append)

    with pytest.raises(DaemonUnreachableError) as unreachable:
        await client.request("GET", "/v1/forwarders")

    assert str(unreachable.value) == (
        f"cannot reach the daemon at unix:{path} (No such file or directory) nor at"
        f" 127.0.0.1:{port} (is it running?): Connection refused"
    )
    assert notices == []


async def test_without_a_tcp_listener_there_is_no_fallback(tmp_path: Path) -> None:
    """port: null (or 0, picked at start): the socket's failure is the error, nothing else tried."""
    path = tmp_path / "missing.sock"
    for port in (None, 0):
        client = AdminClient(client_settings(port=port, unix_socket=str(path)))
        with pytest.raises(DaemonUnreachableError) as unreachable:
            await client.request("GET", "/v1/forwarders")
        assert str(unreachable.value) == (
            f"cannot reach the daemon at unix:{path} (is it running?): No such file or directory"
        )
