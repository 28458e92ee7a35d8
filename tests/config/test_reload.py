"""Live configuration reload of the real daemon: SIGHUP, file changes, symlink swaps, bad input."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    stored_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]


def count_logs(daemon: DaemonProcess, event: str) -> int:
    """How many log lines of ``event`` the daemon printed."""
    return sum(1 for entry in daemon.log_entries() if entry.get("event") == event)


async def reloaded(daemon: DaemonProcess, before: int) -> dict[str, Any]:
    """Wait for the next config_reloaded line and return it."""
    await wait_for(lambda: count_logs(daemon, "config_reloaded") > before, message="a reload")
    return [e for e in daemon.log_entries() if e.get("event") == "config_reloaded"][-1]


async def reload_metric(daemon: DaemonProcess, result: str) -> float:
    """audit_forwarder_config_reloads_total{result=...} from /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        text = await response.text()
    prefix = f'audit_forwarder_config_reloads_total{{result="{result}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


async def test_sighup_adds_removes_and_changes_forwarders(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """After SIGHUP, a removed forwarder gets nothing, a changed one uses its new URI and token."""
    old_a, new_a, b, c = [await make_receiver() for _ in range(4)]
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{old_a.url}a", name="a", token="OLD"),
            forwarder_config(f"{b.url}b", name="b"),
        ],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(old_a.delivered) == 1 and len(b.delivered) == 1)

    config["auditLogForwarders"] = [
        forwarder_config(f"{new_a.url}a2", name="a", token="NEW"),
        forwarder_config(f"{c.url}c", name="c"),
    ]
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    entry = await reloaded(daemon, 0)
    assert entry["added"] == ["c"]
    assert entry["removed"] == ["b"]
    assert entry["changed"] == ["a"]

    await post_events(daemon.ingest_url, '{"n": 2}')
    await wait_for(lambda: len(new_a.delivered) == 1 and len(c.delivered) == 1)
    assert new_a.delivered[0].headers["Authorization"] == "Bearer NEW"
    assert new_a.delivered[0].path == "/a2"
    assert len(old_a.delivered) == 1
    assert len(b.delivered) == 1
    assert await reload_metric(daemon, "success") == 1
    assert await daemon.terminate() == 0


async def test_kubernetes_style_symlink_swap_is_picked_up_without_a_signal(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A ConfigMap update (an atomic ..data symlink swap) is applied by the file watcher."""
    first, second = await make_receiver(), await make_receiver()
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str, config: dict[str, Any]) -> None:
        target = mount / f"..{version}"
        target.mkdir()
        (target / "config.yaml").write_text(yaml.safe_dump(config))
        (mount / "..data_tmp").symlink_to(target.name)
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap

    config = daemon_config(tmp_path, [forwarder_config(f"{first.url}in", name="siem")])
    publish("v1", config)
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    daemon = daemons(config)
    daemon.config_path = mount / "config.yaml"
    await daemon.start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(first.delivered) == 1)

    config["auditLogForwarders"] = [forwarder_config(f"{second.url}in", name="siem")]
    publish("v2", config)
    entry = await reloaded(daemon, 0)
    assert entry["changed"] == ["siem"]
    await post_events(daemon.ingest_url, '{"n": 2}')
    await wait_for(lambda: len(second.delivered) == 1)
    assert second.events() == [{"n": 2}]
    assert await daemon.terminate() == 0


async def test_invalid_new_config_is_refused_and_the_old_one_stays(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A broken file is logged with its problem and counted; delivery goes on unchanged."""
    receiver = await make_receiver()
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    daemon = await daemons(config).start()
    broken = dict(config, auditLogForwarders=[{"kind": "kafka", "uri": "https://x"}])
    daemon.config_path.write_text(yaml.safe_dump(broken))
    daemon.signal(signal.SIGHUP)
    await wait_for(lambda: count_logs(daemon, "config_reload_failed") >= 1)
    failure = next(e for e in daemon.log_entries() if e.get("event") == "config_reload_failed")
    assert any("the kinds are webhook, nats" in problem for problem in failure["problems"])
    assert await reload_metric(daemon, "failure") >= 1
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert await daemon.terminate() == 0


async def test_changed_forwarder_keeps_its_pending_events(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Events pending for a forwarder whose URI changes are delivered to the new URI."""
    dead, alive = await make_receiver(), await make_receiver()
    await dead.stop()
    config = daemon_config(tmp_path, [forwarder_config(f"{dead.url}in", name="siem")])
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, json.dumps([{"n": n} for n in range(5)]))
    await wait_for(lambda: count_logs(daemon, "forwarder_failing") >= 1)
    config["auditLogForwarders"] = [forwarder_config(f"{alive.url}in", name="siem")]
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    await reloaded(daemon, 0)
    await wait_for(lambda: len(alive.delivered) == 5)
    assert [e["n"] for e in alive.events()] == list(range(5))
    assert await daemon.terminate() == 0


async def test_removed_forwarder_no_longer_holds_back_the_cleanup(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Removing a forwarder with a backlog lets the buffer delete what the others delivered."""
    healthy, dead = await make_receiver(), await make_receiver()
    await dead.stop()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{healthy.url}in", name="healthy"),
            forwarder_config(f"{dead.url}in", name="stuck"),
        ],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, json.dumps([{"n": n} for n in range(10)]))
    await wait_for(lambda: len(healthy.delivered) == 10)

    def events_in_buffer() -> int:
        return len(stored_events(tmp_path / "buffer.db"))

    assert events_in_buffer() == 10  # held back by "stuck"
    config["auditLogForwarders"] = config["auditLogForwarders"][:1]
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    await reloaded(daemon, 0)
    await wait_for(lambda: events_in_buffer() == 0, message="the backlog of the removed forwarder")
    assert await daemon.terminate() == 0


