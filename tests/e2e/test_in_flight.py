"""Requests in flight, rate limits and their checks, through the real daemon process.

A SIGKILL while several requests are in flight and later batches are already
delivered must lose nothing the daemon acknowledged: the cursor only ever
covers a contiguous prefix of resolved batches. The rate limit shows in
``status`` and ``/metrics``; contradictory options fail ``check-config``.
Receivers are real aiohttp servers on loopback; the daemon is the installed
console script.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.conftest import ReceiverFactory
from tests.e2e.test_metrics_alerts import scrape, status_of, value
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


def delivered_numbers(receiver: ScriptedReceiver) -> set[int]:
    """Every ``n`` the receiver accepted."""
    return {e["n"] for batch in receiver.events() for e in batch}


async def test_sigkill_with_requests_in_flight_loses_no_acknowledged_event(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Killed while batch 1 hangs and later batches are delivered: after restart all 300 arrive."""
    receiver = await make_receiver()
    restarted = asyncio.Event()

    async def first_batch_hangs_until_restart(request: web.Request) -> Reply:
        sent = [e["n"] for e in json.loads(await request.read())]
        if 0 in sent and not restarted.is_set():
            return Reply(200, delay=60)  # still in flight when the daemon is killed
        return Reply(200, delay=0.02)

    receiver.decide = first_batch_hangs_until_restart
    entry = forwarder_config(
        f"{receiver.url}in",
        ordering="relaxed",
        maxInFlight=8,
        batch={"maxEvents": 10, "maxWaitMs": 20},
    )
    daemon = await daemons(daemon_config(tmp_path, [entry])).start()

    acknowledged = list(range(300))
    async with aiohttp.ClientSession() as session:
        for first in range(0, 300, 100):
            lines = "\n".join(json.dumps({"n": n}) for n in range(first, first + 100))
            async with session.post(
                f"{daemon.ingest_url}/v1/events",
                data=lines,
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                assert response.status == 202
    await wait_for(
        lambda: len(delivered_numbers(receiver)) >= 200, message="later batches delivered"
    )
    assert any(request.json()[0]["n"] == 0 for request in receiver.attempts)
    assert not delivered_numbers(receiver) & set(range(10))  # batch 1 is still in flight
    daemon.kill()

    restarted.set()
    await daemon.start()
    await wait_for(
        lambda: delivered_numbers(receiver) >= set(acknowledged),
        timeout=60,
        message="every acknowledged event delivered after the restart",
    )
    assert await daemon.terminate() == 0


async def test_a_rate_limited_forwarder_shows_throttled_in_status_and_metrics(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """requestsPerSecond 4: status says throttled, the throttled counter grows, all arrive."""
    entry = forwarder_config(
        f"{receiver.url}in",
        name="quota",
        ordering="relaxed",
        maxInFlight=8,
        rateLimit={"requestsPerSecond": 4},
    )
    daemon = await daemons(daemon_config(tmp_path, [entry])).start()
    samples = await scrape(daemon)
    assert value(samples, "audit_forwarder_delivery_concurrency_limit", forwarder="quota") == 8
    assert value(samples, "audit_forwarder_delivery_in_flight", forwarder="quota") == 0
    throttled = "audit_forwarder_delivery_throttled_seconds_total"
    assert value(samples, throttled, forwarder="quota") == 0

    lines = "\n".join(json.dumps({"n": n}) for n in range(16))
    status, _, _ = await post_events(daemon.ingest_url, lines, "application/x-ndjson")
    assert status == 202

    async def throttled_now() -> bool:
        return bool((await status_of(daemon, "quota"))["throttled"])

    await wait_for(throttled_now, message="status showing throttled")
    code, table, err = await run_cli("status", "--config", str(daemon.config_path))
    assert code == 0, table + err
    assert "THROTTLED" in table.splitlines()[0]
    await wait_for(lambda: len(receiver.delivered) == 16, message="16 delivered")
    # A burst of 4, then 12 at 4 a second: about 3 s spent waiting.
    assert (await status_of(daemon, "quota"))["throttled_seconds"] >= 2.5
    assert value(await scrape(daemon), throttled, forwarder="quota") >= 2.5
    assert await daemon.terminate() == 0


async def test_check_config_refuses_in_flight_options_that_cannot_hold(tmp_path: Path) -> None:
    """maxInFlight > 1 or adaptive with strict ordering, and out-of-range values, fail clearly."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auditLogForwarders": [
                    {
                        "kind": "webhook",
                        "uri": "https://siem.example/in",
                        "maxInFlight": 8,
                        "concurrency": "adaptive",
                    },
                    {
                        "kind": "webhook",
                        "uri": "https://siem.example/in",
                        "ordering": "relaxed",
                        "maxInFlight": 257,
                        "rateLimit": {"eventsPerSecond": 0},
                    },
                ]
            }
        )
    )

    code, out, err = await run_cli("check-config", "--config", str(config))

    assert code == 2
    report = out + err
    assert "auditLogForwarders[0]: maxInFlight: 8 needs ordering: relaxed" in report
    assert "auditLogForwarders[0]: concurrency: adaptive needs ordering: relaxed" in report
    assert "auditLogForwarders[1].maxInFlight: input should be less than or equal to 256" in report
    assert "auditLogForwarders[1].rateLimit.eventsPerSecond: input should be greater than 0" in (
        report
    )
