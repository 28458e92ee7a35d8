"""End to end: the real daemon delivering to a real single-node JetStream server.

Each test starts ``nats-server -js`` on free ports (``tests.nats_support``)
and the real ``audit-forwarder`` process, posts events over HTTP and reads
the stream back with nats-py, as a consumer would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nats_support import (
    NatsServer,
    create_stream,
    nats_forwarder,
    needs_nats_server,
    start_server,
    stream_count,
    stream_messages,
)
from tests.support import (
    DaemonProcess,
    daemon_config,
    post_events,
    run_cli,
    wait_for,
)

pytestmark = needs_nats_server
MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def servers() -> Iterator[list[NatsServer]]:
    """NATS servers the test started, killed at teardown."""
    started: list[NatsServer] = []
    yield started
    for server in started:
        server.stop()


def ndjson(numbers: range, event_type: str = "user.login", pad: int = 0) -> str:
    """Events with our own ids (``evt-00042``), so their order can be checked in the stream."""
    return "\n".join(
        json.dumps({"id": f"evt-{n:05d}", "event_type": event_type, "n": n, "pad": "x" * pad})
        for n in numbers
    )


async def cli_json(*args: str, code: int = 0) -> Any:
    """A CLI command's ``--json`` output."""
    exit_code, out, err = await run_cli(*args, "--json")
    assert exit_code == code, out + err
    return json.loads(out)


async def forwarder_state(daemon: DaemonProcess, name: str = "bus") -> dict[str, Any]:
    """The forwarder's entry of ``status --json``."""
    payload = await cli_json("status", "--config", str(daemon.config_path))
    return next(f for f in payload["forwarders"] if f["name"] == name)


async def test_events_arrive_in_order_with_their_ids_and_a_kill_9_loses_and_duplicates_none(
    tmp_path: Path, servers: list[NatsServer], daemons: MakeDaemon
) -> None:
    """In order, exact bytes, Nats-Msg-Id = event id; after kill -9 and restart: all, once."""
    server = await start_server(tmp_path)
    servers.append(server)
    await create_stream(server.url)
    forwarder = nats_forwarder(
        [server.url],
        stream="AUDIT",
        batch={"maxEvents": 50, "maxWaitMs": 20},
        # Slow enough that the kill lands mid-stream.
        rateLimit={"eventsPerSecond": 400},
    )
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    total = 1200
    for first in range(0, total, 100):
        status, _, _ = await post_events(
            daemon.ingest_url, ndjson(range(first, first + 100)), "application/x-ndjson"
        )
        assert status == 202
    await wait_for(lambda: stream_count([server.url]), timeout=20, message="first messages")
    daemon.kill()
    at_kill = await stream_count([server.url])
    assert 0 < at_kill < total  # the kill really happened mid-stream

    await daemon.start()
    await wait_for(
        lambda: _count_is(server, total), timeout=40, message=f"{total} messages in the stream"
    )
    assert await daemon.terminate() == 0  # in-flight publishes finish: nothing more comes
    messages = await stream_messages([server.url])
    ids = [f"evt-{n:05d}" for n in range(total)]
    assert [m.msg_id for m in messages] == ids
    assert {m.subject for m in messages} == {"audit.user.login"}
    # Each message is the event exactly as it was posted (its NDJSON line).
    assert [m.data for m in messages] == [
        line.encode() for line in ndjson(range(total)).split("\n")
    ]


async def _count_is(server: NatsServer, expected: int) -> bool:
    return await stream_count([server.url]) == expected


async def test_a_message_over_the_streams_max_size_is_dead_lettered_and_the_others_delivered(
    tmp_path: Path, servers: list[NatsServer], daemons: MakeDaemon
) -> None:
    """The oversized event alone is dead-lettered with the server's error; the rest arrive."""
    server = await start_server(tmp_path)
    servers.append(server)
    await create_stream(server.url, max_msg_size=1024)
    forwarder = nats_forwarder([server.url], stream="AUDIT", batch={"maxEvents": 10})
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    lines = [ndjson(range(n, n + 1), pad=2000 if n == 3 else 0) for n in range(8)]
    status, _, _ = await post_events(daemon.ingest_url, "\n".join(lines), "application/x-ndjson")
    assert status == 202
    await wait_for(lambda: _count_is(server, 7), timeout=20, message="7 messages")
    conf = str(daemon.config_path)
    letters = await wait_for(lambda: _dead_letters(conf), timeout=20, message="the dead letter")
    assert [d["event_id"] for d in letters] == ["evt-00003"]
    assert "message size exceeds maximum allowed" in letters[0]["reason"]
    assert letters[0]["code"] == "js_10054"
    messages = await stream_messages([server.url])
    assert [m.msg_id for m in messages] == [f"evt-{n:05d}" for n in range(8) if n != 3]

    # The test button publishes a synthetic event and shows its PubAck.
    answer = await cli_json("test", "bus", "--config", conf)
    assert answer["ok"] is True
    assert answer["request"]["url"].endswith("audit.forwarder.test")
    assert json.loads(answer["response"]["body"])["stream"] == "AUDIT"
    assert await daemon.terminate() == 0


