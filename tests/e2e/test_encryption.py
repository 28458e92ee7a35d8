"""End to end: encryption at rest with the real daemon, its delivery process and the CLI."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from forwarder.buffer.encryption import MAGIC, key_id_of
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
MARKER = "PLAINTEXT-MARKER-51c9"


def write_keys(tmp_path: Path) -> None:
    """Two key files beside the config: k1 as hex text, k2 as raw bytes."""
    (tmp_path / "k1.key").write_text(bytes(range(32)).hex() + "\n")
    (tmp_path / "k2.key").write_bytes(bytes(range(100, 132)))


def encrypted(tmp_path: Path, url: str, ids: list[str], active: str) -> dict[str, Any]:
    """A daemon configuration whose buffer is encrypted with the named keys (relative files)."""
    keys = [{"id": key_id, "file": f"{key_id}.key"} for key_id in ids]
    return daemon_config(
        tmp_path,
        [forwarder_config(url, name="siem", batch={"maxEvents": 100, "maxWaitMs": 20})],
        buffer={"encryption": {"keys": keys, "active": active}},
    )


def delivered(receiver: ScriptedReceiver) -> list[Any]:
    """Every event the receiver accepted, in order (a request carries an array or one event)."""
    found: list[Any] = []
    for request in receiver.delivered:
        body = request.json()
        found.extend(body if isinstance(body, list) else [body])
    return found


def buffer_bytes(tmp_path: Path) -> bytes:
    """The buffer file and its WAL, as a copied volume would hold them."""
    files = [tmp_path / "buffer.db", tmp_path / "buffer.db-wal"]
    return b"".join(path.read_bytes() for path in files if path.exists())


def batch_key_ids(tmp_path: Path) -> list[str]:
    """The key id of every batch in the file, in seq order (WAL included)."""
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        rows = db.execute("SELECT bodies FROM batches ORDER BY first_seq").fetchall()
    return [
        key_id_of(bytes(body)) if bytes(body).startswith(MAGIC) else "plain" for (body,) in rows
    ]


def events(start: int, count: int) -> str:
    """NDJSON events numbered from ``start``, each holding the marker."""
    return "\n".join(json.dumps({"n": n, "secret": MARKER}) for n in range(start, start + count))


async def cli_json(daemon: DaemonProcess, *args: str) -> Any:
    """An operator command against the running daemon, its --json output parsed."""
    code, out, err = await run_cli(*args, "--config", str(daemon.config_path), "--json")
    assert code == 0, err
    return json.loads(out)


async def test_no_plaintext_on_disk_after_kill_or_shutdown_and_the_cli_shows_it_decrypted(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """No marker in file or WAL (kill -9, clean stop); CLI shows dead letters, history in clear."""
    write_keys(tmp_path)
    receiver = await make_receiver()
    await receiver.stop()
    daemon = await daemons(encrypted(tmp_path, f"{receiver.url}in", ["k1"], "k1")).start()
    status, _, _ = await post_events(daemon.ingest_url, events(0, 200), "application/x-ndjson")
    assert status == 202
    daemon.kill()
    assert (tmp_path / "buffer.db-wal").stat().st_size > 0  # the kill left the events in the WAL
    assert MARKER.encode() not in buffer_bytes(tmp_path)

    # Event 0 is refused with an answer echoing it: a dead letter, a history row.
    async def refuse_zero(request: web.Request) -> Reply:
        body = await request.read()
        if b'"n": 0,' in body:
            return Reply(400, body=b"refused " + MARKER.encode())
        return Reply(200)

    receiver.decide = refuse_zero
    await receiver.start()
    await daemon.start()
    await wait_for(lambda: len({e["n"] for e in delivered(receiver)}) == 199)
    assert {e["n"] for e in delivered(receiver)} == set(range(1, 200))
    assert all(e["secret"] == MARKER for e in delivered(receiver))

    dead = await cli_json(daemon, "dead-letters", "list")
    assert [d["response_body"] for d in dead["dead_letters"]] == ["refused " + MARKER]

    async def refused_answers() -> list[str] | None:
        history = await cli_json(daemon, "deliveries", "siem", "--limit", "1000")
        found = [d["response_body"] for d in history["deliveries"] if d["status"] == 400]
        return found or None  # history is committed with a later group: poll for it

    answers = await wait_for(refused_answers, message="the refused attempts in the history")
    assert set(answers) == {"refused " + MARKER}
    assert MARKER.encode() not in buffer_bytes(tmp_path)

    assert await daemon.terminate() == 0
    assert MARKER.encode() not in buffer_bytes(tmp_path)
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        (body,) = db.execute("SELECT body FROM dead_letters").fetchone()
    assert key_id_of(body) == "k1"


async def test_a_rotation_with_a_backlog_delivers_everything_intact(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A k1 backlog, a restart with [k1, k2] active k2, more events: all delivered, in order."""
    write_keys(tmp_path)
    receiver = await make_receiver()
    await receiver.stop()
    url = f"{receiver.url}in"
    first = await daemons(encrypted(tmp_path, url, ["k1"], "k1")).start()
    await post_events(first.ingest_url, events(0, 50), "application/x-ndjson")
    assert await first.terminate() == 0

    second = await daemons(encrypted(tmp_path, url, ["k1", "k2"], "k2")).start()
    await post_events(second.ingest_url, events(50, 50), "application/x-ndjson")
    assert set(batch_key_ids(tmp_path)) == {"k1", "k2"}
    await receiver.start()
    await wait_for(lambda: len(delivered(receiver)) >= 100, timeout=30)
    assert [e["n"] for e in delivered(receiver)] == list(range(100))
    assert all(e["secret"] == MARKER for e in delivered(receiver))
    assert await second.terminate() == 0


