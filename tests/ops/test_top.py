"""``audit-forwarder top`` run for real against a real daemon, in a pipe and on a terminal.

The daemon is the real process with real receivers: ``ok`` answers 200,
``bad`` answers 400 (every event is dead-lettered), ``paused`` is disabled.
The CLI is the installed console script in a subprocess, reading the admin API
over the Unix socket or TCP and ``/metrics`` from the metrics listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ReceiverFactory
from tests.support import (
    CLI,
    DaemonProcess,
    Reply,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
MAX_BYTES = 32 * 1024 * 1024


async def start_daemon(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, **sections: Any
) -> DaemonProcess:
    """A daemon with forwarders ok (200), bad (400) and paused (disabled), events dead-lettered."""
    ok, bad = await make_receiver(), await make_receiver()
    bad.default = Reply(400, body=b'{"error": "schema"}')
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{ok.url}in", name="ok"),
            forwarder_config(f"{bad.url}in", name="bad"),
            forwarder_config(f"{ok.url}paused", name="paused", enabled=False),
        ],
        buffer={"maxBytes": MAX_BYTES},
        **sections,
    )
    daemon = await daemons(config).start()
    url = daemon.ingest_url
    socket_path = daemon.socket_path
    await post_events(url, '[{"n": 1}, {"n": 2}]', socket_path=socket_path)
    await wait_for(lambda: len(ok.delivered) == 2, message="deliveries at ok")
    await wait_for(lambda: len(bad.attempts) == 2, message="attempts at bad")
    return daemon


@contextlib.asynccontextmanager
async def steady_traffic(daemon: DaemonProcess) -> AsyncIterator[None]:
    """Post an event every 50 ms while the body runs, so that rates are above 0."""

    async def send() -> None:
        while True:
            await post_events(daemon.ingest_url, '{"n": 0}', socket_path=daemon.socket_path)
            await asyncio.sleep(0.05)  # pacing of the load, not a wait for a condition

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def row_of(out: str, name: str) -> list[str]:
    """The cells of forwarder ``name`` in the plain table (split on runs of spaces)."""
    (line,) = [line for line in out.splitlines() if line.startswith(f"{name} ")]
    return line.split()


async def test_once_over_the_unix_socket_shows_each_forwarder_state_rates_and_the_buffer(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """--once --json: ok, dead-lettering and disabled states, real rates, buffer vs maxBytes."""
    metrics_port = free_port()
    daemon = await start_daemon(tmp_path, make_receiver, daemons, metrics={"port": metrics_port})
    assert daemon.socket_path is not None
    conf = str(daemon.config_path)
    async with steady_traffic(daemon):
        code, out, err = await run_cli("top", "--config", conf, "--once", "--json")
    assert code == 0, err
    frame = json.loads(out)
    assert frame["metrics_error"] is None
    assert frame["ingest"]["received_per_second"] > 0
    forwarders = {f["name"]: f for f in frame["forwarders"]}
    assert [f["name"] for f in frame["forwarders"]] == ["ok", "bad", "paused"]
    ok, bad, paused = forwarders["ok"], forwarders["bad"], forwarders["paused"]
    assert ok["state"] == "ok"
    assert ok["delivered_per_second"] > 0
    assert ok["last_success_age_seconds"] < 60
    assert ok["last_error"] is None
    assert bad["state"] == "dead-lettering"
    assert bad["delivered_per_second"] == 0
    assert bad["last_success_at"] is None
    assert bad["dead_letters"] >= 2
    assert bad["last_error"]["code"] == "400"
    assert "schema" in bad["last_error"]["message"]
    assert paused["state"] == "disabled"
    assert paused["pending"] == 0  # a disabled forwarder holds nothing
    assert paused["delivered_per_second"] == 0
    buffer = frame["buffer"]
    assert buffer["max_bytes"] == MAX_BYTES
    held = buffer["held_bytes"]
    assert buffer["counted_bytes"] == held["pending_events"] + held["dead_letters"] > 0
    assert buffer["used_ratio"] == round(buffer["counted_bytes"] / MAX_BYTES, 4)
    assert buffer["disk_bytes"] > 0

    code, out, err = await run_cli("top", "--config", conf, "--once")
    assert code == 0, err
    assert "\x1b" not in out  # stdout is a pipe: plain text, no colour or cursor moves
    lines = out.splitlines()
    assert lines[0].startswith("audit-forwarder top")
    assert lines[1].startswith("ingest  ")
    assert lines[2].startswith("buffer  ")
    assert "of 32.0 MiB maxBytes" in lines[2]
    assert row_of(out, "FORWARDER")[:3] == ["FORWARDER", "STATE", "DELIVERED/S"]
    assert row_of(out, "ok")[1] == "ok"
    bad_row = " ".join(row_of(out, "bad"))
    assert row_of(out, "bad")[1] == "dead-lettering"
    assert bad_row.endswith(f"400 {bad['last_error']['message']}")
    assert row_of(out, "paused")[1] == "disabled"
    assert await daemon.terminate() == 0


async def test_once_over_tcp_and_a_metrics_url_given_on_the_command_line(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Without a socket the admin API is reached over TCP; --metrics-url finds a port-0 listener."""
    daemon = await start_daemon(
        tmp_path,
        make_receiver,
        daemons,
        ingest={"port": free_port(), "unixSocket": None},
    )
    assert daemon.socket_path is None
    conf = str(daemon.config_path)
    # The configured metrics port is 0: the view still shows the admin API's state.
    code, out, err = await run_cli("top", "--config", conf, "--once", "--json")
    assert code == 0, err
    frame = json.loads(out)
    assert "--metrics-url" in frame["metrics_error"]
    assert frame["ingest"]["received_per_second"] is None
    assert {f["name"]: f["state"] for f in frame["forwarders"]}["bad"] == "dead-lettering"

    code, out, err = await run_cli(
        "top", "--config", conf, "--once", "--json", "--metrics-url", daemon.metrics_url
    )
    assert code == 0, err
    frame = json.loads(out)
    assert frame["metrics_error"] is None
    assert frame["buffer"]["held_bytes"]["dead_letters"] > 0
    assert frame["ingest"]["received_per_second"] == 0
    assert await daemon.terminate() == 0


