"""The CLI's admin client gets past the admin API's web-page checks, over TCP and the socket.

The client is the real ``AdminClient`` and the server the real admin app on
loopback TCP or a real Unix socket, over a buffer holding three dead letters.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from aiohttp import web

from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import IngestConfig, Settings
from forwarder.ops.client import AdminClient
from tests.ops.conftest import AppFactory


def client_for(**ingest: Any) -> AdminClient:
    """An AdminClient configured like a daemon with these ingest settings."""
    settings = Settings(
        ingest=IngestConfig(**ingest),
        audit_log_forwarders=[{"kind": "webhook", "uri": "https://siem.example/in"}],
    )
    return AdminClient(settings)


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
