"""The operator commands against a real daemon: errors in command-line terms, JSON, fallback.

Each test starts the real daemon process with real receivers on loopback and
runs the real ``audit-forwarder`` console script against it.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

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
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KNOWN = "known forwarders: siem, archive"


async def two_forwarders(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, **siem: Any
) -> tuple[DaemonProcess, ScriptedReceiver]:
    """A running daemon with forwarders siem (its receiver returned) and archive."""
    receiver, other = await make_receiver(), await make_receiver()
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(f"{receiver.url}in", name="siem", **siem),
            forwarder_config(f"{other.url}in", name="archive"),
        ],
    )
    return await daemons(config).start(), receiver


async def cli(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    """Run a command with the daemon's configuration."""
    return await run_cli(*args, "--config", str(daemon.config_path))


UNKNOWN_FORWARDER_COMMANDS = [
    (["test", "nope"], ""),
    (["deliveries", "nope"], ""),
    (["dead-letters", "list", "--forwarder", "nope"], " (--forwarder)"),
    (["dead-letters", "replay", "--forwarder", "nope"], " (--forwarder)"),
    (["dead-letters", "purge", "--forwarder", "nope"], " (--forwarder)"),
]


async def test_an_unknown_forwarder_is_named_with_the_known_ones(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """test, deliveries, dead-letters list/replay/purge: the known forwarders listed; exit 1."""
    daemon, receiver = await two_forwarders(tmp_path, make_receiver, daemons)

    for args, where in UNKNOWN_FORWARDER_COMMANDS:
        text = await cli(daemon, *args)
        as_json = await cli(daemon, *args, "--json")

        message = f"no forwarder named 'nope'{where}; {KNOWN}"
        assert text == (1, "", f"audit-forwarder: {message}\n"), args
        assert (as_json[0], as_json[2]) == (1, ""), args
        assert json.loads(as_json[1]) == {
            "error": "unknown_forwarder",
            "message": message,
            "known_forwarders": ["siem", "archive"],
        }
    assert receiver.attempts == []
    assert await daemon.terminate() == 0


HINTS = {
    401: "hint: the receiver did not accept the credentials: check the token of"
    " auditLogForwarders[0] (siem) (tokenFile {token_file}) and how it is sent"
    " (auth.type header, auth.header X-Api-Key, auth.scheme Token)",
    403: "hint: the receiver knows the credentials but refuses this request: check what the"
    " token of auditLogForwarders[0] (siem) may do (its scopes, index or source) and the"
    " uri's path",
    404: "hint: the receiver has nothing at this URL: check the path of"
    " auditLogForwarders[0] (siem).uri",
}


async def test_a_refused_test_carries_a_hint_naming_the_settings(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """401, 403 and 404 from the receiver: the test fails (exit 1) with a one-line hint."""
    token_file = tmp_path / "token"
    token_file.write_text("THE-TOKEN\n")
    auth = {"type": "header", "header": "X-Api-Key", "scheme": "Token"}
    daemon, receiver = await two_forwarders(
        tmp_path, make_receiver, daemons, tokenFile=str(token_file), auth=auth
    )

    for status, hint in HINTS.items():
        receiver.default = Reply(status, body=b'{"error": "no"}')
        code, out, err = await cli(daemon, "test", "siem")
        json_code, json_out, _ = await cli(daemon, "test", "siem", "--json")

        expected = hint.format(token_file=token_file)
        assert (code, err) == (1, ""), status
        assert "FAILED" in out.splitlines()[0]
        assert out.splitlines()[-1] == expected
        assert json_code == 1
        assert json.loads(json_out)["hint"] == expected.removeprefix("hint: ")
    assert await daemon.terminate() == 0


async def test_a_passing_test_has_no_hint(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """A 2xx: exit 0, ``hint`` is null and no hint line is printed."""
    daemon, _ = await two_forwarders(tmp_path, make_receiver, daemons)

    code, out, _ = await cli(daemon, "test", "siem")
    json_code, json_out, _ = await cli(daemon, "test", "siem", "--json")

    assert (code, json_code) == (0, 0)
    assert not any(line.startswith("hint:") for line in out.splitlines())
    assert json.loads(json_out)["hint"] is None
    assert await daemon.terminate() == 0


async def dead_letter_ids(daemon: DaemonProcess, count: int) -> list[str]:
    """The event ids of the dead letters, once there are ``count``."""

    async def listed() -> list[str] | None:
        code, out, _ = await cli(daemon, "dead-letters", "list", "--json")
        ids = [d["event_id"] for d in json.loads(out)["dead_letters"]] if code == 0 else []
        return ids if len(ids) == count else None

    found: list[str] = await wait_for(listed, message=f"{count} dead letters")
    return found


async def test_replaying_an_id_that_is_not_a_dead_letter_fails_naming_it(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """--id of no dead letter: the others are replayed, the missing ids named, exit 1."""
    daemon, receiver = await two_forwarders(tmp_path, make_receiver, daemons)
    receiver.default = Reply(400, body=b"refused")
    for n in (1, 2):
        assert (await post_events(daemon.ingest_url, json.dumps({"id": f"e-{n}"})))[0] == 202
    await dead_letter_ids(daemon, 2)
    receiver.default = Reply(200)

    partly = await cli(daemon, "dead-letters", "replay", "--id", "e-1", "--id", "typo")
    as_json = await cli(
        daemon, "dead-letters", "replay", "--forwarder", "siem", "--id", "x", "--id", "y", "--json"
    )

    assert partly == (
        1,
        "replayed 1 dead letter(s)\n",
        "audit-forwarder: no dead letter with id typo (--id): nothing replayed for it\n",
    )
    assert as_json[0] == 1
    assert json.loads(as_json[1]) == {
        "replayed": 0,
        "skipped_unknown_forwarder": 0,
        "not_found": ["x", "y"],
        "error": "not_found",
        "message": "no dead letter of forwarder 'siem' with id x, y (--id): nothing replayed"
        " for them",
    }
    await wait_for(lambda: [r.json()["id"] for r in receiver.delivered] == ["e-1"])
    assert await dead_letter_ids(daemon, 1) == ["e-2"]
    assert await daemon.terminate() == 0


async def test_json_times_are_rfc3339_utc_and_statuses_integers(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """status, deliveries and dead-letters list: one time format, one status-code type."""
    daemon, receiver = await two_forwarders(tmp_path, make_receiver, daemons)
    receiver.respond(Reply(200), Reply(400, body=b"refused"))
    for n in (1, 2):
        assert (await post_events(daemon.ingest_url, json.dumps({"n": n})))[0] == 202
    await dead_letter_ids(daemon, 1)

    _, status_out, _ = await cli(daemon, "status", "--json")
    _, history_out, _ = await cli(daemon, "deliveries", "siem", "--json")
    _, letters_out, _ = await cli(daemon, "dead-letters", "list", "--json")

    siem = json.loads(status_out)["forwarders"][0]
    assert RFC3339_UTC.match(siem["last_attempt"]["at"])
    assert (siem["last_attempt"]["status"], siem["last_attempt"]["code"]) == (400, "400")
    assert RFC3339_UTC.match(siem["last_success_at"])
    history = json.loads(history_out)["deliveries"]
    assert [(d["status"], d["code"]) for d in history] == [(400, "400"), (200, "200")]
    assert all(RFC3339_UTC.match(d["at"]) for d in history)
    (letter,) = json.loads(letters_out)["dead_letters"]
    assert RFC3339_UTC.match(letter["received_at"])
    assert RFC3339_UTC.match(letter["dead_at"])
    assert letter["status"] == 400
    assert await daemon.terminate() == 0


def cli_config(daemon: DaemonProcess, socket_path: Path) -> str:
    """The daemon's configuration as an operator's copy: its TCP port, another socket path."""
    config = dict(daemon.config)
    port = int(daemon.ingest_url.rpartition(":")[2])
    config["ingest"] = {**config["ingest"], "port": port, "unixSocket": str(socket_path)}
    path = daemon.tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_a_file_broken_after_start_still_reaches_the_daemon_until_a_command_fails(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """The forwarders are the daemon's: status answers; a failing command reports the file."""
    daemon, _ = await two_forwarders(tmp_path, make_receiver, daemons)
    config = yaml.safe_load(daemon.config_path.read_text())
    config["auditLogForwarders"].append({"kind": "webhook", "uri": "https://x", "method": "GET"})
    daemon.config_path.write_text(yaml.safe_dump(config))

    status = await cli(daemon, "status", "--json")
    failing = await cli(daemon, "test", "nope")

    assert status[0] == 0, status[2]
    assert [f["name"] for f in json.loads(status[1])["forwarders"]] == ["siem", "archive"]
    assert failing == (
        2,
        "",
        f"audit-forwarder: invalid configuration {daemon.config_path}:\n"
        "  auditLogForwarders[2].method: must be one of POST, PUT, PATCH\n",
    )
    assert await daemon.terminate() == 0


@pytest.mark.parametrize("socket_state", ["missing", "refused"])
async def test_an_unreachable_socket_falls_back_to_tcp_in_one_line(
    tmp_path: Path,
    make_receiver: ReceiverFactory,
    daemons: MakeDaemon,
    socket_state: str,
) -> None:
    """The configured socket is gone or dead: the command works over TCP and says so once."""
    daemon, _ = await two_forwarders(tmp_path, make_receiver, daemons)
    socket_path = tmp_path / "operator.sock"
    if socket_state == "refused":
        with socket.socket(socket.AF_UNIX) as bound:  # bound, never listening, then closed
            bound.bind(str(socket_path))
    config = cli_config(daemon, socket_path)

    code, out, err = await run_cli("status", "--config", config, "--json")

    reason = "No such file or directory" if socket_state == "missing" else "Connection refused"
    port = daemon.ingest_url.rpartition(":")[2]
    assert code == 0, err
    assert [f["name"] for f in json.loads(out)["forwarders"]] == ["siem", "archive"]
    assert err == (
        f"audit-forwarder: cannot reach the daemon at unix:{socket_path} ({reason});"
        f" used TCP 127.0.0.1:{port} instead\n"
    )
    assert await daemon.terminate() == 0


async def test_with_neither_listener_answering_the_one_line_names_both(tmp_path: Path) -> None:
    """No daemon at all: one line naming the socket and the port, exit 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = daemon_config(tmp_path, [forwarder_config("http://127.0.0.1:9/in")])
    config["ingest"]["port"] = port
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    code, out, err = await run_cli("status", "--config", str(path))

    assert (code, out) == (1, "")
    assert err == (
        f"audit-forwarder: cannot reach the daemon at unix:{tmp_path / 'ingest.sock'}"
        f" (No such file or directory) nor at 127.0.0.1:{port} (is it running?):"
        " Connection refused\n"
    )


async def test_buffer_check_json_gives_times_in_the_same_format(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """``buffer check --json`` reports the oldest pending event's time as RFC 3339 UTC."""
    daemon, receiver = await two_forwarders(tmp_path, make_receiver, daemons)
    receiver.default = Reply(503)
    assert (await post_events(daemon.ingest_url, '{"n": 1}'))[0] == 202
    await wait_for(lambda: len(receiver.attempts) > 0, message="a first attempt")
    assert await daemon.terminate() == 0

    code, out, err = await cli(daemon, "buffer", "check", "--json")

    assert code == 0, err
    pending = {f["name"]: f for f in json.loads(out)["summary"]["forwarders"]}
    assert pending["siem"]["pending"] == 1
    assert RFC3339_UTC.match(pending["siem"]["oldest_pending_at"])
