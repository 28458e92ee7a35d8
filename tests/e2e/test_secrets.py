"""Secrets and event bodies stay out of every output of the real daemon, in every encoding.

A token with characters that URL-encoding changes goes out as a query
parameter or as HTTP Basic; the receivers echo it back in every form it can
take (raw, percent-encoded in both cases, yarl's half-encoded URL, base64,
JSON-escaped, HTML-escaped) in 401 bodies, in headers, and in aiohttp's own
error messages. Then every output an operator sees is read in full: the
daemon's log (stdout and stderr), the admin API's answers, and the CLI's
``deliveries``, ``dead-letters list``, ``test`` and ``status``, tables and
``--json``. None may hold any form of the secret, nor a fragment of it.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
import yarl
from aiohttp import web

from tests.conftest import ReceiverFactory
from tests.support import (
    CLI,
    DaemonProcess,
    Reply,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]

# The token: "/", "+" and "=" all change under URL-encoding.
QUERY_TOKEN = "BAD/HTTP+SECRET=31x"
# Its base64 has "/", "+" and "==" padding, which change under URL-encoding too.
BASIC_PASSWORD = "BAD/HTTP+SECRET=31x-a?bc>d"
BASIC_TOKEN = f"audit-user:{BASIC_PASSWORD}"
INGEST_TOKEN = "ingest/TOKEN+77=k"
# Text no output may show even once: it is inside every form of every secret but base64.
FRAGMENTS = ("SECRET", "TOKEN+", "TOKEN%2B", "TOKEN%2b")
EVENT_MARKER = "PII-EVENT-MARKER-4d1c"
CHUNK_MARKER = "PII-CHUNK-MARKER-9a7e"


def lower_hex(text: str) -> str:
    """Percent escapes with lower-case hex digits, as some clients write them."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def text_forms(secret: str) -> set[str]:
    """Every form ``secret`` itself takes on the wire and in echoes of it."""
    encoded = quote(secret, safe="")
    yarl_form = yarl.URL(f"http://h/?t={encoded}").raw_query_string.removeprefix("t=")
    json_text = json.dumps(secret)[1:-1]
    return {
        secret,
        encoded,
        lower_hex(encoded),
        quote(secret),
        quote_plus(secret),
        lower_hex(quote_plus(secret)),
        yarl_form,
        json_text.replace("/", "\\/"),
        json.dumps(secret.replace("/", "\\/"))[1:-1],  # escaped twice (JSON in JSON)
        "".join(f"\\u{ord(c):04x}" if not c.isalnum() else c for c in secret),
        html.escape(secret),
        quote(encoded, safe=""),  # encoded twice
    }


