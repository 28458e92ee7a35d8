"""The relay topology end to end: a node agent forwarding to a central forwarder, two real daemons.

The node's webhook forwarder posts ``format: cloudevents`` batches to the
central's ingest with the central's token; the central stores each ``data``
under the CloudEvent's ``id`` and delivers, in CloudEvents too, to a real
receiver standing in for the SIEM. What is checked, per event id:

* nothing is lost: every event posted to the node reaches the receiver;
* nothing is duplicated: no event reaches it under two ids (which is what a
  central generating its own ids would do on a node retry), and the central's
  ``client_ids`` holds exactly one id per event posted. The receiver *may* see
  an id twice, with the same bytes: the central's own at-least-once delivery
  resends what was in flight when it was killed, and deduplicating that is
  the receiver's job (the id is there for it);
* nothing is altered: the bytes the receiver gets as ``data`` are the bytes
  the application posted to the node, and client ids arrive unchanged.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from forwarder.ingest.bodies import array_elements
from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    wait_for,
)

TOKEN = "central-ingest-token-0123456789"
CE_BATCH = "application/cloudevents-batch+json"


@dataclass(frozen=True)
class Posted:
    """One event as the application wrote it, and its client id if it had one."""

    body: bytes
    client_id: str | None


def written_events(first: int, count: int) -> list[Posted]:
    """Events in several writings (spacing, escapes, big numbers, line breaks), every third
    with a client id; each unique by its ``n``. Every other run of 25 is written on one line
    each, so that :func:`post_stream` sends those runs as NDJSON."""
    posted: list[Posted] = []
    for n in range(first, first + count):
        client_id = f"client-{n}" if n % 3 == 0 else None
        id_member = f'"id": "{client_id}", ' if client_id else ""
        writings = [
            f'{{{id_member}"event_type": "user.login", "n": {n}}}',
            f'{{ {id_member}"type":"deploy" , "n":{n},"big":{10**30 + n},"x":1.50 }}',
            f'{{{id_member}"n": {n}, "s": "caf\\u00e9 \u00e9 \\/ \\"q\\"", "a": [{{"}}": "]"}}]}}',
            f'{{\n  {id_member}"n": {n},\n  "pretty": true\n}}',
        ]
        writing = writings[n % 4] if (n // 25) % 2 == 0 else writings[n % 3]
        posted.append(Posted(writing.encode(), client_id))
    return posted


async def post_stream(url: str, events: list[Posted], per_request: int = 25) -> None:
    """Post ``events`` to a node in order: NDJSON bodies when every event is one line."""
    for start in range(0, len(events), per_request):
        chunk = [event.body for event in events[start : start + per_request]]
        if not any(b"\n" in body for body in chunk):
            body, content_type = b"\n".join(chunk) + b"\n", "application/x-ndjson"
        else:
            body, content_type = b"[" + b",\n".join(chunk) + b"]", "application/json"
        status, payload, _ = await post_events(url, body, content_type)
        assert (status, payload) == (202, {"accepted": len(chunk), "duplicates": 0})


def received_events(receiver: ScriptedReceiver) -> list[tuple[str, bytes]]:
    """(id, data bytes) of every CloudEvent the receiver acknowledged, duplicates included."""
    received: list[tuple[str, bytes]] = []
    for request in receiver.delivered:
        assert request.headers["Content-Type"] == CE_BATCH
        envelopes = orjson.loads(request.body)
        for envelope, raw in zip(
            envelopes, array_elements(request.body, len(envelopes)), strict=True
        ):
            # Our encoder writes "data" last, after flat string attributes: the first
            # ',"data":' is that member (a quote inside a string is always escaped).
            start = raw.index(b',"data":') + len(b',"data":')
            received.append((envelope["id"], raw[start:-1]))
    return received


def distinct(receiver: ScriptedReceiver) -> dict[str, bytes]:
    """The receiver's events by id; an id seen twice must carry the same bytes."""
    by_id: dict[str, bytes] = {}
    for event_id, body in received_events(receiver):
        assert by_id.setdefault(event_id, body) == body, f"id {event_id} with other bytes"
    return by_id


