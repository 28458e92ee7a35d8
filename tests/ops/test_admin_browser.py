"""The admin API keeps web pages out: body type, Origin, Sec-Fetch-Site and Host checks.

Every request here goes to the real aiohttp app (on loopback TCP, or on a
real Unix socket) over a real buffer file holding three dead letters; the
proof that an attack failed is that the dead letters are all still there or
that no forwarder data came back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from forwarder.buffer.store import EventBuffer
from forwarder.ops.admin import is_loopback_host
from tests.ops.conftest import Client

MUTATING_CALLS = [
    ("/v1/dead-letters/purge", b'{"all": true}'),
    ("/v1/dead-letters/replay", b'{"forwarder": "siem"}'),
    ("/v1/forwarders/siem/test", b""),
]
READING_PATHS = ["/v1/forwarders", "/v1/dead-letters", "/v1/forwarders/siem/deliveries"]


async def dead_letter_count(buffer: EventBuffer) -> int:
    """How many dead letters the buffer holds."""
    return int((await buffer.query("SELECT count(*) FROM dead_letters"))[0][0])


async def raw_request(
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes
) -> tuple[int, Any]:
    """Send a hand-written HTTP/1.0 request (aiohttp always adds a Host); status and JSON."""
    reader, writer = streams
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(body)


async def test_cross_site_text_plain_purge_is_refused_and_purges_nothing(
    client: Client, buffer: EventBuffer
) -> None:
    """The issue's attack: an evil page's text/plain purge is a 403 and every dead letter stays."""
    response = await client.post(
        "/v1/dead-letters/purge",
        data=b'{"all": true}',
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    assert await dead_letter_count(buffer) == 3


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        None,
    ],
)
@pytest.mark.parametrize(("path", "body"), MUTATING_CALLS)
async def test_mutating_calls_without_a_json_body_type_are_415(
    client: Client, buffer: EventBuffer, path: str, body: bytes, content_type: str | None
) -> None:
    """Every admin POST needs Content-Type application/json; anything else changes nothing."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(
        path, data=body, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 415
    payload = await response.json()
    assert payload["error"] == "unsupported_media_type"
    assert "application/json" in payload["message"]
    assert await dead_letter_count(buffer) == 3


async def test_json_with_a_charset_parameter_is_accepted(
    client: Client, buffer: EventBuffer
) -> None:
    """The check is on the media type: application/json; charset=utf-8 purges."""
    response = await client.post(
        "/v1/dead-letters/purge",
        data=b'{"forwarder": "archive"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert await response.json() == {"purged": 1}
    assert await dead_letter_count(buffer) == 2


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8686",
        "evil.example",
        "127.0.0.1.nip.io:8686",
        "localhost.evil.example",
        "10.0.0.5:8686",
        "0.0.0.0:8686",
        "[127.0.0.1]:8686",
        "::1",
        "localhost:http",
        "",
    ],
)
@pytest.mark.parametrize("path", READING_PATHS)
async def test_rebinding_hosts_are_refused(client: Client, path: str, host: str) -> None:
    """DNS rebinding: a GET whose Host is not a loopback name gets a 403 and no data."""
    response = await client.get(path, headers={"Host": host})
    assert response.status == 403
    assert await response.json() == {
        "error": "forbidden",
        "message": "the admin API answers only requests addressed to localhost, 127.0.0.1 or [::1]",
    }


@pytest.mark.parametrize(
    "host", ["localhost", "LocalHost:8686", "127.0.0.1", "127.9.8.7:1", "[::1]", "[::1]:8686"]
)
async def test_loopback_hosts_are_answered(client: Client, host: str) -> None:
    """localhost, 127.0.0.0/8 and [::1], with or without a port, reach the admin API."""
    response = await client.get("/v1/forwarders", headers={"Host": host})
    assert response.status == 200
    assert [f["name"] for f in (await response.json())["forwarders"]] == ["siem", "archive"]


@pytest.mark.parametrize(
    ("authority", "loopback"),
    [
        ("localhost", True),
        ("localhost:1", True),
        ("127.255.0.1:65535", True),
        ("[::1]:8686", True),
        ("[0:0:0:0:0:0:0:1]", True),
        ("[localhost]", False),
        ("[::1", False),
        ("[::1]8686", False),
        ("localhost:", False),
        ("localhost:８６", False),
        ("localhost.", False),
        ("128.0.0.1", False),
        ("127.1", False),
    ],
)
def test_is_loopback_host(authority: str, loopback: bool) -> None:
    """The Host parser takes only well-formed loopback names and numeric ports."""
    assert is_loopback_host(authority) is loopback


