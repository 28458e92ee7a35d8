"""Metrics an alert can rely on, scraped from the real daemon.

Every labelled series exists at 0 from the start (so ``increase()`` sees the
first event after a start), duplicates are counted apart from received
events, the ``process_*`` metrics cover both processes with a ``process``
label, and the last success survives a restart.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from forwarder.metrics import REJECTION_REASONS
from tests.conftest import ReceiverFactory
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
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FORWARDER_SERIES = (
    "audit_forwarder_events_delivered_total",
    "audit_forwarder_events_dead_lettered_total",
    "audit_forwarder_delivery_duration_seconds_count",
    "audit_forwarder_ingest_to_delivery_seconds_count",
    "audit_forwarder_last_success_timestamp_seconds",
    "audit_forwarder_pending_events",
    "audit_forwarder_oldest_pending_age_seconds",
)
DEAD_LETTERED = "audit_forwarder_events_dead_lettered_total"
LAST_SUCCESS = "audit_forwarder_last_success_timestamp_seconds"
RECEIVED = "audit_forwarder_events_received_total"
DUPLICATE = "audit_forwarder_events_duplicate_total"


async def scrape(daemon: DaemonProcess) -> Samples:
    """Every sample of /metrics, parsed with prometheus-client's own parser."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the series does not exist."""
    return samples.get((name, frozenset(labels.items())))


def process_start_time(pid: int) -> float:
    """A process's start time in Unix seconds, read from /proc the way ps reads it."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        ticks = float(stat.read().split(b")")[-1].split()[19])
    with open("/proc/stat", "rb") as system:
        boot = next(float(line.split()[1]) for line in system if line.startswith(b"btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


async def status_of(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    """The forwarder's state as `audit-forwarder status --json` shows it."""
    code, out, err = await run_cli("status", "--config", str(daemon.config_path), "--json")
    assert code == 0, out + err
    found: dict[str, Any] = next(f for f in json.loads(out)["forwarders"] if f["name"] == name)
    return found


async def test_a_fresh_daemon_exposes_every_series_at_zero_and_so_does_a_reload(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Before any event, every forwarder, reason and transport series is 0; a reload adds more."""
    siem, archive, audit = [await make_receiver() for _ in range(3)]
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{siem.url}in", name="siem"),
            forwarder_config(f"{archive.url}in", name="archive", enabled=False),
        ],
    )
    daemon = await daemons(config).start()

    samples = await scrape(daemon)
    for forwarder in ("siem", "archive"):
        for name in FORWARDER_SERIES:
            assert value(samples, name, forwarder=forwarder) == 0, (name, forwarder)
    for reason in REJECTION_REASONS:
        assert value(samples, "audit_forwarder_events_rejected_total", reason=reason) == 0, reason
    for transport in ("http", "unix"):
        assert value(samples, RECEIVED, transport=transport) == 0
        assert value(samples, DUPLICATE, transport=transport) == 0
    for result in ("success", "failure"):
        assert value(samples, "audit_forwarder_config_reloads_total", result=result) == 0

    # A reload removes "archive" and adds "audit": the new one starts at 0, the
    # removed one keeps its series until the process ends.
    config["auditLogForwarders"] = [
        forwarder_config(f"{siem.url}in", name="siem"),
        forwarder_config(f"{audit.url}in", name="audit"),
    ]
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)

    async def reloaded() -> Samples | None:
        samples = await scrape(daemon)
        done = value(samples, "audit_forwarder_config_reloads_total", result="success")
        return samples if done and value(samples, DEAD_LETTERED, forwarder="audit") == 0 else None

    samples = await wait_for(reloaded, message="a reload that adds forwarder audit")
    for name in FORWARDER_SERIES:
        assert value(samples, name, forwarder="audit") == 0, name
    assert value(samples, DEAD_LETTERED, forwarder="archive") == 0
    assert value(samples, "audit_forwarder_pending_events", forwarder="archive") is None
    assert await daemon.terminate() == 0


async def test_the_first_dead_letter_after_a_start_takes_its_series_from_0_to_1(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """The dead-letter counter is scraped at 0 after the start, then at 1: increase() sees it."""
    receiver.default = Reply(401, body=b'{"error": "who are you"}')
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    assert value(await scrape(daemon), DEAD_LETTERED, forwarder="siem") == 0

    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202

    async def dead_lettered() -> Samples | None:
        samples = await scrape(daemon)
        return samples if value(samples, DEAD_LETTERED, forwarder="siem") == 1 else None

    samples = await wait_for(dead_lettered, message="one dead letter counted")
    assert value(samples, "audit_forwarder_events_delivered_total", forwarder="siem") == 0
    assert await daemon.terminate() == 0


async def test_duplicates_are_counted_apart_from_received_events_per_transport(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """An id seen before counts in events_duplicate_total, never in events_received_total."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    answers = [
        await post_events(daemon.ingest_url, '{"id": "a", "n": 1}'),
        await post_events(daemon.ingest_url, '{"id": "a", "n": 1}'),
        await post_events("", '{"id": "a", "n": 1}', socket_path=daemon.socket_path),
        await post_events(
            "",
            '{"id": "b"}\n{"id": "a"}\n{"n": 2}',
            "application/x-ndjson",
            socket_path=daemon.socket_path,
        ),
    ]
    assert [(status, payload) for status, payload, _ in answers] == [
        (202, {"accepted": 1, "duplicates": 0}),
        (202, {"accepted": 1, "duplicates": 1}),
        (202, {"accepted": 1, "duplicates": 1}),
        (202, {"accepted": 3, "duplicates": 1}),
    ]
    await wait_for(lambda: len(receiver.delivered) == 3, message="3 stored events delivered")
    samples = await scrape(daemon)
    assert value(samples, RECEIVED, transport="http") == 1
    assert value(samples, DUPLICATE, transport="http") == 1
    assert value(samples, RECEIVED, transport="unix") == 2
    assert value(samples, DUPLICATE, transport="unix") == 2
    assert value(samples, "audit_forwarder_events_delivered_total", forwarder="siem") == 3
    assert await daemon.terminate() == 0