async def test_listener_changes_need_a_restart_and_logging_level_applies(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A new ingest port is reported as needing a restart; the old listener keeps working."""
    receiver = await make_receiver()
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem")],
        logging={"level": "info", "format": "json"},
    )
    daemon = await daemons(config).start()
    config["ingest"] = {**config["ingest"], "port": 1}
    config["logging"] = {"level": "warning", "format": "json"}
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    await wait_for(lambda: count_logs(daemon, "config_restart_required") == 1)
    restart = next(e for e in daemon.log_entries() if e.get("event") == "config_restart_required")
    assert restart["keys"] == ["ingest.port"]
    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert await daemon.terminate() == 0
    # The new level took effect: the info lines after the reload are gone.
    assert count_logs(daemon, "config_reloaded") == 0
    assert count_logs(daemon, "daemon_stopped") == 0


async def test_rotated_token_file_is_picked_up(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Rewriting a tokenFile (a Secret update) changes the token sent, without a signal."""
    receiver = await make_receiver()
    token_file = tmp_path / "token"
    token_file.write_text("FIRST\n")
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem", tokenFile=str(token_file))],
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(receiver.delivered) == 1)
    replacement = tmp_path / "token.new"
    replacement.write_text("SECOND\n")
    os.replace(replacement, token_file)
    await reloaded(daemon, 0)
    await post_events(daemon.ingest_url, '{"n": 2}')
    await wait_for(lambda: len(receiver.delivered) == 2)
    assert [r.headers["Authorization"] for r in receiver.delivered] == [
        "Bearer FIRST",
        "Bearer SECOND",
    ]
    assert await daemon.terminate() == 0
    assert "SECOND" not in daemon.output()


async def test_rotated_integrity_signing_key_file_is_picked_up(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Replacing integrity.signingKeyFile (a Secret update) reloads without a signal: later
    checkpoints are signed with the new key, and the chain goes on where it was."""
    receiver = await make_receiver()
    for name in ("first", "second"):
        code, _, err = await run_cli("keygen", "--out", str(tmp_path / name))
        assert code == 0, err
    key_file = tmp_path / "signing.key"
    key_file.write_bytes((tmp_path / "first.key").read_bytes())
    integrity = {"mode": "chain", "signingKeyFile": str(key_file), "checkpointEvery": 1}
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in", name="siem", integrity=integrity)]
    )
    daemon = await daemons(config).start()
    await post_events(daemon.ingest_url, '{"n": 1}')
    await wait_for(lambda: len(receiver.delivered) == 1)
    replacement = tmp_path / "signing.new"
    replacement.write_bytes((tmp_path / "second.key").read_bytes())
    os.replace(replacement, key_file)
    await reloaded(daemon, 0)
    await post_events(daemon.ingest_url, '{"n": 2}')
    await wait_for(lambda: len(receiver.delivered) == 2)
    records = [request.json()["auditChain"] for request in receiver.delivered]
    assert [record["seq"] for record in records] == [1, 2]
    assert records[0]["key"] != records[1]["key"]
    assert await daemon.terminate() == 0


async def test_a_changed_buffer_encryption_is_reported_as_needing_a_restart(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Turning buffer.encryption on at a reload is logged as restart-required, not applied."""
    receiver = await make_receiver()
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in", name="siem")])
    config["logging"] = {"level": "info", "format": "json"}
    daemon = await daemons(config).start()
    (tmp_path / "buffer.key").write_text(os.urandom(32).hex())
    config["buffer"] = {**config["buffer"], "encryption": {"keyFile": str(tmp_path / "buffer.key")}}
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    await wait_for(lambda: count_logs(daemon, "config_restart_required") == 1)
    restart = next(e for e in daemon.log_entries() if e.get("event") == "config_restart_required")
    assert restart["keys"] == ["buffer.encryption"]
    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert await daemon.terminate() == 0