async def _dead_letters(conf: str) -> list[dict[str, Any]]:
    return list((await cli_json("dead-letters", "list", "--config", conf))["dead_letters"])


async def test_a_refused_token_shows_in_status_and_the_log_and_no_event_is_lost(
    tmp_path: Path, servers: list[NatsServer], daemons: MakeDaemon
) -> None:
    """A wrong token: status and log say auth_error, events wait; never dead-lettered."""
    server = await start_server(tmp_path, extra_args=["--auth", "right-token-1"])
    servers.append(server)
    await create_stream(server.url, connect={"token": "right-token-1"})
    forwarder = nats_forwarder([server.url], token="WRONG-token-2")
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    status, _, _ = await post_events(daemon.ingest_url, ndjson(range(3)), "application/x-ndjson")
    assert status == 202

    async def auth_error() -> dict[str, Any] | None:
        state = await forwarder_state(daemon)
        return state if state["last_attempt"]["code"] == "auth_error" else None

    state = await wait_for(auth_error, timeout=20, message="auth_error in status")
    assert "refused the credentials" in state["last_attempt"]["error"]
    assert state["pending"] == 3
    assert state["dead_letters"] == 0
    failing = [e for e in daemon.log_entries() if e.get("event") == "forwarder_failing"]
    assert failing
    assert failing[0]["status"] == "auth_error"
    assert "WRONG-token-2" not in daemon.output()
    answer = await cli_json("test", "bus", "--config", str(daemon.config_path), code=1)
    assert answer["error"]["code"] == "auth_error"
    assert await daemon.terminate() == 0


async def test_a_missing_stream_shows_in_status_and_the_log_until_it_is_created(
    tmp_path: Path, servers: list[NatsServer], daemons: MakeDaemon
) -> None:
    """stream: AUDIT absent: status and log say so, events wait; created: they are delivered."""
    server = await start_server(tmp_path)
    servers.append(server)
    forwarder = nats_forwarder([server.url], stream="AUDIT")
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    status, _, _ = await post_events(daemon.ingest_url, ndjson(range(5)), "application/x-ndjson")
    assert status == 202

    async def missing() -> dict[str, Any] | None:
        state = await forwarder_state(daemon)
        return state if state["last_attempt"]["code"] == "stream_not_found" else None

    state = await wait_for(missing, timeout=20, message="stream_not_found in status")
    assert "no stream 'AUDIT'" in state["last_attempt"]["error"]
    logged = [e for e in daemon.log_entries() if e.get("event") == "nats_stream_missing"]
    assert logged
    assert logged[0]["stream"] == "AUDIT"

    await create_stream(server.url)
    await wait_for(lambda: _count_is(server, 5), timeout=30, message="5 messages")
    assert await daemon.terminate() == 0


async def test_a_chained_nats_forwarder_publishes_records_that_verify_clean(
    tmp_path: Path, servers: list[NatsServer], daemons: MakeDaemon
) -> None:
    """With ``integrity``, each message carries its chain record (in the body and the
    ``Audit-Chain`` header); the stream's bodies verify clean, and a removed one is named."""
    server = await start_server(tmp_path)
    servers.append(server)
    await create_stream(server.url)
    code, _, err = await run_cli("keygen", "--out", str(tmp_path / "chain"))
    assert code == 0, err
    integrity = {
        "mode": "chain",
        "signingKeyFile": str(tmp_path / "chain.key"),
        "checkpointEvery": 10,
    }
    forwarder = nats_forwarder(
        [server.url], stream="AUDIT", batch={"maxEvents": 7}, integrity=integrity
    )
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    status, _, _ = await post_events(daemon.ingest_url, ndjson(range(20)), "application/x-ndjson")
    assert status == 202
    await wait_for(lambda: _count_is(server, 20), timeout=20, message="20 messages")
    messages = await stream_messages([server.url])
    records = [json.loads(m.headers["Audit-Chain"]) for m in messages]
    assert [r["seq"] for r in records] == list(range(1, 21))
    assert [json.loads(m.data)["auditChain"] for m in messages] == records
    assert [r["seq"] for r in records if "sig" in r] == [10, 20]

    async def verify(lines: list[bytes]) -> tuple[int, dict[str, Any]]:
        export = tmp_path / "export.ndjson"
        export.write_bytes(b"\n".join(lines) + b"\n")
        public = str(tmp_path / "chain.pub")
        code, out, err = await run_cli(
            "verify", "--public-key", public, str(export), "--output", "json"
        )
        assert code in (0, 1), err
        return code, json.loads(out)

    code, report = await verify([m.data for m in messages])
    assert code == 0, report
    assert report["chains"][0]["signed_complete_through"] == 20
    code, report = await verify([m.data for m in messages if m.msg_id != "evt-00004"])
    assert code == 1
    assert [(f["kind"], f["first_seq"]) for f in report["findings"]] == [("missing", 5)]
    assert await daemon.terminate() == 0
