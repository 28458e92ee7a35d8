"""The pending gauge returns to 0 after a burst, in both process models.

A burst of concurrent NDJSON requests is delivered in full to a real
receiver; then ``audit_forwarder_pending_events`` and
``audit_forwarder_oldest_pending_age_seconds`` must read 0, and the admin
API's ``pending`` must agree with the gauge. With ``delivery.process:
separate`` the workers read the SQLite file directly while the daemon's
"appended" notices travel over a socketpair, so a read can see a commit
before its notice: the count must not depend on which comes first.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    DaemonProcess,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]

PENDING = "audit_forwarder_pending_events"
OLDEST_AGE = "audit_forwarder_oldest_pending_age_seconds"
# Bursts shaped like the benchmark's (events of about 500 bytes, big NDJSON
# bodies on a few connections) and a worker that keeps up with them: the
# conditions under which a commit's notice could arrive after its rows were
# read. Each burst is a fresh chance to lose count, and a lost count stays.
BURSTS = 3
REQUESTS = 10
EVENTS_PER_REQUEST = 10_000
CONNECTIONS = 4
BATCH = {"maxEvents": 5000, "maxWaitMs": 50}
PADDING = "x" * 480


async def gauge(daemon: DaemonProcess, name: str, forwarder: str) -> float | None:
    """One forwarder's sample of ``name`` from ``/metrics`` (None when absent)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("forwarder") == forwarder:
                return float(sample.value)
    return None


async def admin_status(daemon: DaemonProcess, forwarder: str) -> dict[str, Any]:
    """The admin API's entry for ``forwarder`` (``GET /v1/forwarders``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.ingest_url}/v1/forwarders") as response,
    ):
        assert response.status == 200
        payload = await response.json()
    (entry,) = [f for f in payload["forwarders"] if f["name"] == forwarder]
    return dict(entry)


def ndjson_bodies(first: int) -> list[bytes]:
    """One burst's request bodies, numbering events from ``first``."""
    bodies = []
    for start in range(first, first + REQUESTS * EVENTS_PER_REQUEST, EVENTS_PER_REQUEST):
        lines = (
            json.dumps({"n": n, "padding": PADDING}).encode()
            for n in range(start, start + EVENTS_PER_REQUEST)
        )
        bodies.append(b"\n".join(lines))
    return bodies


async def send_burst(url: str, bodies: list[bytes]) -> None:
    """POST ``bodies`` over ``CONNECTIONS`` concurrent connections, each waiting for its 202."""
    queue = list(reversed(bodies))

    async def sender(session: aiohttp.ClientSession) -> None:
        while queue:
            async with session.post(
                f"{url}/v1/events",
                data=io.BytesIO(queue.pop()),  # aiohttp warns of big bytes bodies
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                assert response.status == 202, await response.text()

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(sender(session) for _ in range(CONNECTIONS)))


class DeliveredCount:
    """Events a receiver accepted, parsing each request's body once (polled often)."""

    def __init__(self, receiver: ScriptedReceiver) -> None:
        self.receiver = receiver
        self.seen = 0
        self.events = 0

    def __call__(self) -> int:
        for request in self.receiver.delivered[self.seen :]:
            self.events += len(request.json())
        self.seen = len(self.receiver.delivered)
        return self.events

    def reaches(self, events: int) -> Callable[[], bool]:
        """A condition for :func:`wait_for`: at least ``events`` delivered."""
        return lambda: self() >= events


@pytest.mark.parametrize("process", ["separate", "inline"])
async def test_pending_returns_to_zero_after_delivered_bursts(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon, process: str
) -> None:
    """Once every event of the bursts is delivered, pending and oldest age are 0, in status too."""
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem", batch=BATCH)],
        delivery={"process": process},
        logging={"level": "info", "format": "json"},
    )
    daemon = await daemons(config).start()
    delivered = DeliveredCount(receiver)
    per_burst = REQUESTS * EVENTS_PER_REQUEST
    for burst in range(BURSTS):
        await send_burst(daemon.ingest_url, ndjson_bodies(burst * per_burst))
        await wait_for(
            delivered.reaches((burst + 1) * per_burst), timeout=60, message=f"burst {burst} sent"
        )

    async def drained() -> bool:
        return await gauge(daemon, PENDING, "siem") == 0

    await wait_for(drained, timeout=10, message=f"{PENDING} == 0 (it stayed above)")
    assert await gauge(daemon, OLDEST_AGE, "siem") == 0
    status = await admin_status(daemon, "siem")
    assert status["pending"] == 0
    assert status["oldest_pending_age_seconds"] == 0
    assert delivered() == BURSTS * per_burst
    assert await daemon.terminate() == 0
