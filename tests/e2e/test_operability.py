"""Operability end to end: metrics after real traffic, probes, logs, history, the operator CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from forwarder import __version__
from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape_text(daemon: DaemonProcess) -> str:
    """GET /metrics from the running daemon."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def scrape(daemon: DaemonProcess) -> Samples:
    """Every sample of /metrics, parsed with prometheus-client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(await scrape_text(daemon)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the series does not exist."""
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_match_real_successes_failures_timeouts_and_dead_letters(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """After success, 503, timeout and 400 traffic, every metric says exactly what happened."""
    ok, flaky, slow, bad = [await make_receiver() for _ in range(4)]
    flaky.respond(Reply(503))
    slow.respond(Reply(200, delay=1.0))  # longer than timeoutSeconds: a timeout
    bad.default = Reply(400, body=b'{"error": "schema"}')
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{ok.url}in", name="ok"),
            forwarder_config(f"{flaky.url}in", name="flaky"),
            forwarder_config(f"{slow.url}in", name="slow", timeoutSeconds=0.3),
            forwarder_config(f"{bad.url}in", name="bad"),
        ],
    )
    daemon = await daemons(config).start()
    for n in range(3):
        assert (await post_events(daemon.ingest_url, json.dumps({"n": n})))[0] == 202
    status, _, _ = await post_events(
        "", '{"n": 3}\n{"n": 4}', "application/x-ndjson", socket_path=daemon.socket_path
    )
    assert status == 202
    assert (await post_events(daemon.ingest_url, "{nope"))[0] == 400
    assert (await post_events(daemon.ingest_url, "x", "text/plain"))[0] == 415

    for name, receiver in (("ok", ok), ("flaky", flaky), ("slow", slow)):
        await wait_for(
            lambda r=receiver: len(r.delivered) == 5,  # type: ignore[misc]
            message=f"5 deliveries at {name} (it has {len(receiver.delivered)} of"
            f" {len(receiver.attempts)} attempts when the wait began)",
        )

    async def settled() -> Samples | None:
        samples = await scrape(daemon)
        done = value(samples, "audit_forwarder_events_dead_lettered_total", forwarder="bad")
        idle = value(samples, "audit_forwarder_buffer_events") == 0
        return samples if done == 5 and idle else None

    samples = await wait_for(settled, message="dead letters counted and buffer purged")
    assert value(samples, "audit_forwarder_events_received_total", transport="http") == 3
    assert value(samples, "audit_forwarder_events_received_total", transport="unix") == 2
    rejected = "audit_forwarder_events_rejected_total"
    assert value(samples, rejected, reason="malformed") == 1
    assert value(samples, rejected, reason="unsupported_media_type") == 1
    for name in ("ok", "flaky", "slow"):
        assert value(samples, "audit_forwarder_events_delivered_total", forwarder=name) == 5
        assert (
            value(samples, "audit_forwarder_ingest_to_delivery_seconds_count", forwarder=name) == 5
        )
        assert value(samples, "audit_forwarder_last_success_timestamp_seconds", forwarder=name) > 0  # type: ignore[operator]
        assert value(samples, "audit_forwarder_pending_events", forwarder=name) == 0
        assert value(samples, "audit_forwarder_oldest_pending_age_seconds", forwarder=name) == 0
    attempts = "audit_forwarder_delivery_attempts_total"
    assert value(samples, attempts, forwarder="ok", outcome="success", code="200") == 5
    assert value(samples, attempts, forwarder="flaky", outcome="retry", code="503") == 1
    assert value(samples, attempts, forwarder="flaky", outcome="success", code="200") == 5
    assert value(samples, attempts, forwarder="slow", outcome="retry", code="timeout") == 1
    assert value(samples, attempts, forwarder="slow", outcome="success", code="200") == 5
    assert value(samples, attempts, forwarder="bad", outcome="dead_letter", code="400") == 5
    duration = "audit_forwarder_delivery_duration_seconds_count"
    assert value(samples, duration, forwarder="flaky") == 6  # every attempt is timed
    assert value(samples, duration, forwarder="slow") == 6
    assert value(samples, "audit_forwarder_events_delivered_total", forwarder="bad") == 0
    assert value(samples, "audit_forwarder_pending_events", forwarder="bad") == 0
    assert value(samples, "audit_forwarder_build_info", version=__version__) == 1
    assert value(samples, "audit_forwarder_buffer_bytes") > 0  # type: ignore[operator]
    assert await daemon.terminate() == 0