def base64_forms(secret: str) -> set[str]:
    """The forms the base64 of ``secret`` (HTTP Basic) takes on the wire and in echoes."""
    standard = base64.b64encode(secret.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(secret.encode()).decode()
    forms = {standard, urlsafe, standard.rstrip("="), urlsafe.rstrip("=")}
    forms |= {quote(form, safe="") for form in set(forms)}
    forms |= {lower_hex(form) for form in set(forms)}
    forms |= {form.replace("/", "\\/") for form in set(forms)}
    return forms


def forbidden_forms(token: str) -> set[str]:
    """Everything no output may contain for a daemon configured with ``token``."""
    forms = text_forms(token) | text_forms(INGEST_TOKEN) | set(FRAGMENTS)
    if token == BASIC_TOKEN:
        forms |= text_forms(BASIC_PASSWORD) | base64_forms(BASIC_TOKEN)
    return forms


def leaks(outputs: dict[str, str], forms: set[str]) -> list[tuple[str, str]]:
    """(output, form) for every form found in an output."""
    return [(name, form) for name, text in outputs.items() for form in forms if form in text]


def echo_body(request: web.Request, token: str) -> bytes:
    """A 401 body quoting the request's credentials in every form, as careless receivers do."""
    document = {
        "error": "invalid credentials",
        "url": request.path_qs,
        "query": dict(request.query),
        "authorization": request.headers.get("Authorization"),
        "forms": sorted(text_forms(token)),
    }
    if token == BASIC_TOKEN:
        document["base64"] = sorted(base64_forms(token))
        document["password"] = BASIC_PASSWORD
    # json.dumps never writes "\/"; receivers in other languages do.
    escaped = json.dumps(token)[1:-1].replace("/", "\\/")
    return (json.dumps(document)[:-1] + f', "escaped": "{escaped}"}}').encode()


class GarbledReceiver:
    """A TCP server answering every request with a malformed HTTP response.

    aiohttp then raises ``ClientResponseError``, whose message quotes the full
    request URL, query token included, in yarl's half-encoded form.
    """

    def __init__(self) -> None:
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> GarbledReceiver:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nBad Header\x01: x\r\n\r\n")
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def garbled() -> AsyncIterator[GarbledReceiver]:
    """A receiver that answers garbage, stopped at teardown."""
    receiver = await GarbledReceiver().start()
    yield receiver
    await receiver.stop()


async def admin(daemon: DaemonProcess, method: str, path: str) -> str:
    """The admin API's raw answer, as any client would read it."""
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{daemon.ingest_url}{path}", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.text()


async def cli(*args: str, code: int = 0) -> str:
    """stdout and stderr of one CLI command that exits with ``code``."""
    exit_code, out, err = await run_cli(*args)
    assert exit_code == code, out + err
    return out + err


async def post_malformed_chunked(daemon: DaemonProcess, body: bytes) -> bytes:
    """POST ``body`` in a chunk whose declared size is too short; return the raw answer.

    aiohttp's parser refuses it and quotes the bytes it choked on (the body)
    in its exception, which its server logs.
    """
    host, port = daemon.ingest_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + INGEST_TOKEN.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\n" + body + b"\r\n0\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("auth_type", "token"), [("query", QUERY_TOKEN), ("basic", BASIC_TOKEN)], ids=["query", "basic"]
)
async def test_no_output_shows_the_token_in_any_encoding_nor_an_event_body(
    tmp_path: Path,
    make_receiver: ReceiverFactory,
    garbled: GarbledReceiver,
    daemons: MakeDaemon,
    auth_type: str,
    token: str,
) -> None:
    """Log, history, dead letters, admin API and CLI never show any form of the token or a body."""
    echoing = await make_receiver()
    test_answer = {"status": 401}

    async def decide(request: web.Request) -> Reply:
        body = echo_body(request, token)
        if b"forwarder.test" in await request.read() and test_answer["status"] == 200:
            # The test button shows a 2xx answer's headers: echo the credentials there too.
            headers = {"WWW-Authenticate": f'Basic error="{token}"', "X-Echo": quote(token)}
            return Reply(200, headers=headers, body=body)
        return Reply(401, body=body)

    echoing.decide = decide
    auth = {"type": auth_type}
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{echoing.url}in?source=app", name="echoing", token=token, auth=auth),
            forwarder_config(
                f"http://127.0.0.1:{garbled.port}/in",
                name="garbled",
                token=token,
                auth=auth,
                retry={"maxAttempts": 2, "initialBackoffSeconds": 0.05},
            ),
        ],
        ingest={"token": INGEST_TOKEN},
    )
    daemon = await daemons(config).start()
    conf = str(daemon.config_path)
    events = "\n".join(json.dumps({"event_type": "user.login", "pii": EVENT_MARKER}) for _ in "ab")
    status, _, _ = await post_events(
        daemon.ingest_url,
        events,
        "application/x-ndjson",
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
    )
    assert status == 202
    refused = await post_malformed_chunked(daemon, f'{{"pii": "{CHUNK_MARKER}"}}'.encode())
    assert refused.startswith(b"HTTP/1.1 400") or refused.startswith(b"HTTP/1.0 400")

    async def all_dead_lettered() -> bool:
        return json.loads(await admin(daemon, "GET", "/v1/dead-letters"))["total"] == 4

    await wait_for(all_dead_lettered, timeout=30, message="4 dead letters")
    # The receivers did get the real credentials: the masking is in the outputs, not the wire.
    sent = echoing.attempts[0]
    if auth_type == "query":
        assert sent.query["token"] == QUERY_TOKEN
    else:
        assert sent.headers["Authorization"] == f"Basic {base64.b64encode(token.encode()).decode()}"
    assert garbled.requests >= 2

    outputs: dict[str, str] = {}
    for name in ("echoing", "garbled"):
        path = f"/v1/forwarders/{name}"
        outputs[f"api deliveries {name}"] = await admin(daemon, "GET", f"{path}/deliveries")
        outputs[f"api test {name}"] = await admin(daemon, "POST", f"{path}/test")
        outputs[f"cli deliveries {name}"] = await cli("deliveries", name, "--config", conf)
        outputs[f"cli deliveries {name} json"] = await cli(
            "deliveries", name, "--config", conf, "--json"
        )
        # A failed test exits 1, its invocation printed all the same.
        outputs[f"cli test {name}"] = await cli("test", name, "--config", conf, code=1)
        outputs[f"cli test {name} json"] = await cli(
            "test", name, "--config", conf, "--json", code=1
        )
    outputs["api dead letters"] = await admin(daemon, "GET", "/v1/dead-letters")
    outputs["cli dead letters"] = await cli("dead-letters", "list", "--config", conf)
    outputs["cli dead letters json"] = await cli("dead-letters", "list", "--config", conf, "--json")
    outputs["cli status"] = await cli("status", "--config", conf)
    test_answer["status"] = 200
    outputs["cli test echoing 2xx"] = await cli("test", "echoing", "--config", conf)
    outputs["cli test echoing 2xx json"] = await cli("test", "echoing", "--config", conf, "--json")
    assert await daemon.terminate() == 0
    outputs["daemon log"] = daemon.output()

    assert leaks(outputs, forbidden_forms(token)) == []
    assert EVENT_MARKER not in outputs["daemon log"]
    assert CHUNK_MARKER not in outputs["daemon log"]
    # What was masked is still there to read, masked: the outputs were not simply emptied.
    history = json.loads(outputs["api deliveries echoing"])["deliveries"]
    assert history[0]["code"] == "401"
    assert '"url": "/in?source=app' in history[0]["response_body"]
    assert "***" in history[0]["response_body"]
    dead = json.loads(outputs["api dead letters"])["dead_letters"]
    assert {d["forwarder"] for d in dead} == {"echoing", "garbled"}
    garbled_reasons = [d["reason"] for d in dead if d["forwarder"] == "garbled"]
    assert all("ClientResponseError" in reason for reason in garbled_reasons)
    assert "***" in outputs["cli test echoing 2xx json"]
    assert json.loads(outputs["cli test echoing 2xx json"])["ok"] is True
    refusals = [e for e in daemon.log_entries() if e.get("component") == "aiohttp.server"]
    assert refusals
    assert all(e["level"] == "error" and "exception" not in e for e in refusals)