@pytest.mark.parametrize("as_json", [False, True])
async def test_ctrl_c_ends_the_view_in_a_pipe_with_exit_0(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, as_json: bool
) -> None:
    """In a pipe, a plain table (or a JSON line) per interval; SIGINT exits 0, no traceback."""
    daemon = await start_daemon(tmp_path, make_receiver, daemons)
    view = await asyncio.create_subprocess_exec(
        CLI,
        "top",
        "--config",
        str(daemon.config_path),
        "--interval",
        "0.2",
        *(["--json"] if as_json else []),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert view.stdout is not None
    seen: list[str] = []
    frame_start = "{" if as_json else "FORWARDER"

    async def frames(count: int) -> bool:
        line = (await asyncio.wait_for(view.stdout.readline(), 10)).decode()  # type: ignore[union-attr]
        assert line, f"top ended early: {''.join(seen)}"
        seen.append(line)
        return sum(s.startswith(frame_start) for s in seen) >= count

    await wait_for(lambda: frames(2), message="two frames of top")
    view.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(view.communicate(), 20)
    assert view.returncode == 0
    assert "Traceback" not in err.decode()
    assert err.decode() == ""
    assert "\x1b" not in "".join(seen) + out.decode()
    if as_json:
        states = [{f["name"]: f["state"] for f in json.loads(line)["forwarders"]} for line in seen]
        assert all(state["bad"] == "dead-lettering" for state in states)
    else:
        assert any(s.startswith("bad ") and "dead-lettering" in s for s in seen)
    assert await daemon.terminate() == 0


async def test_ctrl_c_ends_the_terminal_view_with_exit_0_and_the_cursor_back(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """On a terminal the rich table is redrawn in place; SIGINT restores the cursor, exit 0."""
    daemon = await start_daemon(tmp_path, make_receiver, daemons)
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    view = subprocess.Popen(
        [CLI, "top", "--config", str(daemon.config_path), "--interval", "0.2"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        # The terminal's own size, not a COLUMNS the test runner may pass down.
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
    )
    os.close(terminal)
    os.set_blocking(master, False)
    screen = bytearray()

    def read_screen() -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(master, 65536):
                screen.extend(chunk)

    def drawn(count: int) -> bool:
        read_screen()
        return screen.count(b"FORWARDER") >= count

    try:
        await wait_for(lambda: drawn(2), message="two frames on the terminal")
        assert b"\x1b[" in screen  # colour and cursor movement: the rich view
        assert b"dead-lettering" in screen
        view.send_signal(signal.SIGINT)
        await wait_for(lambda: view.poll() is not None, message="top to exit")
        read_screen()
        assert view.returncode == 0
        assert view.stderr is not None
        err = view.stderr.read().decode()
        assert "Traceback" not in err
        assert screen.endswith(b"\x1b[?25h")  # the cursor is shown again
    finally:
        if view.poll() is None:
            view.kill()
            view.wait(timeout=10)
        if view.stderr is not None:
            view.stderr.close()
        os.close(master)
    assert await daemon.terminate() == 0


@pytest.mark.parametrize("once", [True, False])
async def test_top_against_a_stopped_daemon_says_so_in_one_line(tmp_path: Path, once: bool) -> None:
    """With nothing answering, top prints one line and exits 1, live or --once."""
    config = daemon_config(tmp_path, [forwarder_config("http://127.0.0.1:9/in")])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = await run_cli("top", "--config", str(path), *(["--once"] if once else []))
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "cannot reach the daemon" in err
    assert "Traceback" not in err