async def test_a_missing_or_wrong_key_refuses_the_start_with_exit_code_3(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Pending k1 events: without k1, with encryption off, or with other bytes as k1: exit 3."""
    write_keys(tmp_path)
    receiver = await make_receiver()
    await receiver.stop()
    url = f"{receiver.url}in"
    daemon = await daemons(encrypted(tmp_path, url, ["k1"], "k1")).start()
    await post_events(daemon.ingest_url, events(0, 10), "application/x-ndjson")
    assert await daemon.terminate() == 0

    (tmp_path / "k1-other.key").write_bytes(bytes(range(200, 232)))
    wrong = encrypted(tmp_path, url, ["k1"], "k1")
    wrong["buffer"]["encryption"]["keys"][0]["file"] = "k1-other.key"
    off = daemon_config(tmp_path, [forwarder_config(url, name="siem")])
    cases = [
        (encrypted(tmp_path, url, ["k2"], "k2"), "encrypted with key id k1"),
        (off, "encrypted with key id k1, and buffer.encryption is not set"),
        (wrong, "the configured key 'k1' does not open"),
    ]
    for config, expected in cases:
        path = tmp_path / "refused.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out, err = await run_cli("run", "--config", str(path))
        assert code == 3, out + err
        assert expected in err
        code, out, err = await run_cli("buffer", "check", "--config", str(path))
        assert code == 3, out + err
        assert expected.split(",")[0].split(" (")[0] in out + err
    assert set(batch_key_ids(tmp_path)) == {"k1"}  # refusing rewrote nothing


class Load:
    """Posts numbered 40-event bodies until stopped; remembers what was acknowledged."""

    def __init__(self) -> None:
        self.acknowledged: dict[int, str] = {}
        self.next_n = 0

    def reached(self, count: int) -> bool:
        """Whether ``count`` events have been acknowledged."""
        return len(self.acknowledged) >= count

    async def run(self, url: str, stop: asyncio.Event) -> None:
        """Post until ``stop`` is set or the daemon goes away."""
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                first, self.next_n = self.next_n, self.next_n + 40
                sent = {n: f"{MARKER}-{n}" for n in range(first, first + 40)}
                body = "\n".join(json.dumps({"n": n, "secret": text}) for n, text in sent.items())
                try:
                    async with session.post(
                        f"{url}/v1/events",
                        data=body,
                        headers={"Content-Type": "application/x-ndjson"},
                    ) as response:
                        if response.status == 202:
                            self.acknowledged.update(sent)
                except aiohttp.ClientError:
                    return


async def test_random_kills_under_load_lose_and_alter_nothing_acknowledged(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """kill -9 at random moments while events flow: every acknowledged event arrives intact."""
    write_keys(tmp_path)
    receiver = await make_receiver()
    receiver.default = Reply(200, delay=0.005)
    daemon = daemons(encrypted(tmp_path, f"{receiver.url}in", ["k1", "k2"], "k2"))
    load = Load()
    rng = random.Random(1234)
    for _ in range(3):
        await daemon.start()
        stop = asyncio.Event()
        wanted = len(load.acknowledged) + 200
        task = asyncio.create_task(load.run(daemon.ingest_url, stop))
        await wait_for(functools.partial(load.reached, wanted), message="load flowing")
        # Not a wait for anything: the kill lands at a random moment of the load.
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        daemon.kill()
        stop.set()
        await task
    await daemon.start()
    acknowledged = load.acknowledged
    await wait_for(
        lambda: {e["n"] for e in delivered(receiver)} >= set(acknowledged),
        timeout=60,
        message="every acknowledged event delivered",
    )
    for event in delivered(receiver):
        if event["n"] in acknowledged:
            assert event["secret"] == acknowledged[event["n"]]
    assert await daemon.terminate() == 0
    assert MARKER.encode() not in buffer_bytes(tmp_path)


async def test_check_config_names_what_is_wrong_with_the_encryption_section(
    tmp_path: Path,
) -> None:
    """A missing key file, or an active id that is not a key: exit code 2 naming the place."""
    write_keys(tmp_path)
    url = "http://127.0.0.1:9/in"
    cases = [
        (encrypted(tmp_path, url, ["k1", "k3"], "k1"), "buffer.encryption.keys[1].file: key file"),
        (encrypted(tmp_path, url, ["k1", "k2"], "k9"), "active is 'k9', not one of the keys"),
    ]
    for config, expected in cases:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out, err = await run_cli("check-config", "--config", str(path))
        assert code == 2, out + err
        assert expected in err
