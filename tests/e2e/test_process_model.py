"""The process model (``delivery.process``): one process or two, the same guarantees.

Each mode runs the real daemon: it delivers, a SIGKILL loses no acknowledged
event, a reload applies, and ``process_*`` metrics name exactly the processes
that exist. With a separate delivery process, its death stops the daemon
non-zero rather than leave it accepting events nobody delivers. The daemon's
process loads only the libraries its configuration uses (``forwarder/memory.py``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
MODES = ("inline", "separate", "auto")
# Installed, but not for a daemon without integrity, encryption or NATS forwarders.
UNUSED_LIBRARIES = {"cryptography", "nats", "rich", "pygments"}


def loaded_packages(output: str) -> set[str]:
    """Packages with a submodule in the interpreter's ``import time:`` lines
    (PYTHONPROFILEIMPORTTIME). A package's own line does not count: it is also
    printed for an import that fails, as the daemon makes rich's."""
    names = (
        line.rsplit("|", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    )
    return {name.split(".")[0] for name in names if "." in name}


def started_line(daemon: DaemonProcess) -> dict[str, object]:
    """The daemon_started log line of the latest start."""
    (line,) = [e for e in daemon.log_entries() if e.get("event") == "daemon_started"]
    return line


def children(pid: int) -> list[str]:
    """The pids of a process's children, from every thread's /proc children list."""
    return [
        child
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


async def process_labels(daemon: DaemonProcess) -> set[str]:
    """The ``process`` label values of every process_* series on /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}/metrics") as response,
    ):
        text = await response.text()
    return {
        sample.labels["process"]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("process_")
        for sample in family.samples
    }


async def post_numbered(url: str, first: int, count: int) -> list[int]:
    """POST ``count`` numbered events as NDJSON; the numbers acknowledged (202)."""
    lines = "\n".join(json.dumps({"n": n}) for n in range(first, first + count))
    status, _, _ = await post_events(url, lines, "application/x-ndjson")
    return list(range(first, first + count)) if status == 202 else []


@pytest.mark.parametrize("mode", ["inline", "separate"])
async def test_each_mode_delivers_and_reports_exactly_its_processes(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon, mode: str
) -> None:
    """Events are delivered; process_* series and delivery_pid name the processes that run."""
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], delivery={"process": mode}
    )
    daemon = await daemons(config).start()
    assert daemon.process is not None
    acknowledged = await post_numbered(daemon.ingest_url, 0, 20)
    await wait_for(
        lambda: {e["n"] for e in receiver.events()} == set(acknowledged), message="delivery"
    )

    started = started_line(daemon)
    assert started["delivery_process"] == mode
    labels = await process_labels(daemon)
    if mode == "inline":
        assert started["delivery_pid"] == daemon.process.pid
        assert labels == {"daemon"}
    else:
        assert started["delivery_pid"] != daemon.process.pid
        assert labels == {"daemon", "delivery"}
    assert await daemon.terminate() == 0


async def test_auto_runs_delivery_in_the_daemon_process(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """Without delivery.process, the daemon is one process (auto means inline)."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config).start()
    assert daemon.process is not None
    assert started_line(daemon)["delivery_pid"] == daemon.process.pid
    assert children(daemon.process.pid) == []
    assert await daemon.terminate() == 0


async def test_a_plain_webhook_daemon_loads_no_cryptography_nats_or_rich(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """A webhook-only daemon delivers without ever loading cryptography, nats-py or rich."""
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in")])
    daemon = await daemons(config, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    assert daemon.process is not None
    acknowledged = await post_numbered(daemon.ingest_url, 0, 20)
    await wait_for(
        lambda: {e["n"] for e in receiver.events()} == set(acknowledged), message="delivery"
    )
    # cryptography's Rust extension is what costs memory: it must not be mapped.
    assert "cryptography" not in Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert await daemon.terminate() == 0
    loaded = loaded_packages(daemon.output())
    assert {"aiohttp", "structlog"} <= loaded  # the import lines were read
    assert loaded.isdisjoint(UNUSED_LIBRARIES), loaded & UNUSED_LIBRARIES


@pytest.mark.parametrize("mode", MODES)
async def test_sigkill_in_each_mode_loses_no_acknowledged_event(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, mode: str
) -> None:
    """SIGKILL while events flow; after a restart every acknowledged event is delivered."""
    receiver = await make_receiver()
    receiver.default = Reply(200, delay=0.01)
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], delivery={"process": mode}
    )
    daemon = await daemons(config).start()
    acknowledged: list[int] = []
    for batch in range(10):
        acknowledged += await post_numbered(daemon.ingest_url, batch * 50, 50)
    assert len(acknowledged) == 500
    await wait_for(lambda: len(receiver.delivered) >= 5, message="some deliveries")
    daemon.kill()
    assert len(receiver.delivered) < len(acknowledged)  # killed mid-stream

    await daemon.start()
    await wait_for(
        lambda: {e["n"] for e in receiver.events()} >= set(acknowledged),
        timeout=60,
        message="every acknowledged event delivered after the restart",
    )
    assert await daemon.terminate() == 0


@pytest.mark.parametrize("mode", ["inline", "separate"])
async def test_a_reload_moves_delivery_to_the_new_receiver_in_each_mode(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, mode: str
) -> None:
    """SIGHUP with a new URI: later events go to the new receiver, in either mode."""
    old, new = await make_receiver(), await make_receiver()
    config = daemon_config(
        tmp_path, [forwarder_config(f"{old.url}in", name="siem")], delivery={"process": mode}
    )
    daemon = await daemons(config).start()
    assert await post_numbered(daemon.ingest_url, 0, 3)
    await wait_for(lambda: len(old.events()) == 3, message="delivery to the old receiver")

    config["auditLogForwarders"] = [forwarder_config(f"{new.url}in", name="siem")]
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    await wait_for(
        lambda: any(e.get("event") == "config_reloaded" for e in daemon.log_entries()),
        message="config_reloaded",
    )
    assert await post_numbered(daemon.ingest_url, 3, 3)
    await wait_for(lambda: [e["n"] for e in new.events()] == [3, 4, 5], message="new receiver")
    assert len(old.events()) == 3
    assert await daemon.terminate() == 0


async def test_the_death_of_a_separate_delivery_process_stops_the_daemon_non_zero(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """SIGKILL to the delivery process: the daemon logs it and exits 1, not serving on."""
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], delivery={"process": "separate"}
    )
    daemon = await daemons(config).start()
    delivery_pid = started_line(daemon)["delivery_pid"]
    assert isinstance(delivery_pid, int)
    os.kill(delivery_pid, signal.SIGKILL)
    assert await daemon.exit_code() == 1
    assert any(e.get("event") == "delivery_process_exited" for e in daemon.log_entries())


async def test_check_config_refuses_an_unknown_delivery_process_mode(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """delivery.process: threads is refused at start with the key's path, exit 2."""
    config = daemon_config(
        tmp_path, [forwarder_config(f"{receiver.url}in")], delivery={"process": "threads"}
    )
    daemon = daemons(config)
    with pytest.raises(AssertionError, match="exited with 2"):
        await daemon.start()
    assert "delivery.process" in daemon.output()
