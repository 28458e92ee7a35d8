"""One daemon per buffer file, and noticing the file being taken away from under it.

Two guards, both about who owns the file:

* **The lock.** SQLite's own locks keep two writers out of one transaction,
  not two daemons out of one file: both would assign the same ``seq`` numbers
  in memory and deliver each other's events twice. So the daemon takes an
  exclusive ``flock`` on ``<buffer>.lock`` before it opens the database and
  writes its PID into it, and a second daemon (or ``buffer salvage``) is
  refused with that PID. ``flock`` rather than ``fcntl`` record locks because
  record locks belong to the process and are dropped when *any* descriptor of
  the file closes (SQLite itself opens and closes files); an ``flock`` belongs
  to our one descriptor. The kernel drops it when the process dies, even by
  ``kill -9``, so a restart after a crash never finds a stale lock. The lock
  file is left in place on release: unlinking it would let a process that
  opened the old file lock a different inode than the next one.
* **The file watch.** A cleanup job or an operator deleting or replacing the
  database (or its WAL) under a running daemon goes unnoticed by SQLite: it
  keeps writing to the unlinked inode, and every event acknowledged from then
  on is gone at the next start. :class:`FileWatch` remembers the
  ``(st_dev, st_ino)`` of both files as opened and compares them with what
  the path holds now: two ``stat`` calls, cheap enough to run after every
  commit that appends events (before they are acknowledged) and every second
  from the idle writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import NamedTuple

from forwarder.buffer.commits import Append, Group
from forwarder.errors import BufferLockedError, BufferUnavailableError, BufferUnusableError
from forwarder.logs import get_logger

log = get_logger("buffer")


def lock_path_of(path: Path) -> Path:
    """Where the lock of the buffer at ``path`` lives: beside it, ``<name>.lock``."""
    return path.with_name(f"{path.name}.lock")


def unusable_from_os_error(path: Path, exc: OSError, action: str) -> BufferUnusableError:
    """One line for an OS error met while ``action`` (e.g. "cannot create its lock file")."""
    where = exc.filename or path
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return BufferUnusableError(
            "unreadable",
            path,
            f"{action} ({where}: permission denied)",
            f"make {Path(where).parent} and the buffer files readable and writable"
            f" by this user (uid {os.geteuid()})",
        )
    if code == errno.EROFS:
        return BufferUnusableError(
            "unreadable",
            path,
            f"{action} ({where} is on a read-only file system)",
            "put buffer.path on a writable volume",
        )
    if code == errno.ENOSPC:
        return BufferUnusableError(
            "unreadable",
            path,
            f"{action} (no space left on the device holding {where})",
            "free space on that file system",
        )
    if code in (errno.ENOTDIR, errno.EISDIR):
        return BufferUnusableError(
            "not_a_file",
            path,
            f"{action} ({where}: {exc.strerror})",
            "set buffer.path to a file in a directory",
        )
    return BufferUnusableError(
        "unreadable", path, f"{action} ({where}: {exc.strerror or exc})", "check the path"
    )


class LockHolder(NamedTuple):
    """The process holding a buffer's lock; ``pid`` is None if it has not written it yet."""

    pid: int | None


class BufferLock:
    """An exclusive ``flock`` on ``<buffer>.lock``. Constructing it does no I/O."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = lock_path_of(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our PID into it; a no-op if this object holds it.

        Raises :class:`BufferLockedError` naming the holder's PID when another
        process has it, :class:`BufferUnusableError` when the lock file cannot
        be created.
        """
        if self._fd is not None:
            return
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unusable_from_os_error(self.path, exc, "cannot create its lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise BufferLockedError(self.path, self.lock_path, holder) from None
        except OSError as exc:
            os.close(fd)
            raise unusable_from_os_error(self.path, exc, "cannot lock its lock file") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise unusable_from_os_error(self.path, exc, "cannot write its lock file") from None
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the descriptor drops it). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Emptied while still locked, so nobody reads our PID as a holder later.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    @staticmethod
    def holder(path: Path) -> LockHolder | None:
        """Who holds the lock of the buffer at ``path`` now, or None; creates nothing.

        Probes with a shared lock, given back at once, so a read-only caller
        (``buffer check``) can tell whether a daemon runs on the file.
        """
        try:
            fd = os.open(lock_path_of(path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: no daemon of this version ever ran on it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockHolder(_read_pid(fd))
        except OSError:
            return None
        finally:
            os.close(fd)
        return None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class FileWatch:
    """Tells when the database or its WAL is no longer the file the daemon opened.

    Constructing it does no I/O. :meth:`start` records the identities once
    the connections are open; :meth:`check` compares (two ``stat`` calls) and,
    the first time it finds a change, logs it; :attr:`problem` is the cached
    answer for callers that must not touch the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opened: dict[Path, tuple[int, int]] = {}
        self.problem: str | None = None

    def start(self) -> None:
        """Remember what the database and WAL paths point to now."""
        self.problem = None
        self._opened = {}
        for path in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(path)
                self._opened[path] = (info.st_dev, info.st_ino)

    def stop(self) -> None:
        """Stop watching (the buffer is closed)."""
        self._opened = {}

    def check(self) -> str | None:
        """What happened to the files, if they are gone or replaced; None while they are ours."""
        if self.problem is not None or not self._opened:
            return self.problem
        for path, identity in self._opened.items():
            try:
                info = os.stat(path)
            except FileNotFoundError:
                self.problem = f"{path} was deleted while the daemon had it open"
            except OSError:
                # Unreadable metadata (a permission change) is not proof of loss:
                # SQLite still has the file open. Look again next time.
                continue
            else:
                if (info.st_dev, info.st_ino) != identity:
                    self.problem = (
                        f"{path} was replaced by another file while the daemon had it open"
                    )
            if self.problem is not None:
                log.error(
                    "buffer_file_lost",
                    path=str(self.path),
                    error=self.problem,
                    effect="ingest answers 503 storage_error; /healthz and /readyz fail",
                    remedy="find what removed it; events acknowledged after that are lost;"
                    " a restart opens a new buffer file",
                )
                break
        return self.problem

    def refusal(self) -> BufferUnavailableError | None:
        """What an append is answered while the files are lost (cached: no I/O)."""
        if self.problem is None:
            return None
        return BufferUnavailableError(
            "storage_error",
            "the buffer file was deleted or replaced under the daemon:"
            " it cannot store events until it is restarted",
            retry_after_seconds=5,
        )

    def refuse_appends(self, group: Group) -> None:
        """After a commit that appended events, before they are acknowledged.

        If the files are no longer ours the events went to an unlinked inode:
        their senders get 503 and keep them instead of a 202 for a lost event.
        """
        if not group.results or self.check() is None:
            return
        refusal = self.refusal()
        assert refusal is not None  # check() found a problem
        for op in group.ops:
            if isinstance(op, Append) and not op.future.done():
                op.future.set_exception(refusal)