async def test_pending_and_oldest_age_grow_while_a_receiver_is_down(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """With the receiver down, pending counts the backlog and the oldest age rises; both reset."""
    receiver = await make_receiver()
    await receiver.stop()
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '[{"n": 1}, {"n": 2}, {"n": 3}]')

    async def aged() -> Samples | None:
        samples = await scrape(daemon)
        age = value(samples, "audit_forwarder_oldest_pending_age_seconds", forwarder="siem")
        return samples if age is not None and age >= 0.5 else None

    samples = await wait_for(aged, message="oldest pending age to reach 0.5 s")
    assert value(samples, "audit_forwarder_pending_events", forwarder="siem") == 3
    assert value(samples, "audit_forwarder_buffer_events") == 3
    await receiver.start()
    await wait_for(lambda: len(receiver.delivered) == 3)

    async def drained() -> bool:
        samples = await scrape(daemon)
        return (
            value(samples, "audit_forwarder_pending_events", forwarder="siem") == 0
            and value(samples, "audit_forwarder_oldest_pending_age_seconds", forwarder="siem") == 0
        )

    await wait_for(drained, message="pending back to 0")
    assert await daemon.terminate() == 0


async def test_scrape_output_passes_promtool_check_metrics(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """The exposition passes `promtool check metrics` after real traffic."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs the Debian package prometheus"
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await post_events(daemon.ingest_url, "{bad")
    await wait_for(lambda: len(receiver.delivered) == 1)
    text = await scrape_text(daemon)
    checked = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await checked.communicate(text.encode())
    assert checked.returncode == 0, out.decode()
    assert await daemon.terminate() == 0


async def test_a_real_prometheus_server_reads_events_delivered(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """Prometheus scrapes the daemon and its query API returns the delivered count."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: `make test` installs the Debian package"
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '[{"n": 1}, {"n": 2}, {"n": 3}]')
    await wait_for(lambda: len(receiver.delivered) == 3)

    target = daemon.metrics_url.removeprefix("http://")
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "audit-forwarder", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = 'audit_forwarder_events_delivered_total{forwarder="siem"}'
    try:

        async def delivered_in_prometheus() -> str | None:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}
                    ) as response,
                ):
                    payload: dict[str, Any] = await response.json()
            except aiohttp.ClientError:
                return None
            results = payload.get("data", {}).get("result", [])
            return str(results[0]["value"][1]) if results else None

        assert await wait_for(delivered_in_prometheus, timeout=60) == "3"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert await daemon.terminate() == 0


async def test_readyz_is_503_while_starting_and_healthz_follows_the_database(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """While the buffer is locked at start, /readyz is 503; it turns 200 once the lock goes."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = daemons(config)
    await daemon.start()
    assert await daemon.probe("/healthz") == 200
    assert await daemon.terminate() == 0

    blocker = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the daemon's first write waits on this lock
    try:
        await daemon.start(wait_ready=False)

        async def not_ready() -> bool:
            return await daemon.probe("/readyz") == 503

        await wait_for(not_ready, message="/readyz 503 during start")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await daemon.wait_started()
    assert await daemon.probe("/readyz") == 200
    assert await daemon.probe("/healthz") == 200
    assert await daemon.terminate() == 0


async def test_logs_are_json_lines_with_stable_keys_and_never_hold_secrets_or_bodies(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A real run with failures at debug level logs state changes but no token or event body."""
    token, ingest_token, marker = "TOK-9f3a-secret", "INGEST-77c1-secret", "BODY-MARKER-5e1d"
    good, refusing = await make_receiver(), await make_receiver()
    good.respond(Reply(503), Reply(503))
    refusing.default = Reply(401, body=f'{{"echo": "{token}"}}'.encode())
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{good.url}in", name="siem", token=token),
            forwarder_config(f"{refusing.url}in", name="refusing", token=token),
        ],
        ingest={"token": ingest_token},
    )
    daemon = await daemons(config).start()
    auth = {"Authorization": f"Bearer {ingest_token}"}
    body = json.dumps({"event_type": "approval.created", "secret": marker})
    assert (await post_events(daemon.ingest_url, body, headers=auth))[0] == 202
    assert (await post_events(daemon.ingest_url, body, headers={"Authorization": "Bearer x"}))[
        0
    ] == 401
    await wait_for(lambda: len(good.delivered) == 1)
    await wait_for(
        lambda: any(e.get("event") == "events_dead_lettered" for e in daemon.log_entries())
    )
    assert await daemon.terminate() == 0

    output = daemon.output()
    assert token not in output
    assert ingest_token not in output
    assert marker not in output
    entries = daemon.log_entries()
    assert len(entries) == len(output.strip().splitlines())  # every line is one JSON object
    for entry in entries:
        assert {"event", "level", "timestamp"} <= entry.keys()
    events = {e["event"]: e for e in entries}
    started = events["daemon_started"]
    assert {f["name"] for f in started["forwarders"]} == {"siem", "refusing"}
    assert all(f["host"].startswith("127.0.0.1:") for f in started["forwarders"])
    failing = [e for e in entries if e["event"] == "forwarder_failing"]
    assert {(e["forwarder"], e["status"]) for e in failing} >= {
        ("siem", "503"),
        ("refusing", "401"),
    }
    assert all("attempt" in e for e in failing)
    assert events["forwarder_recovered"]["forwarder"] == "siem"
    assert events["events_dead_lettered"]["forwarder"] == "refusing"
    assert "daemon_stopped" in events