def central_client_ids(path: Path) -> list[str]:
    """The ids in the central buffer's ``client_ids``, read on a read-only connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("SELECT event_id FROM client_ids")]
    finally:
        conn.close()


def assert_relayed_exactly(receiver: ScriptedReceiver, central: Path, posted: list[Posted]) -> None:
    """Every posted event at the receiver under one id, byte for byte; one id each centrally."""
    by_id = distinct(receiver)
    assert sorted(by_id.values()) == sorted(event.body for event in posted)
    for event in posted:
        if event.client_id is not None:
            assert by_id[event.client_id] == event.body
    ids = central_client_ids(central)
    assert len(ids) == len(posted)
    assert set(ids) == set(by_id)


@dataclass
class LosingProxy:
    """A real HTTP proxy in front of the central that forwards each request, then may lose
    the answer: held until the node gives up (its request timeout), so the central has
    committed the events but the node never hears the ``202``."""

    target: str
    to_lose: int
    answers: list[tuple[int, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> LosingProxy:
        """Listen on a free loopback port."""
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/v1/events", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening and close the session to the central."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.Response:
        """Forward to the central; answer the node, or hold the answer until it hangs up."""
        assert self._session is not None
        headers = {
            name: request.headers[name]
            for name in ("Content-Type", "Content-Encoding", "Authorization")
            if name in request.headers
        }
        body = await request.read()
        async with self._session.post(self.target, data=body, headers=headers) as response:
            status, answer = response.status, await response.read()
        self.answers.append((status, json.loads(answer)))
        if self.to_lose > 0:
            self.to_lose -= 1
            # Cancelled (handler_cancellation) when the node hangs up after its timeout.
            await asyncio.Event().wait()
        return web.Response(status=status, body=answer, content_type="application/json")


@dataclass
class Relay:
    """A node daemon relaying to a central daemon on a fixed port, which feeds a receiver."""

    node: DaemonProcess
    central: DaemonProcess
    receiver: ScriptedReceiver
    central_buffer: Path
    proxy: LosingProxy | None


MakeRelay = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def make_relay(tmp_path: Path, make_receiver: ReceiverFactory) -> AsyncIterator[MakeRelay]:
    """Start a receiver, a central daemon and a node daemon (optionally through a LosingProxy);
    daemons still alive are killed at teardown."""
    started: list[DaemonProcess] = []
    proxies: list[LosingProxy] = []

    async def make(lose_answers: int | None = None, **node_options: Any) -> Relay:
        receiver = await make_receiver()
        port = free_port()
        central_dir, node_dir = tmp_path / "central", tmp_path / "node"
        central_dir.mkdir()
        node_dir.mkdir()
        siem = forwarder_config(
            f"{receiver.url}siem",
            name="siem",
            format="cloudevents",
            cloudevents={"source": "central"},
            batch={"maxEvents": 100, "maxWaitMs": 20},
        )
        central_config = daemon_config(
            central_dir, [siem], ingest={"port": port, "unixSocket": None, "token": TOKEN}
        )
        url = f"http://127.0.0.1:{port}/v1/events"
        proxy = None
        if lose_answers is not None:
            proxy = await LosingProxy(url, lose_answers).start()
            proxies.append(proxy)
            url = f"http://127.0.0.1:{proxy.port}/v1/events"
        upstream = forwarder_config(
            url,
            name="central",
            token=TOKEN,
            format="cloudevents",
            cloudevents={"source": "node-a"},
            batch={"maxEvents": 50, "maxWaitMs": 20},
            **node_options,
        )
        node_config = daemon_config(node_dir, [upstream], ingest={"unixSocket": None})
        central = DaemonProcess(central_dir, central_config)
        started.append(central)
        node = DaemonProcess(node_dir, node_config)
        started.append(node)
        await central.start()
        await node.start()
        return Relay(node, central, receiver, central_dir / "buffer.db", proxy)

    yield make
    for daemon in started:
        daemon.stop()
    for proxy in proxies:
        await proxy.stop()


async def test_central_killed_mid_stream_loses_and_duplicates_nothing(
    make_relay: MakeRelay,
) -> None:
    """kill -9 of the central mid-stream, restarted on buffer and port: each event once per id."""
    relay = await make_relay()
    first, second, third = (
        written_events(0, 600),
        written_events(600, 300),
        written_events(900, 300),
    )

    streaming = asyncio.create_task(post_stream(relay.node.ingest_url, first))
    await wait_for(lambda: len(distinct(relay.receiver)) >= 100, message="events relayed")
    relay.central.kill()
    relayed_before_kill = len(distinct(relay.receiver))
    await streaming
    # The node keeps taking events while the central is down, and buffers them.
    await post_stream(relay.node.ingest_url, second)
    assert relayed_before_kill < len(first)

    await relay.central.start()
    await post_stream(relay.node.ingest_url, third)
    posted = first + second + third
    await wait_for(
        lambda: len(distinct(relay.receiver)) >= len(posted),
        timeout=60,
        message="every event at the receiver",
    )
    assert_relayed_exactly(relay.receiver, relay.central_buffer, posted)
    assert await relay.node.terminate() == 0
    assert await relay.central.terminate() == 0


async def test_node_retry_after_a_lost_202_is_not_duplicated(make_relay: MakeRelay) -> None:
    """The central commits a batch but the node never hears 202: the retry stores nothing twice."""
    relay = await make_relay(lose_answers=1, timeoutSeconds=1)
    proxy = relay.proxy
    assert proxy is not None
    posted = written_events(0, 40)

    await post_stream(relay.node.ingest_url, posted, per_request=40)
    await wait_for(
        lambda: len(distinct(relay.receiver)) >= len(posted), message="every event at the receiver"
    )
    await wait_for(lambda: len(proxy.answers) >= 2, message="the node's retry answered")

    # The lost answer was a commit; the node's retry found every id already there.
    assert proxy.answers[:2] == [
        (202, {"accepted": len(posted), "duplicates": 0}),
        (202, {"accepted": len(posted), "duplicates": len(posted)}),
    ]
    # The central was never killed: it delivered each event exactly once.
    assert len(received_events(relay.receiver)) == len(posted)
    assert_relayed_exactly(relay.receiver, relay.central_buffer, posted)
    assert await relay.node.terminate() == 0
    assert await relay.central.terminate() == 0
