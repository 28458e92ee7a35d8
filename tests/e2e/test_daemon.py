"""End to end: the real ``audit-forwarder`` process, real receivers, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


async def test_every_event_reaches_two_forwarders_with_exact_headers_and_body(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Events sent over TCP and the Unix socket, in all three body shapes, reach both forwarders."""
    siem, archive = await make_receiver(), await make_receiver()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{siem.url}ingest", name="siem", token="THE-SECRET-TOKEN"),
            forwarder_config(f"{archive.url}archive?x=1", name="archive", method="PUT"),
        ],
    )
    daemon = await daemons(config).start()

    single = b'{"event_type": "approval.created", "data": {"n": 1}}'
    status, payload, _ = await post_events(daemon.ingest_url, single)
    assert (status, payload) == (202, {"accepted": 1, "duplicates": 0})
    status, payload, _ = await post_events(
        "", '[{"event_type": "key.created", "n": 2}, {"n": 3}]', socket_path=daemon.socket_path
    )
    assert (status, payload["accepted"]) == (202, 2)
    ndjson = '{"n": 4}\r\n\n{"n": 5, "msg": "caf\\u00e9 \\"q\\""}\n'
    status, payload, _ = await post_events(daemon.ingest_url, ndjson, "application/x-ndjson")
    assert (status, payload["accepted"]) == (202, 2)

    await wait_for(lambda: len(siem.delivered) == 5 and len(archive.delivered) == 5)
    expected = [
        {"event_type": "approval.created", "data": {"n": 1}},
        {"event_type": "key.created", "n": 2},
        {"n": 3},
        {"n": 4},
        {"n": 5, "msg": 'café "q"'},
    ]
    assert siem.events() == expected
    assert archive.events() == expected
    assert siem.delivered[0].body == single  # the bytes as ingested, not re-serialised
    for request in siem.delivered:
        assert request.method == "POST"
        assert request.path == "/ingest"
        assert request.headers["User-Agent"] == "audit-forwarder/1.0"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer THE-SECRET-TOKEN"
    for request in archive.delivered:
        assert request.method == "PUT"
        assert request.path == "/archive"
        assert request.query == {"x": "1"}
        assert "Authorization" not in request.headers
    assert await daemon.terminate() == 0


async def test_outage_then_503_and_429_retry_after_then_recovery_keeps_order(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A receiver down, then answering 503 and 429, then recovering, gets everything in order."""
    receiver = await make_receiver()
    url = receiver.url
    await receiver.stop()  # down: connection refused
    config = daemon_config(tmp_path, [forwarder_config(f"{url}in")])
    daemon = await daemons(config).start()

    for n in range(20):
        status, _, _ = await post_events(daemon.ingest_url, json.dumps({"n": n}))
        assert status == 202
    await wait_for(
        lambda: any(
            e.get("event") == "forwarder_failing" and e.get("status") == "connection_error"
            for e in daemon.log_entries()
        ),
        message="a connection_error failure to be logged",
    )

    receiver.respond(
        Reply(503),
        Reply(429, headers={"Retry-After": "1"}),
        Reply(503, headers={"Retry-After": "0"}),
    )
    await receiver.start()
    await wait_for(lambda: len(receiver.delivered) == 20, timeout=30)
    assert [e["n"] for e in receiver.events()] == list(range(20))
    assert [r.json()["n"] for r in receiver.attempts[:4]] == [0, 0, 0, 0]
    assert any(e.get("event") == "forwarder_recovered" for e in daemon.log_entries())
    assert await daemon.terminate() == 0


async def test_sigkill_mid_stream_loses_no_acknowledged_event(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """SIGKILL while events flow; after a restart every acknowledged event is delivered."""
    receiver = await make_receiver()
    receiver.default = Reply(200, delay=0.01)
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()

    acknowledged: list[int] = []
    async with aiohttp.ClientSession() as session:
        for batch in range(10):
            lines = "\n".join(json.dumps({"n": batch * 50 + i}) for i in range(50))
            async with session.post(
                f"{daemon.ingest_url}/v1/events",
                data=lines,
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                assert response.status == 202
                acknowledged.extend(range(batch * 50, batch * 50 + 50))
    await wait_for(lambda: len(receiver.delivered) >= 5, message="some deliveries")
    daemon.kill()
    delivered_before = len(receiver.delivered)
    assert delivered_before < len(acknowledged)  # the kill really happened mid-stream

    await daemon.start()
    await wait_for(
        lambda: {e["n"] for e in receiver.events()} >= set(acknowledged),
        timeout=60,
        message="every acknowledged event delivered after restart",
    )
    numbers = [e["n"] for e in receiver.events()]
    # At least once, in order: ascending runs, and at most one step back (the
    # restart resending what was sent but not yet acknowledged when killed).
    steps_back = [i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1]
    assert len(steps_back) <= 1
    assert all(numbers[i] <= numbers[i - 1] for i in steps_back)
    assert numbers[0] == 0
    assert numbers[-1] == acknowledged[-1]
    assert await daemon.terminate() == 0


async def test_duplicate_ids_are_stored_once(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """An event whose id is already buffered is accepted but delivered only once."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()
    event = '{"id": "evt-1", "event_type": "approval.created"}'
    for _ in range(3):
        status, payload, _ = await post_events(daemon.ingest_url, event)
        assert status == 202
    assert payload == {"accepted": 1, "duplicates": 1}
    status, payload, _ = await post_events(daemon.ingest_url, f"[{event}, {event}]")
    assert payload == {"accepted": 2, "duplicates": 2}
    status, payload, _ = await post_events(daemon.ingest_url, '{"id": "evt-2"}')
    await wait_for(lambda: len(receiver.delivered) == 2)
    assert [e["id"] for e in receiver.events()] == ["evt-1", "evt-2"]
    assert await daemon.terminate() == 0


async def test_permanent_4xx_is_dead_lettered_and_the_worker_moves_on(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """A 400 answer dead-letters the event with status and body; the next event is delivered."""
    receiver.respond(Reply(400, body=b'{"error": "bad field"}'))
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await post_events(daemon.ingest_url, '{"n": 2}')
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert receiver.events() == [{"n": 2}]
    assert await daemon.terminate() == 0
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        rows = db.execute(
            "SELECT forwarder, status, code, response_body, body FROM dead_letters"
        ).fetchall()
    assert rows == [("siem", 400, "400", b'{"error": "bad field"}', b'{"n": 1}')]


async def test_sigterm_drains_in_flight_delivery_with_readyz_503(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """SIGTERM: /readyz turns 503, the slow in-flight delivery finishes, exit 0, socket removed."""
    receiver.default = Reply(200, delay=1.0)
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(receiver.attempts) == 1)
    assert await daemon.probe("/readyz") == 200
    daemon.signal()

    async def readyz_503() -> bool:
        return await daemon.probe("/readyz") == 503

    await wait_for(readyz_503, message="/readyz 503 while draining")
    assert await daemon.exit_code() == 0
    assert len(receiver.delivered) == 1  # the in-flight request was allowed to finish
    assert daemon.socket_path is not None
    assert not Path(daemon.socket_path).exists()
    stopped = [e for e in daemon.log_entries() if e.get("event") == "daemon_stopped"]
    assert stopped
    assert stopped[0]["delivered"] == 1
    assert stopped[0]["pending"] == {"webhook-0": 0}