async def test_cli_status_deliveries_test_and_send_against_the_running_daemon(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """The operator CLI reads state, history and the test button through the admin API."""
    siem = await make_receiver()
    siem.respond(Reply(503, body=b"busy"))
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{siem.url}in", name="siem", token="THE-SECRET-TOKEN")],
        ingest={"token": "INGEST-TOKEN"},
    )
    daemon = await daemons(config).start()
    conf = str(daemon.config_path)

    events_file = tmp_path / "events.ndjson"
    events_file.write_text('{"event_type": "a.b", "n": 1}\n{"event_type": "a.c", "n": 2}\n')
    code, out, _ = await run_cli("send", "--config", conf, str(events_file))
    assert (code, out.strip()) == (0, "accepted 2 event(s), 0 duplicate(s)")
    code, out, _ = await run_cli("send", "--config", conf, "--json", "-", stdin=b'{"n": 3}')
    assert code == 0
    assert json.loads(out) == {"accepted": 1, "duplicates": 0}
    await wait_for(lambda: len(siem.delivered) == 3)

    async def history_complete() -> dict[str, Any] | None:
        code, out, _ = await run_cli("deliveries", "siem", "--config", conf, "--json")
        payload: dict[str, Any] = json.loads(out)
        return payload if code == 0 and len(payload["deliveries"]) == 4 else None

    history = await wait_for(history_complete, message="4 attempts in the history")
    newest_first = history["deliveries"]
    assert [d["outcome"] for d in newest_first] == ["success", "success", "success", "retry"]
    assert newest_first[-1]["code"] == "503"
    assert newest_first[-1]["response_body"] == "busy"
    assert newest_first[-1]["attempt"] == 1
    assert newest_first[-2]["attempt"] == 2
    code, out, _ = await run_cli("deliveries", "siem", "--config", conf, "--limit", "2")
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["TIME", "ATTEMPT", "OUTCOME", "CODE"]
    assert len(out.strip().splitlines()) == 3

    code, out, _ = await run_cli("status", "--config", conf, "--json")
    assert code == 0
    (status,) = json.loads(out)["forwarders"]
    assert status["name"] == "siem"
    assert status["pending"] == 0
    assert status["consecutive_failures"] == 0
    assert status["last_attempt"]["status"] == 200
    assert status["host"] == siem.url.removeprefix("http://").rstrip("/")
    code, out, _ = await run_cli("status", "--config", conf)
    assert code == 0
    assert "siem" in out.splitlines()[1]

    code, out, err = await run_cli("test", "siem", "--config", conf, "--json")
    assert code == 0, out + err
    invocation = json.loads(out)
    assert invocation["ok"] is True
    assert invocation["request"]["headers"]["Authorization"] == "Bearer ***"
    assert json.loads(invocation["request"]["body"])["event_type"] == "forwarder.test"
    assert invocation["response"]["status"] == 200
    assert siem.delivered[-1].json()["event_type"] == "forwarder.test"
    assert siem.delivered[-1].headers["Authorization"] == "Bearer THE-SECRET-TOKEN"
    assert "THE-SECRET-TOKEN" not in out
    siem.respond(Reply(500, body=b"down for maintenance"))
    code, out, _ = await run_cli("test", "siem", "--config", conf)
    assert code == 1
    assert "FAILED" in out
    assert "down for maintenance" in out
    code, out, err = await run_cli("test", "nope", "--config", conf)
    assert code == 1
    assert "no forwarder named 'nope'" in err
    assert await daemon.terminate() == 0


@pytest.mark.parametrize("command", [["status"], ["deliveries", "x"], ["test", "x"], ["send"]])
async def test_cli_against_a_daemon_that_is_not_running_says_so_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """Every operator command against a stopped daemon prints one line and exits 1."""
    config = daemon_config(tmp_path, [forwarder_config("http://127.0.0.1:9/in")])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = await run_cli(*command, "--config", str(path), stdin=b'{"n": 1}')
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "cannot reach the daemon" in err
    assert "Traceback" not in err


async def test_admin_api_requires_the_ingest_token(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """With an ingest token set, the admin API answers 401 without it."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")], ingest={"token": "T"})
    daemon = await daemons(config).start()
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("GET", "/v1/forwarders"),
            ("GET", "/v1/forwarders/webhook-0/deliveries"),
            ("POST", "/v1/forwarders/webhook-0/test"),
        ):
            async with session.request(method, f"{daemon.ingest_url}{path}") as response:
                assert response.status == 401
                assert (await response.json())["error"] == "unauthorized"
        async with session.get(
            f"{daemon.ingest_url}/v1/forwarders/webhook-0/deliveries?limit=0",
            headers={"Authorization": "Bearer T"},
        ) as response:
            assert response.status == 400
    assert len(receiver.attempts) == 0  # no test event was sent without the token
    assert await daemon.terminate() == 0