async def test_the_debug_receiver_prints_no_credential_in_any_form(
    tmp_path: Path, daemons: MakeDaemon
) -> None:
    """``audit-forwarder receiver`` shows query tokens and Basic credentials as *** only."""
    port = free_port()
    out_path = tmp_path / "receiver.out"
    with out_path.open("wb") as out:
        receiver = subprocess.Popen(
            [CLI, "receiver", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await wait_for(lambda: b"receiver listening" in out_path.read_bytes(), timeout=20)
        url = f"http://127.0.0.1:{port}/in"
        config = daemon_config(
            tmp_path,
            [
                forwarder_config(url, name="query", token=QUERY_TOKEN, auth={"type": "query"}),
                forwarder_config(url, name="basic", token=BASIC_TOKEN, auth={"type": "basic"}),
            ],
        )
        daemon = await daemons(config).start()
        status, _, _ = await post_events(daemon.ingest_url, '{"event_type": "user.login"}')
        assert status == 202
        await wait_for(lambda: out_path.read_bytes().count(b"user.login") == 2, timeout=20)
        assert await daemon.terminate() == 0
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(timeout=10)
    printed = out_path.read_text()

    forms = text_forms(QUERY_TOKEN) | text_forms(BASIC_PASSWORD) | base64_forms(BASIC_TOKEN)
    assert leaks({"receiver": printed}, forms | set(FRAGMENTS)) == []
    assert "/in?token=*** (" in printed
    assert "Authorization: Basic ***" in printed
