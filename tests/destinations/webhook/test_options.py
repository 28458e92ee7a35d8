"""End to end: every per-forwarder option against the real daemon and real loopback receivers."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks.webhooks import Webhook

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    stored_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


def ndjson(events: list[dict[str, Any]]) -> str:
    """Events as one NDJSON body."""
    return "\n".join(json.dumps(event) for event in events)


async def test_filters_route_each_event_type_to_the_right_forwarders(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """events/excludeEvents globs pick events per forwarder; refused events never count."""
    approvals, keys, rest = [await make_receiver() for _ in range(3)]
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{approvals.url}a", name="approvals", events=["approval.*"]),
            forwarder_config(
                f"{keys.url}k", name="keys", events=["key.*"], excludeEvents=["key.revoked"]
            ),
            forwarder_config(f"{rest.url}r", name="rest", excludeEvents=["approval.*"]),
        ],
    )
    daemon = await daemons(config).start()
    types = ["approval.created", "key.created", "key.revoked", "approval.decided", None, "user.x"]
    events = [{"n": n, **({"event_type": t} if t else {})} for n, t in enumerate(types)]
    events.append({"n": 6, "type": "key.rotated"})  # `type` when there is no event_type
    status, _, _ = await post_events(daemon.ingest_url, ndjson(events), "application/x-ndjson")
    assert status == 202
    await wait_for(lambda: len(rest.delivered) == 5)
    await wait_for(lambda: len(approvals.delivered) == 2 and len(keys.delivered) == 2)
    assert [e["n"] for e in approvals.events()] == [0, 3]
    assert [e["n"] for e in keys.events()] == [1, 6]
    assert [e["n"] for e in rest.events()] == [1, 2, 4, 5, 6]
    code, out, _ = await run_cli("status", "--config", str(daemon.config_path), "--json")
    assert code == 0
    assert {f["name"]: f["pending"] for f in json.loads(out)["forwarders"]} == {
        "approvals": 0,
        "keys": 0,
        "rest": 0,
    }
    assert await daemon.terminate() == 0


async def test_batches_respect_max_events_max_bytes_and_max_wait(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Batches close at maxEvents, never exceed maxBytes on the wire, and flush after maxWaitMs."""
    by_count, by_size, by_wait = [await make_receiver() for _ in range(3)]
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{by_count.url}c", name="count", batch={"maxEvents": 10}),
            forwarder_config(
                f"{by_size.url}s",
                name="size",
                batch={"maxEvents": 1000, "maxBytes": 2048, "maxWaitMs": 200},
                format="ndjson",
            ),
            forwarder_config(
                f"{by_wait.url}w", name="wait", batch={"maxEvents": 1000, "maxWaitMs": 300}
            ),
        ],
    )
    daemon = await daemons(config).start()
    events = [{"n": n, "pad": "x" * 150} for n in range(95)]
    assert (await post_events(daemon.ingest_url, json.dumps(events)))[0] == 202
    await wait_for(lambda: sum(len(r.json()) for r in by_count.delivered) == 95)
    assert [len(r.json()) for r in by_count.delivered] == [10] * 9 + [5]
    await wait_for(lambda: sum(r.body.count(b"\n") for r in by_size.delivered) == 95)
    assert all(len(r.body) <= 2048 for r in by_size.delivered)
    assert len(by_size.delivered) >= 95 * 170 // 2048
    assert by_size.delivered[0].headers["Content-Type"] == "application/x-ndjson"
    numbers = [json.loads(line)["n"] for r in by_size.delivered for line in r.body.splitlines()]
    assert numbers == list(range(95))
    await wait_for(lambda: len(by_wait.delivered) >= 1)
    assert [e["n"] for e in by_wait.delivered[0].json()] == list(range(95))
    # One more event alone: the wait forwarder flushes it after maxWaitMs, not never.
    assert (await post_events(daemon.ingest_url, '{"n": 95}'))[0] == 202
    await wait_for(lambda: len(by_wait.delivered) == 2, timeout=10)
    assert by_wait.delivered[1].json() == [{"n": 95}]
    assert await daemon.terminate() == 0


