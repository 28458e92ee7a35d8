"""Backpressure end to end: ``buffer.maxBytes`` follows what the real daemon holds.

The real ``audit-forwarder`` process, a real aiohttp receiver on loopback and
a real SQLite file. The limits are set far below the size the WAL reaches
between checkpoints (16 MiB), so a limit compared with the file size would
refuse ingest here although almost nothing is pending.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    DaemonProcess,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
EVENT_PAD = "p" * 1000


def request_body(first: int, count: int) -> str:
    """A JSON array of ``count`` numbered events of about 1 KB each."""
    return json.dumps([{"n": first + i, "pad": EVENT_PAD} for i in range(count)])


async def scrape(daemon: DaemonProcess) -> dict[tuple[str, str], float]:
    """Every sample of /metrics by name and labels (as ``k=v,...``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def held(samples: dict[tuple[str, str], float]) -> dict[str, float]:
    """``audit_forwarder_buffer_held_bytes`` by kind."""
    return {
        labels.removeprefix("kind="): value
        for (name, labels), value in samples.items()
        if name == "audit_forwarder_buffer_held_bytes"
    }


def delivered_numbers(receiver: ScriptedReceiver) -> list[int]:
    """The ``n`` of every event the receiver took, in arrival order."""
    return [event["n"] for body in receiver.events() for event in body]


async def test_steady_ingest_far_beyond_max_bytes_is_never_refused(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """With a healthy receiver, 8 MB sent through a 1 MiB maxBytes are all accepted, no 503."""
    limit = 1024 * 1024
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", batch={"maxEvents": 100, "maxWaitMs": 20})],
        buffer={"maxBytes": limit},
    )
    daemon = await daemons(config).start()
    sent = 0
    for _ in range(80):
        # Continuous, with at most one request (~100 KB) in flight to the receiver:
        # what is pending stays a tenth of the limit while the file grows past it.
        await wait_for(
            lambda at_least=sent - 100: len(delivered_numbers(receiver)) >= at_least,
            message="the receiver to keep up",
        )
        status, payload, _ = await post_events(daemon.ingest_url, request_body(sent, 100))
        assert (status, payload) == (202, {"accepted": 100, "duplicates": 0}), (
            f"request {sent // 100} of a steady stream refused"
        )
        sent += 100

    await wait_for(lambda: len(delivered_numbers(receiver)) == sent, message="the last events")
    assert delivered_numbers(receiver) == list(range(sent))
    samples = await scrape(daemon)
    assert set(held(samples)) == {"pending_events", "dead_letters", "history"}
    assert sum(held(samples).values()) < limit
    assert samples["audit_forwarder_buffer_bytes", ""] > 0  # the disk, exposed apart
    assert await daemon.terminate() == 0


async def test_ingest_reopens_within_seconds_once_a_backlog_drains(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """A receiver outage fills maxBytes (503 buffer_full); once delivered, ingest takes events."""
    await receiver.stop()
    limit = 1024 * 1024
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", batch={"maxEvents": 100, "maxWaitMs": 20})],
        buffer={"maxBytes": limit},
    )
    daemon = await daemons(config).start()
    acknowledged = 0
    refused = None
    for _ in range(100):
        status, payload, headers = await post_events(
            daemon.ingest_url, request_body(acknowledged, 50)
        )
        if status == 503:
            refused = (payload, headers)
            break
        assert status == 202
        acknowledged += 50
    assert refused is not None, "the buffer never filled"
    assert refused[0]["error"] == "buffer_full"
    assert int(refused[1]["Retry-After"]) > 0
    # The limit was reached by what is pending, not by the file.
    assert acknowledged * len(EVENT_PAD) >= limit * 0.9

    await receiver.start()
    await wait_for(
        lambda: len(delivered_numbers(receiver)) == acknowledged,
        timeout=60,
        message="the backlog to drain",
    )

    async def accepted() -> bool:
        status, _, _ = await post_events(daemon.ingest_url, request_body(acknowledged, 1))
        return status == 202

    await wait_for(accepted, timeout=5, interval=0.2, message="ingest to reopen")
    await wait_for(
        lambda: len(delivered_numbers(receiver)) == acknowledged + 1, message="the new event"
    )
    assert delivered_numbers(receiver) == list(range(acknowledged + 1))
    samples = await scrape(daemon)
    assert held(samples)["pending_events"] + held(samples)["dead_letters"] < limit
    assert samples["audit_forwarder_events_rejected_total", "reason=buffer_full"] >= 1
    assert await daemon.terminate() == 0


async def test_delivery_history_never_fills_max_bytes_for_good(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """One history row per delivered event outgrows maxBytes; the oldest give way, no 503."""
    limit = 20_000
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], buffer={"maxBytes": limit}
    )
    daemon = await daemons(config).start()
    sent = 0
    for _ in range(60):
        events = json.dumps([{"n": sent + i} for i in range(10)])
        status, _, _ = await post_events(daemon.ingest_url, events)
        assert status == 202, f"request {sent // 10} refused"
        sent += 10
        await wait_for(lambda at_least=sent: len(receiver.delivered) >= at_least)

    assert [body["n"] for body in receiver.events()] == list(range(sent))
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        (attempts,) = conn.execute("SELECT count(*) FROM delivery_attempts").fetchone()
    finally:
        conn.close()
    assert 0 < attempts < sent  # recorded, and the oldest deleted to make room
    assert any(e.get("event") == "buffer_history_trimmed" for e in daemon.log_entries())
    assert await daemon.terminate() == 0
