"""End to end: tamper-evident delivery through the real daemon, real receivers and the real CLI.

A key pair comes from ``audit-forwarder keygen``; the daemon delivers to a
loopback receiver with ``integrity`` on; what the receiver got is written out
as a SIEM export would be and checked with ``audit-forwarder verify``. The
chain survives a kill -9 in the middle of a stream (the receiver gets
duplicates, with identical records) and a dead-letter replay (the replayed
events land at their original seqs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from forwarder.integrity.envelope import array_items
from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Received,
    Reply,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


async def key_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A key pair written by the real ``keygen`` command."""
    code, out, err = await run_cli("keygen", "--out", str(tmp_path / "chain"))
    assert code == 0, err
    private, public = tmp_path / "chain.key", tmp_path / "chain.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert "chain.key" in out
    return private, public


def chained_forwarder(url: str, key: Path, **options: Any) -> dict[str, Any]:
    """A forwarder named siem with integrity, JSON batches of up to 5 events."""
    return forwarder_config(
        url,
        name="siem",
        batch={"maxEvents": 5, "maxWaitMs": 50},
        integrity={"mode": "chain", "signingKeyFile": str(key), "checkpointEvery": 10},
        **options,
    )


async def ingest(daemon: DaemonProcess, events: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(event) for event in events)
    status, _, _ = await post_events(daemon.ingest_url, body, "application/x-ndjson")
    assert status == 202


def numbers(requests: list[Received]) -> set[int]:
    """The distinct ``n`` of every event the requests carried."""
    return {event["n"] for request in requests for event in request.json()}


def export(requests: list[Received], path: Path) -> Path:
    """What the receiver got, one request body (a JSON array) per line, as a SIEM export."""
    path.write_bytes(b"\n".join(request.body for request in requests) + b"\n")
    return path


async def verify(public: Path, export_path: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = await run_cli(
        "verify", "--public-key", str(public), str(export_path), "--output", "json"
    )
    assert code in (0, 1), err
    return code, json.loads(out)


async def test_delivered_events_verify_clean_and_tampering_is_found(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """30 events verify clean (signed through 30); a deleted and an altered one are named."""
    private, public = await key_pair(tmp_path)
    siem = await make_receiver()
    daemon = await daemons(daemon_config(tmp_path, [chained_forwarder(siem.url, private)])).start()
    await ingest(daemon, [{"n": n, "user": "alice"} for n in range(30)])
    await wait_for(lambda: len(numbers(siem.delivered)) == 30, message="30 events delivered")
    assert siem.delivered[0].headers["Audit-Chain-First"] == "1"

    clean = export(siem.delivered, tmp_path / "export.ndjson")
    code, report = await verify(public, clean)
    assert code == 0, report
    assert report["chains"][0]["signed_complete_through"] == 30
    code, out, _ = await run_cli("verify", "--public-key", str(public), str(clean))
    assert code == 0
    assert out.strip().endswith("clean")

    # One event per line (raw bytes kept), then remove seq 12 and change a byte of seq 20.
    lines = [item for request in siem.delivered for item in array_items(request.body.decode())]
    by_seq = {json.loads(line)["auditChain"]["seq"]: index for index, line in enumerate(lines)}
    altered = lines[by_seq[20]].replace('"alice"', '"alicf"')
    tampered = [line for index, line in enumerate(lines) if index != by_seq[12]]
    tampered[tampered.index(lines[by_seq[20]])] = altered
    path = tmp_path / "tampered.ndjson"
    path.write_text("\n".join(tampered) + "\n")
    code, report = await verify(public, path)
    assert code == 1
    found = [(f["kind"], f["first_seq"], f["last_seq"]) for f in report["findings"]]
    assert found == [("missing", 12, 12), ("altered", 20, 20)]
    assert report["chains"][0]["signed_complete_through"] == 10
    assert private.read_text().splitlines()[1] not in daemon.output()  # the key is never logged


async def test_a_kill_during_delivery_repeats_records_and_never_forks(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """kill -9 with batches in flight: after restart duplicates carry identical records."""
    private, public = await key_pair(tmp_path)
    siem = await make_receiver()
    stalled = {"on": True}

    async def stall_late_batches(request: web.Request) -> Reply:
        # The first run holds every batch from event 40 on: in flight when it is killed.
        carried = {event["n"] for event in json.loads(await request.read())}
        return Reply(200, delay=30.0 if stalled["on"] and max(carried) >= 40 else 0.0)

    siem.decide = stall_late_batches
    forwarder = chained_forwarder(siem.url, private, ordering="relaxed", maxInFlight=3)
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    await ingest(daemon, [{"n": n} for n in range(100)])
    await wait_for(lambda: 40 in numbers(siem.attempts), message="the stalled batch sent")
    daemon.kill()
    stalled["on"] = False
    await daemon.start()
    await wait_for(lambda: len(numbers(siem.attempts)) == 100, message="100 events delivered")
    await daemon.terminate()

    records: dict[int, set[str]] = {}
    for request in siem.attempts:
        for event in request.json():
            record = event["auditChain"]
            records.setdefault(record["seq"], set()).add(record["prev"] + record["hash"])
    assert sorted(records) == list(range(1, 101))
    assert all(len(variants) == 1 for variants in records.values())  # no fork
    assert sum(len(request.json()) for request in siem.attempts) > 100  # there were repeats
    code, report = await verify(public, export(siem.attempts, tmp_path / "export.ndjson"))
    assert code == 0, report["findings"]
    assert report["chains"][0]["signed_complete_through"] == 100


async def test_replayed_dead_letters_keep_their_place_in_the_chain(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Events refused with 422 are dead letters; replayed, they arrive with their first seqs."""
    private, public = await key_pair(tmp_path)
    siem = await make_receiver()
    refusing = {"on": True}

    async def refuse_poison(request: web.Request) -> Reply:
        events = json.loads(await request.read())
        poisoned = refusing["on"] and any(event.get("poison") for event in events)
        return Reply(422 if poisoned else 200)

    siem.decide = refuse_poison
    config = daemon_config(tmp_path, [chained_forwarder(siem.url, private)])
    daemon = await daemons(config).start()
    poison = {3, 11, 12}
    await ingest(daemon, [{"n": n, "poison": n in poison} for n in range(20)])
    await wait_for(lambda: len(numbers(siem.delivered)) == 17, message="17 good events")
    refusing["on"] = False
    code, out, err = await run_cli(
        "dead-letters", "replay", "--config", str(daemon.config_path), "--forwarder", "siem"
    )
    assert code == 0, err + out
    await wait_for(lambda: len(numbers(siem.delivered)) == 20, message="replays delivered")
    await daemon.terminate()

    seqs = {
        event["n"]: event["auditChain"]["seq"]
        for request in siem.delivered
        for event in request.json()
    }
    assert seqs == {n: n + 1 for n in range(20)}  # the replays at their original places
    code, report = await verify(public, export(siem.delivered, tmp_path / "export.ndjson"))
    assert code == 0, report["findings"]
    assert report["chains"][0]["events"] == 20