async def test_413_splits_a_batch_and_a_lone_413_event_is_dead_lettered(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """A 413 halves the batch until it fits; an event still refused alone is dead-lettered."""

    async def too_large_over_two(request: web.Request) -> Reply:
        body = json.loads(await request.read())
        if len(body) > 2 or any(e.get("huge") for e in body):
            return Reply(413)
        return Reply(200)

    receiver.decide = too_large_over_two
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem", batch={"maxEvents": 8})],
    )
    daemon = await daemons(config).start()
    events = [{"n": n} for n in range(8)]
    events[5]["huge"] = True
    assert (await post_events(daemon.ingest_url, json.dumps(events)))[0] == 202
    await wait_for(lambda: sum(len(r.json()) for r in receiver.delivered) == 7)
    delivered = [e["n"] for r in receiver.delivered for e in r.json()]
    assert delivered == [0, 1, 2, 3, 4, 6, 7]
    assert await daemon.terminate() == 0
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        dead = db.execute("SELECT status, body FROM dead_letters").fetchall()
    # The dead letter keeps the event's bytes exactly as they were sent inside the array.
    assert dead == [(413, json.dumps(events[5]).encode())]


async def test_formats_cloudevents_splunk_and_template_on_the_wire(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """CloudEvents parse with the SDK, Splunk HEC envelopes and templates arrive as configured."""
    ce, hec, tpl = [await make_receiver() for _ in range(3)]
    template = (
        '{"message": "{ \\"type\\": \\"{{ event_type }}\\", \\"who\\": \\"{{ data.user }}\\"}"}'
    )
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(
                f"{ce.url}ce",
                name="ce",
                format="cloudevents",
                cloudevents={"source": "urn:test", "typePrefix": "com.example.audit"},
            ),
            forwarder_config(
                f"{hec.url}services/collector/event",
                name="hec",
                format="splunk_hec",
                splunkHec={"index": "audit", "host": "node-1"},
                batch={"maxEvents": 2, "maxWaitMs": 100},
            ),
            forwarder_config(f"{tpl.url}t", name="tpl", format="template", template=template),
        ],
    )
    daemon = await daemons(config).start()
    hostile = 'x", "injected": "1\\\n\t\u2028 ☃'
    events = [
        {"id": "e-1", "event_type": "approval.decided", "data": {"user": hostile}},
        {"id": "e-2", "event_type": "key.created", "timestamp": "2026-03-23T14:02:30.000Z"},
    ]
    assert (await post_events(daemon.ingest_url, json.dumps(events)))[0] == 202
    await wait_for(lambda: len(ce.delivered) == 2 and len(tpl.delivered) == 2)
    await wait_for(lambda: len(hec.delivered) >= 1)
    message = HTTPMessage(
        headers={"content-type": ce.delivered[0].headers["Content-Type"]},
        body=ce.delivered[0].body,
    )
    first = from_http(message, JSONFormat())
    assert first.get_id() == "e-1"
    assert first.get_type() == "com.example.audit.approval.decided"
    assert first.get_source() == "urn:test"
    assert first.get_data() == events[0]
    assert ce.delivered[0].headers["Content-Type"] == "application/cloudevents+json"
    lines = [json.loads(line) for line in hec.delivered[0].body.split(b"\n")]
    assert [line["event"] for line in lines] == events
    assert {line["index"] for line in lines} == {"audit"}
    assert {line["host"] for line in lines} == {"node-1"}
    inner = json.loads(tpl.delivered[0].json()["message"])
    assert inner == {"type": "approval.decided", "who": hostile}
    assert await daemon.terminate() == 0