async def test_process_metrics_cover_the_daemon_and_its_delivery_process(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """Every process_* series has process="daemon" or "delivery", each read from its own pid."""
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem")],
        delivery={"process": "separate"},
    )
    daemon = await daemons(config).start()
    assert daemon.process is not None
    (started,) = [e for e in daemon.log_entries() if e.get("event") == "daemon_started"]
    pids = {"daemon": daemon.process.pid, "delivery": int(started["delivery_pid"])}
    assert pids["daemon"] != pids["delivery"]

    samples = await scrape(daemon)
    process_series = [
        (name, dict(labels)) for name, labels in samples if name.startswith("process_")
    ]
    assert process_series, "no process_* metrics"
    for name, labels in process_series:
        assert labels.get("process") in pids, (name, labels)
    for process, pid in pids.items():
        assert value(samples, "process_start_time_seconds", process=process) == process_start_time(
            pid
        ), process
        assert value(samples, "process_cpu_seconds_total", process=process) > 0  # type: ignore[operator]
        assert value(samples, "process_resident_memory_bytes", process=process) > 1_000_000  # type: ignore[operator]
        assert value(samples, "process_open_fds", process=process) > 0  # type: ignore[operator]
    assert await daemon.terminate() == 0


async def test_the_last_success_is_restored_from_the_history_after_a_restart(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """After a restart, the gauge and the status show the last success before any new delivery."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202
    await wait_for(lambda: len(receiver.delivered) == 1, message="one delivery")

    async def succeeded() -> float | None:
        return value(await scrape(daemon), LAST_SUCCESS, forwarder="siem") or None

    before = await wait_for(succeeded, message="the last success gauge set")
    assert await daemon.terminate() == 0

    await daemon.start()
    restored = value(await scrape(daemon), LAST_SUCCESS, forwarder="siem")
    assert restored is not None
    assert abs(restored - before) < 0.5, (restored, before)
    status = await status_of(daemon, "siem")
    assert status["last_success_at"] is not None
    assert abs(datetime.fromisoformat(status["last_success_at"]).timestamp() - before) < 0.5
    assert len(receiver.attempts) == 1  # nothing was delivered since the restart
    assert await daemon.terminate() == 0
