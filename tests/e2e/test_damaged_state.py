"""End to end: one daemon per buffer, unusable buffer files, ``buffer check`` / ``salvage``,
and the buffer file deleted or replaced under a running daemon.

The daemon and the commands are the real ``audit-forwarder`` console script in
subprocesses; buffer files are real SQLite files, damaged by overwriting their
bytes the way a bad disk, a crash or a careless ``cp`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from forwarder.buffer.store import EventBuffer, EventRecord
from tests.conftest import ReceiverFactory
from tests.support import (
    CLI,
    DaemonProcess,
    Reply,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

MakeDaemon = Callable[..., DaemonProcess]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


async def run(*args: str, prefix: list[str] | None = None, timeout: float = 30.0) -> Any:
    """Run the console script; a process still running after ``timeout`` is killed and fails."""
    process = await asyncio.create_subprocess_exec(
        *(prefix or []),
        CLI,
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        message = f"audit-forwarder {' '.join(args)} still ran after {timeout} s"
        raise AssertionError(message) from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_line(out: str, err: str) -> str:
    """The single line on stderr, after checking nothing printed a traceback."""
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path``."""
    path.write_text(yaml.safe_dump(config))
    return path


async def build_buffer(path: Path, batches: int = 10, per_batch: int = 40, pad: int = 1000) -> None:
    """A buffer written by the real EventBuffer: ``batches`` commits of events numbered from 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = EventBuffer(path)
    await buffer.open(["webhook-0"])
    try:
        for batch in range(batches):
            await buffer.append(
                [
                    EventRecord(None, "k", event(batch * per_batch + i, pad), False)
                    for i in range(per_batch)
                ]
            )
    finally:
        await buffer.close()


def event(n: int, pad: int = 1000) -> bytes:
    """Event ``n``; the filler makes a batch of 40 span several overflow pages."""
    return b'{"n": %d, "pad": "%s"}' % (n, b"x" * pad)


def zero_page_holding(path: Path, marker: bytes) -> None:
    """Overwrite with zeros the page (of the file's page size) that holds ``marker``."""
    data = path.read_bytes()
    offset = data.find(marker)
    assert offset > 0, f"{marker!r} not in {path}"
    page_size = int.from_bytes(data[16:18], "big")
    with path.open("r+b") as file:
        file.seek(offset // page_size * page_size)
        file.write(bytes(page_size))


# -- one daemon per buffer -------------------------------------------------------------


async def test_a_second_daemon_on_the_same_buffer_exits_naming_the_first_pid(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Same buffer path, other listeners: the second exits 3 naming the first's PID."""
    receiver = await make_receiver()
    config = daemon_config(tmp_path, [forwarder_config(receiver.url)])
    first = await daemons(config).start()
    assert first.process is not None
    second = daemon_config(tmp_path, [forwarder_config(receiver.url)])
    second["ingest"]["unixSocket"] = str(tmp_path / "second.sock")

    code, out, err = await run("run", "--config", str(write_config(tmp_path / "2.yaml", second)))

    assert code == 3, err
    line = one_line(out, err)
    assert f"PID {first.process.pid}" in line
    assert str(tmp_path / "buffer.db") in line
    assert (tmp_path / "buffer.db.lock").read_text() == f"{first.process.pid}\n"
    status, _, _ = await post_events(first.ingest_url, '{"n": 1}')
    assert status == 202
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert await first.terminate() == 0


async def test_a_daemon_killed_with_sigkill_restarts_on_its_buffer(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """kill -9 leaves no stale lock: the restarted daemon takes it and delivers the backlog."""
    receiver = await make_receiver()
    url = receiver.url
    await receiver.stop()
    daemon = await daemons(daemon_config(tmp_path, [forwarder_config(url)])).start()
    for n in range(5):
        status, _, _ = await post_events(daemon.ingest_url, json.dumps({"n": n}))
        assert status == 202
    daemon.kill()

    await daemon.start()
    assert daemon.process is not None
    assert (tmp_path / "buffer.db.lock").read_text() == f"{daemon.process.pid}\n"
    await receiver.start()
    await wait_for(lambda: len(receiver.delivered) == 5, timeout=30)
    assert [e["n"] for e in receiver.events()] == list(range(5))
    assert await daemon.terminate() == 0


# -- unusable files: one line, exit code 3 ---------------------------------------------


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _zero_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(bytes(100))


def _zero_pages(path: Path) -> None:
    # Event 220 lies in the first of its batch's two overflow pages: zeroing it
    # breaks the chain, which SQLite's check sees. (A zeroed *last* overflow page
    # keeps the chain intact; only buffer check and salvage read the events.)
    zero_page_holding(path, b'{"n": 220,')


def _garbage(path: Path) -> None:
    noise = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(2048))
    path.write_bytes(noise)


def _newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _foreign(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # kind: (what to do to a good buffer, what the line says, what it says to do)
    "truncated": (_truncate, "is damaged", "buffer salvage"),
    "zeroed-header": (_zero_header, "is damaged (file is not a database)", "buffer salvage"),
    "zeroed-pages": (_zero_pages, "is damaged", "buffer salvage"),
    "garbage": (_garbage, "is damaged (file is not a database)", "buffer salvage"),
    "newer-schema": (_newer_schema, "newer audit-forwarder (schema 99", "run that version"),
    "foreign": (_foreign, "SQLite database of another program", "set buffer.path"),
    "directory": (_directory, "is a directory", "set buffer.path to a file"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
async def test_an_unusable_buffer_is_one_line_and_exit_code_3(tmp_path: Path, kind: str) -> None:
    """Each kind of unusable file: one line naming file, problem and remedy; file untouched."""
    damage, problem, remedy = DAMAGE[kind]
    path = tmp_path / "data" / "buffer.db"
    await build_buffer(path)
    damage(path)
    before = path.read_bytes() if path.is_file() else b""
    config = daemon_config(tmp_path, [forwarder_config("http://127.0.0.1:9/")])
    config["buffer"]["path"] = str(path)

    code, out, err = await run("run", "--config", str(write_config(tmp_path / "c.yaml", config)))

    assert code == 3, err
    line = one_line(out, err)
    assert line.startswith(f"audit-forwarder: buffer {path} ")
    assert problem in line
    assert remedy in line
    assert (path.read_bytes() if path.is_file() else b"") == before


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's own are private to their owner)."""
    directory = Path(tempfile.mkdtemp(prefix="audit-forwarder-test-"))
    directory.chmod(0o755)
    yield directory
    for inner in directory.rglob("*"):
        with contextlib.suppress(OSError):
            inner.chmod(0o755 if inner.is_dir() else 0o644)
    shutil.rmtree(directory)


@pytest.mark.parametrize("read_only", ["directory", "file"])
async def test_a_buffer_the_daemon_cannot_write_is_one_line_and_exit_code_3(
    shared_dir: Path, read_only: str
) -> None:
    """A read-only buffer directory, or file: one line saying what to make writable, exit 3."""
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("root ignores permissions, and setpriv is not there to drop them")
    data = shared_dir / "data"
    data.mkdir()
    path = data / "buffer.db"
    if read_only == "file":
        await build_buffer(path)
        (data / "buffer.db.lock").unlink()
        path.chmod(0o444)
        if root:
            os.chown(data, 65534, 65534)  # nobody may create the lock and WAL, not write the file
    else:
        data.chmod(0o555)
    before = sorted(p.name for p in data.iterdir())
    config = daemon_config(shared_dir, [forwarder_config("http://127.0.0.1:9/")])
    config["buffer"]["path"] = str(path)
    config_path = write_config(shared_dir / "c.yaml", config)
    config_path.chmod(0o644)

    code, out, err = await run("run", "--config", str(config_path), prefix=NOBODY if root else [])

    assert code == 3, err
    line = one_line(out, err)
    assert line.startswith(f"audit-forwarder: buffer {path} ")
    if read_only == "directory":
        assert "cannot create its lock file" in line
        assert "permission denied" in line
        assert f"make {data} and the buffer files readable and writable" in line
        assert sorted(p.name for p in data.iterdir()) == before == []
    else:
        assert "cannot be opened for writing (attempt to write a readonly database)" in line
        assert "make it and its directory readable and writable" in line


# -- buffer check and buffer salvage ---------------------------------------------------


async def test_buffer_check_summarises_a_healthy_buffer_and_refuses_a_damaged_one(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Pending per forwarder (filters applied), dead letters and the daemon's PID; then damage."""
    down = await make_receiver()
    down_url = down.url
    await down.stop()
    strict = await make_receiver()
    strict.default = Reply(400, body=b"no")
    config = daemon_config(
        tmp_path,
        [
            forwarder_config(down_url, name="siem", events=["key.*"]),
            forwarder_config(down_url, name="archive"),
            forwarder_config(strict.url, name="strict"),
        ],
    )
    daemon = await daemons(config).start()
    assert daemon.process is not None
    lines = [{"event_type": "key.created" if n < 10 else "other", "n": n} for n in range(30)]
    body = "\n".join(json.dumps(line) for line in lines)
    status, _, _ = await post_events(daemon.ingest_url, body, "application/x-ndjson")
    assert status == 202
    await wait_for(lambda: len(strict.attempts) == 30, message="strict dead-lettered all")
    config_file = str(daemon.config_path)

    async def checked() -> dict[str, Any]:
        code, out, err = await run("buffer", "check", "--config", config_file, "--json")
        assert (code, err) == (0, "")
        report: dict[str, Any] = json.loads(out)
        return report

    async def settled() -> dict[str, Any] | None:
        report = await checked()
        dead = report["summary"]["dead_letters"]
        return report if dead.get("strict") == 30 else None

    live = await wait_for(settled, message="30 dead letters committed")
    assert live["status"] == "ok"
    assert live["integrity"] == ["ok"]
    assert (live["daemon_running"], live["daemon_pid"]) == (True, daemon.process.pid)
    pending = {f["name"]: f["pending"] for f in live["summary"]["forwarders"]}
    assert pending == {"siem": 10, "archive": 30, "strict": 0}
    assert live["summary"]["events"] == 30

    assert await daemon.terminate() == 0
    stopped = await checked()
    assert (stopped["daemon_running"], stopped["daemon_pid"]) == (False, None)
    assert {f["name"]: f["pending"] for f in stopped["summary"]["forwarders"]} == pending
    code, out, err = await run("buffer", "check", "--config", config_file)
    assert code == 0
    assert "OK (schema" in out

    zero_page_holding(tmp_path / "buffer.db", b'"n": 15}')
    code, out, err = await run("buffer", "check", "--config", config_file, "--json")
    assert code == 3, err
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert report["status"] == "damaged"
    assert "salvage" in report["error"]
    code, out, err = await run("buffer", "check", "--config", config_file)
    assert code == 3, err
    assert out.startswith("UNUSABLE (damaged): buffer ")


async def test_salvage_keeps_the_readable_events_and_a_restarted_daemon_delivers_them(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon
) -> None:
    """Refused while the daemon runs; afterwards one zeroed page costs one batch, the rest flows."""
    receiver = await make_receiver()
    url = receiver.url
    await receiver.stop()
    daemon = await daemons(daemon_config(tmp_path, [forwarder_config(url)])).start()
    assert daemon.process is not None
    for batch in range(10):
        body = "\n".join(event(batch * 40 + i).decode() for i in range(40))
        status, _, _ = await post_events(daemon.ingest_url, body, "application/x-ndjson")
        assert status == 202
    config_file = str(daemon.config_path)

    code, out, err = await run("buffer", "salvage", "--config", config_file)
    assert code == 3, err
    assert f"PID {daemon.process.pid}" in one_line(out, err)
    assert await daemon.terminate() == 0
    assert not [p for p in tmp_path.iterdir() if "damaged" in p.name]

    zero_page_holding(tmp_path / "buffer.db", b'{"n": 220,')  # inside the sixth request's batch
    code, out, err = await run("run", "--config", config_file)
    assert code == 3, err
    assert "is damaged" in one_line(out, err)

    code, out, err = await run("buffer", "salvage", "--config", config_file, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["events_recovered"] == 360
    assert report["events_unreadable"] == 40
    assert Path(report["moved_to"]).is_file()

    await receiver.start()
    await daemon.start()
    expected = [n for n in range(400) if not 200 <= n < 240]
    await wait_for(lambda: len(receiver.delivered) >= 360, timeout=60, message="360 deliveries")
    assert [e["n"] for e in receiver.events()] == expected
    assert await daemon.terminate() == 0


# -- the file taken away under a running daemon ----------------------------------------


@pytest.mark.parametrize(
    ("suffix", "how"),
    [("", "delete"), ("-wal", "delete"), ("", "replace")],
    ids=["database-deleted", "wal-deleted", "database-replaced"],
)
async def test_the_buffer_file_taken_away_fails_probes_and_refuses_ingest(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: MakeDaemon, suffix: str, how: str
) -> None:
    """Deleted or replaced under the daemon: error logged, probes 503, ingest 503 storage_error."""
    receiver = await make_receiver()
    daemon = await daemons(daemon_config(tmp_path, [forwarder_config(receiver.url)])).start()
    status, _, _ = await post_events(daemon.ingest_url, '{"n": 1}')
    assert status == 202
    await wait_for(lambda: len(receiver.delivered) == 1)

    target = Path(f"{tmp_path / 'buffer.db'}{suffix}")
    if how == "delete":
        target.unlink()
    else:
        (tmp_path / "copy.db").write_bytes(target.read_bytes())
        os.replace(tmp_path / "copy.db", target)

    await wait_for(lambda: _probe(daemon, "/healthz", 503), message="/healthz 503")
    assert await daemon.probe("/readyz") == 503
    status, payload, headers = await post_events(daemon.ingest_url, '{"n": 2}')
    assert status == 503
    assert payload["error"] == "storage_error"
    assert "Retry-After" in headers
    lost = [e for e in daemon.log_entries() if e.get("event") == "buffer_file_lost"]
    assert len(lost) == 1
    assert lost[0]["level"] == "error"
    assert str(target) in lost[0]["error"]
    assert len(receiver.delivered) == 1  # the refused event was never acknowledged nor sent
    assert daemon.process is not None
    assert daemon.process.poll() is None  # still running, refusing: not crashed


async def _probe(daemon: DaemonProcess, path: str, status: int) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.metrics_url}{path}") as response,
    ):
        return response.status == status