async def test_auth_modes_custom_headers_gzip_and_signatures(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Header/basic/query auth, custom headers, gzip bodies and Standard Webhooks signatures."""
    splunk, logstash, logz, signed = [await make_receiver() for _ in range(4)]
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(
                f"{splunk.url}hec",
                name="splunk",
                token="HEC-TOKEN",
                auth={"type": "header", "scheme": "Splunk"},
                headers={"X-Team": "secops"},
            ),
            forwarder_config(
                f"{logstash.url}ls", name="logstash", token="user:pa:ss", auth={"type": "basic"}
            ),
            forwarder_config(
                f"{logz.url}?type=audit", name="logz", token="LOGZ T&K", auth={"type": "query"}
            ),
            forwarder_config(
                f"{signed.url}sig",
                name="signed",
                signingSecret=secret,
                compression="gzip",
                batch={"maxEvents": 5, "maxWaitMs": 100},
            ),
        ],
    )
    daemon = await daemons(config).start()
    events = [{"id": f"e-{n}", "n": n} for n in range(3)]
    assert (await post_events(daemon.ingest_url, json.dumps(events)))[0] == 202
    for receiver in (splunk, logstash, logz):
        await wait_for(lambda r=receiver: len(r.delivered) == 3)  # type: ignore[misc]
    await wait_for(lambda: len(signed.delivered) >= 1)
    assert splunk.delivered[0].headers["Authorization"] == "Splunk HEC-TOKEN"
    assert splunk.delivered[0].headers["X-Team"] == "secops"
    expected_basic = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert logstash.delivered[0].headers["Authorization"] == expected_basic
    assert logz.delivered[0].query == {"type": "audit", "token": "LOGZ T&K"}
    assert "Authorization" not in logz.delivered[0].headers
    request = signed.delivered[0]
    assert request.headers["Content-Encoding"] == "gzip"
    # aiohttp's server undoes Content-Encoding: gzip, as receivers' frameworks do;
    # the signature covers the uncompressed body.
    assert request.body[:2] != b"\x1f\x8b"
    payload = Webhook(secret).verify(request.body, request.headers)
    assert [e["n"] for e in payload] == [0, 1, 2][: len(payload)]
    assert await daemon.terminate() == 0
    assert "LOGZ" not in daemon.output()
    assert "HEC-TOKEN" not in daemon.output()


async def test_response_validators_fail_a_2xx_with_the_wrong_body(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """A 2xx whose JSON does not match the validators is retried until it does."""
    receiver.respond(Reply(200, body=b'{"data": {"status": "queued-for-review"}}'))
    receiver.default = Reply(200, body=b'{"data": {"status": "accepted"}}')
    validators = [{"jsonPath": "$.data.status", "expected": ["ok", "accepted"]}]
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem", responseValidators=validators)],
    )
    daemon = await daemons(config).start()
    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202
    await wait_for(lambda: len(receiver.attempts) == 2)
    _code, out, _ = await run_cli(
        "deliveries", "siem", "--config", str(daemon.config_path), "--json"
    )
    attempts = json.loads(out)["deliveries"]
    assert [(a["outcome"], a["code"]) for a in attempts] == [
        ("success", "200"),
        ("retry", "invalid_response"),
    ]
    assert "queued-for-review" in attempts[1]["error"]
    assert await daemon.terminate() == 0


async def test_retry_limits_dead_letter_instead_of_retrying_forever(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """retry.maxAttempts moves a failing event to the dead letters and the next one is sent."""
    receiver.respond(Reply(503), Reply(503), Reply(503))
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(
                f"{receiver.url}in",
                name="siem",
                retry={"initialBackoffSeconds": 0.01, "maxBackoffSeconds": 0.02, "maxAttempts": 3},
            )
        ],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '[{"n": 1}, {"n": 2}]')
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert receiver.events() == [{"n": 2}]
    _code, out, _ = await run_cli(
        "dead-letters", "list", "--config", str(daemon.config_path), "--json"
    )
    (dead,) = json.loads(out)["dead_letters"]
    assert dead["code"] == "503"
    assert dead["reason"].startswith("gave up after 3 attempt(s)")
    assert await daemon.terminate() == 0


async def test_401_storm_then_token_fixed_then_replay_delivers_everything(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """Dead letters from a bad token are replayed after the fix and delivered once, in order."""

    async def check_token(request: web.Request) -> Reply:
        good = request.headers.get("Authorization") == "Bearer GOOD"
        return Reply(200) if good else Reply(401, body=b'{"error": "bad token"}')

    receiver.decide = check_token
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in", name="siem", token="BAD")]
    )
    daemon = await daemons(config).start()
    conf = str(daemon.config_path)
    await post_events(
        daemon.ingest_url, ndjson([{"n": n} for n in range(5)]), "application/x-ndjson"
    )

    async def five_dead() -> bool:
        code, out, _ = await run_cli("dead-letters", "list", "--config", conf, "--json")
        return code == 0 and json.loads(out)["total"] == 5

    await wait_for(five_dead, message="5 dead letters")
    code, out, _ = await run_cli("dead-letters", "list", "--config", conf)
    assert "bad token" in out
    assert "(5 shown of 5)" in out
    assert await daemon.terminate() == 0

    config["auditLogForwarders"][0]["token"] = "GOOD"
    daemon.config_path.write_text(yaml.safe_dump(config))
    await daemon.start()
    code, out, _ = await run_cli("dead-letters", "replay", "--config", conf, "--forwarder", "siem")
    assert (code, out.strip()) == (0, "replayed 5 dead letter(s)")
    await wait_for(lambda: len(receiver.delivered) == 5)
    assert [e["n"] for e in receiver.events()] == [0, 1, 2, 3, 4]
    code, out, _ = await run_cli("dead-letters", "list", "--config", conf, "--json")
    assert json.loads(out)["total"] == 0
    code, out, _ = await run_cli("dead-letters", "purge", "--config", conf)
    assert code == 2  # a usage error: purge needs --forwarder, --id or --all
    assert await daemon.terminate() == 0


async def test_disabled_forwarder_sends_nothing_and_holds_nothing(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """enabled: false sends nothing, counts nothing pending, and lets the buffer empty."""
    active, disabled = await make_receiver(), await make_receiver()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{active.url}a", name="active"),
            forwarder_config(f"{disabled.url}d", name="off", enabled=False),
        ],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '[{"n": 1}, {"n": 2}]')
    await wait_for(lambda: len(active.delivered) == 2)

    def buffer_empty() -> bool:
        return stored_events(tmp_path / "buffer.db") == []

    await wait_for(buffer_empty, message="the disabled forwarder not holding events")
    code, out, _ = await run_cli("status", "--config", str(daemon.config_path), "--json")
    assert code == 0
    pending = {f["name"]: f["pending"] for f in json.loads(out)["forwarders"]}
    assert pending == {"active": 0, "off": 0}
    assert disabled.attempts == []
    assert await daemon.terminate() == 0


async def test_buffer_max_bytes_answers_503_and_loses_nothing(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """At buffer.maxBytes ingest answers 503 buffer_full; everything acknowledged is delivered."""
    await receiver.stop()
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], buffer={"maxBytes": 400_000}
    )
    daemon = await daemons(config).start()
    acknowledged: list[int] = []
    refused = None
    for batch in range(200):
        events = [{"n": batch * 10 + i, "pad": "y" * 400} for i in range(10)]
        status, payload, headers = await post_events(daemon.ingest_url, json.dumps(events))
        if status == 503:
            refused = (payload, headers)
            break
        assert status == 202
        acknowledged += [e["n"] for e in events]
    assert refused is not None, "the buffer never filled"
    assert refused[0]["error"] == "buffer_full"
    assert int(refused[1]["Retry-After"]) > 0
    await receiver.start()
    await wait_for(lambda: len(receiver.delivered) == len(acknowledged), timeout=60)
    assert [e["n"] for e in receiver.events()] == acknowledged
    assert await daemon.terminate() == 0


async def test_ssrf_guard_refuses_a_name_that_resolves_to_loopback(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """denyPrivateNetworks checks the resolved address at connect time: localhost is refused."""
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(
                f"http://localhost:{receiver.port}/in", name="guarded", denyPrivateNetworks=True
            ),
            forwarder_config(f"http://localhost:{receiver.port}/in", name="open"),
        ],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(receiver.delivered) == 1)  # the unguarded forwarder gets through

    def refusal() -> str | None:
        for entry in daemon.log_entries():
            if entry.get("event") == "forwarder_failing" and entry["forwarder"] == "guarded":
                return str(entry["error"])
        return None

    message = await wait_for(refusal, message="the guarded forwarder refused")
    assert "private" in message
    assert len(receiver.attempts) == 1
    assert await daemon.terminate() == 0


@pytest.mark.parametrize(
    ("forwarder", "message"),
    [
        ({"headers": {"Authorization": "x"}}, "reserved"),
        ({"headers": {"content-type": "x"}}, "reserved"),
        ({"headers": {"webhook-signature": "x"}}, "reserved"),
        ({"format": "template"}, "needs a template"),
        ({"format": "template", "template": '{"a": {{x}'}, "template"),
        ({"auth": {"type": "basic"}, "token": "no-colon"}, "user:password"),
        ({"batch": {"maxEvents": 0}}, "batch.maxEvents"),
        ({"signingSecret": "whsec_not base64!"}, "signingSecret"),
        ({"uri": "http://127.0.0.1:8080/in", "denyPrivateNetworks": True}, "private address"),
        ({"uri": "http://169.254.169.254/latest", "denyPrivateNetworks": True}, "private address"),
        ({"uri": "http://[::1]/in", "denyPrivateNetworks": True}, "private address"),
    ],
)
async def test_invalid_options_are_config_errors(
    tmp_path: Path, forwarder: dict[str, Any], message: str
) -> None:
    """Options that cannot work fail check-config with a message naming the problem."""
    entry = forwarder_config(forwarder.pop("uri", "https://siem.example/in"), **forwarder)
    config = daemon_config(tmp_path, [entry])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
