"""One daemon per buffer file, and noticing the file taken away from under a running buffer.

Real files and real processes: the lock is a real ``flock`` (a second holder
is a real child process, killed with SIGKILL), and the file watch is checked
against real unlinks and renames of a buffer that real appends commit to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.buffer.lock import BufferLock, FileWatch
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.errors import BufferLockedError, BufferUnavailableError

HOLD = """
import sys, time
from pathlib import Path
from forwarder.buffer.lock import BufferLock
BufferLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def event(n: int) -> EventRecord:
    """An event with body ``{"n": n}`` and a generated id."""
    return EventRecord(None, "test.event", b'{"n": %d}' % n, False)


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    """Two locks on one buffer: the second fails naming the first's PID, then succeeds after."""
    path = tmp_path / "buffer.db"
    first, second = BufferLock(path), BufferLock(path)
    first.acquire()
    try:
        assert (tmp_path / "buffer.db.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(BufferLockedError) as refused:
            second.acquire()
        assert refused.value.holder_pid == os.getpid()
        assert f"PID {os.getpid()}" in str(refused.value)
        assert BufferLock.holder(path) == (os.getpid(),)
    finally:
        first.release()
    second.acquire()
    second.release()
    assert BufferLock.holder(path) is None


def test_the_kernel_releases_the_lock_of_a_killed_process(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves no stale lock: the next process takes it at once."""
    path = tmp_path / "buffer.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, cwd=Path.cwd()
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(BufferLockedError) as refused:
            BufferLock(path).acquire()
        assert refused.value.holder_pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    after = BufferLock(path)
    after.acquire()
    try:
        assert (tmp_path / "buffer.db.lock").read_text() == f"{os.getpid()}\n"
    finally:
        after.release()


def test_probing_for_a_holder_creates_nothing(tmp_path: Path) -> None:
    """``holder`` on a buffer that never had a daemon answers None and leaves no lock file."""
    assert BufferLock.holder(tmp_path / "buffer.db") is None
    assert list(tmp_path.iterdir()) == []


async def test_two_buffers_on_one_file_cannot_both_open(tmp_path: Path) -> None:
    """EventBuffer.open takes the lock: a second one on the same file is refused until close."""
    path = tmp_path / "buffer.db"
    first, second = EventBuffer(path), EventBuffer(path)
    await first.open(["f"])
    try:
        with pytest.raises(BufferLockedError):
            await second.open(["f"])
        await second.close()
    finally:
        await first.close()
    await second.open(["f"])
    await second.close()


@pytest.mark.parametrize(
    ("suffix", "how"),
    [("", "delete"), ("-wal", "delete"), ("", "replace")],
    ids=["database-deleted", "wal-deleted", "database-replaced"],
)
async def test_appends_are_refused_once_the_file_is_not_ours(
    tmp_path: Path, suffix: str, how: str
) -> None:
    """After the file changes under it, an append is answered storage_error, never acknowledged."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path)
    await buffer.open(["f"])
    try:
        await buffer.append([event(1)])
        target = Path(f"{path}{suffix}")
        if how == "delete":
            target.unlink()
        else:
            (tmp_path / "copy.db").write_bytes(target.read_bytes())
            os.replace(tmp_path / "copy.db", target)

        with capture_logs() as logs, pytest.raises(BufferUnavailableError) as first:
            await buffer.append([event(2)])
        assert first.value.reason == "storage_error"
        # Known from now on: refused before it is even queued.
        with pytest.raises(BufferUnavailableError) as second:
            await buffer.append([event(3)])
        assert second.value.reason == "storage_error"
    finally:
        await buffer.close()
    lost = [entry for entry in logs if entry["event"] == "buffer_file_lost"]
    assert len(lost) == 1
    assert lost[0]["log_level"] == "error"
    assert str(target) in lost[0]["error"]


def test_the_watch_stays_quiet_while_the_files_are_the_ones_opened(tmp_path: Path) -> None:
    """Writes to (and truncation of) the same files are not a change of identity."""
    path = tmp_path / "buffer.db"
    path.write_bytes(b"x")
    Path(f"{path}-wal").write_bytes(b"y")
    watch = FileWatch(path)
    watch.start()
    with path.open("ab") as file:
        file.write(b"more")
    os.truncate(f"{path}-wal", 0)
    assert watch.check() is None
    path.unlink()
    assert watch.check() == f"{path} was deleted while the daemon had it open"