async def test_a_tcp_request_without_host_is_refused(tcp_port: int) -> None:
    """Over TCP a Host is required: a request that names no host is not known to be local."""
    streams = await asyncio.open_connection("127.0.0.1", tcp_port)
    status, payload = await raw_request(streams, b"GET /v1/forwarders HTTP/1.0\r\n\r\n")
    assert status == 403
    assert payload["error"] == "forbidden"


async def test_unix_socket_accepts_no_host_or_loopback_and_refuses_others(
    unix_socket: str,
) -> None:
    """On the Unix socket a missing or loopback Host is fine; a foreign one is still refused."""
    streams = await asyncio.open_unix_connection(unix_socket)
    status, payload = await raw_request(streams, b"GET /v1/forwarders HTTP/1.0\r\n\r\n")
    assert status == 200
    assert len(payload["forwarders"]) == 2
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=unix_socket)) as session:
        async with session.get("http://localhost/v1/dead-letters") as response:
            assert response.status == 200
            assert (await response.json())["total"] == 3
        async with session.get(
            "http://localhost/v1/dead-letters", headers={"Host": "evil.example"}
        ) as response:
            assert response.status == 403


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://localhost:3000",
        "http://{host}.evil.example",
        "https://{host}",
        "http://{host}/",
    ],
)
async def test_foreign_origins_are_refused_even_for_reads(
    client: Client, buffer: EventBuffer, origin: str
) -> None:
    """An Origin other than the listener's own means a web page sent it: 403, GET or POST."""
    own = f"127.0.0.1:{client.port}"
    headers = {"Origin": origin.format(host=own), "Host": own}
    response = await client.get("/v1/dead-letters", headers=headers)
    assert response.status == 403
    assert (await response.json())["error"] == "forbidden"
    response = await client.post("/v1/dead-letters/purge", json={"all": True}, headers=headers)
    assert response.status == 403
    assert await dead_letter_count(buffer) == 3


async def test_the_listeners_own_origin_is_answered(client: Client) -> None:
    """An Origin equal to the address the client used is same-origin and allowed."""
    own = f"localhost:{client.port}"
    response = await client.get(
        "/v1/forwarders", headers={"Origin": f"http://{own.upper()}", "Host": own}
    )
    assert response.status == 200


@pytest.mark.parametrize(
    ("site", "allowed"),
    [
        ("cross-site", False),
        ("same-site", False),
        ("same-origin", True),
        ("none", True),
    ],
)
async def test_sec_fetch_site_from_another_site_is_refused(
    client: Client, buffer: EventBuffer, site: str, allowed: bool
) -> None:
    """Sec-Fetch-Site cross-site or same-site (another port) is refused; the user's own is not."""
    response = await client.post(
        "/v1/dead-letters/purge", json={"forwarder": "siem"}, headers={"Sec-Fetch-Site": site}
    )
    assert response.status == (200 if allowed else 403)
    assert await dead_letter_count(buffer) == (1 if allowed else 3)


async def test_refusals_are_logged_with_the_offending_origin(client: Client) -> None:
    """An operator can see which site tried: one warning with Host and Origin, no body."""
    with capture_logs() as logs:
        await client.post(
            "/v1/dead-letters/purge",
            data=b'{"all": true}',
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        )
    (refused,) = [entry for entry in logs if entry["event"] == "admin_request_refused"]
    assert refused["log_level"] == "warning"
    assert refused["status"] == 403
    assert refused["origin"] == "https://evil.example"
    assert refused["path"] == "/v1/dead-letters/purge"
    assert "all" not in str(refused)


async def test_a_cors_preflight_is_never_granted(client: Client) -> None:
    """The preflight a page needs before a cross-origin JSON POST gets no CORS grant."""
    response = await client.options(
        "/v1/dead-letters/purge",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert not 200 <= response.status < 300
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_ingest_keeps_answering_any_host_and_body_type_it_accepts(client: Client) -> None:
    """The checks are for the admin routes only: a remote-style Host still ingests NDJSON."""
    response = await client.post(
        "/v1/events",
        data=b'{"n": 1}\n{"n": 2}\n',
        headers={"Content-Type": "application/x-ndjson", "Host": "forwarder.internal:8686"},
    )
    assert response.status == 202
    assert (await response.json())["accepted"] == 2
