"""End to end: a web page cannot drive the real daemon's admin API; the operator CLI still can.

The daemon is the real ``audit-forwarder`` process with no ingest token (the
default, and the setting the issue was found with), listening on loopback TCP
and a Unix socket. Its receiver refuses every event with a 400, so real dead
letters pile up for the attacks to aim at; the proof that an attack failed is
that the buffer file still holds every one of them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    free_port,
    post_events,
    run_cli,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
DEAD_LETTERS = 3


def dead_letter_count(daemon: DaemonProcess) -> int:
    """Dead letters in the daemon's buffer file, read on a separate SQLite connection."""
    connection = sqlite3.connect(daemon.config["buffer"]["path"])
    try:
        return int(connection.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    finally:
        connection.close()


async def daemon_with_dead_letters(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> DaemonProcess:
    """The real daemon on a known TCP port and a Unix socket, holding three dead letters."""
    receiver.default = Reply(400, body=b'{"error": "schema"}')
    config = daemon_config(
        tmp_path,
        [forwarder_config(f"{receiver.url}in", name="siem")],
        ingest={"port": free_port()},
    )
    daemon = await daemons(config).start()
    for n in range(DEAD_LETTERS):
        assert (await post_events(daemon.ingest_url, json.dumps({"n": n})))[0] == 202
    await wait_for(lambda: dead_letter_count(daemon) == DEAD_LETTERS, message="three dead letters")
    return daemon


async def test_a_web_page_can_neither_purge_nor_read_the_admin_api(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """Cross-site text/plain purges and DNS-rebinding reads are refused on TCP and the socket."""
    daemon = await daemon_with_dead_letters(tmp_path, receiver, daemons)
    port = daemon.config["ingest"]["port"]
    purge = f"{daemon.ingest_url}/v1/dead-letters/purge"
    async with aiohttp.ClientSession() as session:
        # The request, as a browser sends it from a page on evil.example.
        async with session.post(
            purge,
            data=b'{"all": true}',
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        ) as response:
            assert response.status == 403
            assert (await response.json())["error"] == "forbidden"
        # The same body with no Origin (a no-cors form post from an older browser).
        async with session.post(
            purge, data=b'{"all": true}', headers={"Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415
            assert (await response.json())["error"] == "unsupported_media_type"
        # DNS rebinding: evil.example now resolves to 127.0.0.1; the Host still says so.
        for path in ("/v1/forwarders", "/v1/dead-letters"):
            async with session.get(
                f"{daemon.ingest_url}{path}", headers={"Host": f"evil.example:{port}"}
            ) as response:
                assert response.status == 403
                assert "siem" not in await response.text()
    assert daemon.socket_path is not None
    unix = aiohttp.UnixConnector(path=daemon.socket_path)
    async with aiohttp.ClientSession(connector=unix) as session:
        async with session.post(
            "http://localhost/v1/dead-letters/purge",
            data=b'{"all": true}',
            headers={"Content-Type": "text/plain"},
        ) as response:
            assert response.status == 415
        async with session.get(
            "http://localhost/v1/dead-letters", headers={"Host": "evil.example"}
        ) as response:
            assert response.status == 403
    assert dead_letter_count(daemon) == DEAD_LETTERS
    refused = [e for e in daemon.log_entries() if e.get("event") == "admin_request_refused"]
    assert [e["status"] for e in refused] == [403, 415, 403, 403, 415, 403]
    assert refused[0]["origin"] == "https://evil.example"
    assert await daemon.terminate() == 0


async def test_the_cli_still_manages_dead_letters_over_tcp_and_the_unix_socket(
    tmp_path: Path, receiver: ScriptedReceiver, daemons: MakeDaemon
) -> None:
    """status, test, dead-letters list/purge/replay work through both listeners."""
    daemon = await daemon_with_dead_letters(tmp_path, receiver, daemons)
    over_unix = str(daemon.config_path)  # the CLI prefers the socket when one is configured
    tcp_only = {**daemon.config, "ingest": {**daemon.config["ingest"], "unixSocket": None}}
    over_tcp = str(tmp_path / "tcp.yaml")
    Path(over_tcp).write_text(yaml.safe_dump(tcp_only))

    async def cli(conf: str, *args: str) -> Any:
        code, out, err = await run_cli(*args, "--config", conf, "--json")
        assert code == 0, out + err
        return json.loads(out)

    for conf in (over_unix, over_tcp):
        (status,) = (await cli(conf, "status"))["forwarders"]
        assert status["dead_letters"] == DEAD_LETTERS
    listed = await cli(over_tcp, "dead-letters", "list")
    first = listed["dead_letters"][0]["event_id"]
    assert await cli(over_unix, "dead-letters", "purge", "--id", first) == {"purged": 1}

    receiver.default = Reply(200)
    replayed = await cli(over_tcp, "dead-letters", "replay")
    assert replayed == {"replayed": DEAD_LETTERS - 1, "skipped_unknown_forwarder": 0}
    await wait_for(lambda: len(receiver.delivered) == DEAD_LETTERS - 1, message="replayed")
    for conf in (over_unix, over_tcp):
        invocation = await cli(conf, "test", "siem")
        assert invocation["ok"] is True
        (status,) = (await cli(conf, "status"))["forwarders"]
        assert status["dead_letters"] == 0
    assert [r.json().get("event_type") for r in receiver.delivered[-2:]] == ["forwarder.test"] * 2
    assert await cli(over_tcp, "dead-letters", "purge", "--all") == {"purged": 0}
    assert dead_letter_count(daemon) == 0
    assert await daemon.terminate() == 0
