"""The ingest Unix socket: bind it without ever unlinking a live one, remove only ours.

asyncio's ``create_unix_server(path)`` deletes whatever socket file is in the
way before binding, so a second daemon pointed at a running one's socket
would cut that daemon's clients off, and a daemon stopping after a successor
replaced its file would delete the successor's. Here the socket is bound by
hand and handed to asyncio already bound:

* ``bind()`` refuses an existing path, and only then is the file examined:
  one that refuses a connection (``ECONNREFUSED``) was left by a process that
  died (``kill -9``, a crash) and is replaced; one that accepts it, or whose
  accept queue is full (``EAGAIN``), belongs to a running process, and we
  refuse to start and leave it alone. Any other answer (``EACCES``) cannot
  tell, so we refuse too: never guess towards deleting.
* The file we bound is remembered by device and inode, and removed at stop
  only if the path still names it. While our listening socket is open it pins
  that inode, so a successor's file cannot carry the same number.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from forwarder.errors import ForwarderError
from forwarder.logs import get_logger

log = get_logger("listeners")

SOCKET_MODE = 0o660


class ListenerError(ForwarderError):
    """A listener cannot be started (its socket path is taken, not a socket, ...)."""


@dataclass(frozen=True)
class ClaimedSocket:
    """A socket file we bound, identified by device and inode."""

    path: Path
    device: int
    inode: int

    def release(self) -> None:
        """Remove the socket file, unless it is no longer the one we bound."""
        try:
            now = self.path.lstat()
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) != (self.device, self.inode):
            log.warning("socket_not_removed", path=str(self.path), reason="replaced since bound")
            return
        self.path.unlink(missing_ok=True)


def claim_unix_socket(path: Path) -> tuple[socket.socket, ClaimedSocket]:
    """Bind a listening-ready Unix socket at ``path``, replacing only a stale socket file.

    Raise :class:`ListenerError` when another process serves ``path``, or when
    it exists and is not a socket; the file is left as it is in both cases.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    claim: ClaimedSocket | None = None
    try:
        try:
            sock.bind(str(path))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ListenerError(f"cannot bind {path}: {exc.strerror}") from None
            _remove_stale_socket(path)
            try:
                sock.bind(str(path))
            except OSError as again:
                raise ListenerError(f"cannot bind {path}: {again.strerror}") from None
        bound = path.lstat()
        claim = ClaimedSocket(path, bound.st_dev, bound.st_ino)
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        if claim is not None:
            claim.release()  # before closing: the open socket pins the inode compared
        sock.close()
        raise
    return sock, claim


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return  # removed meanwhile: the second bind will tell
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        pass  # nobody listens: left behind by a process that died
    except FileNotFoundError:
        return
    except BlockingIOError:
        # A full accept queue: somebody listens, and is busy.
        raise ListenerError(_in_use(path)) from None
    except OSError as exc:
        raise ListenerError(
            f"cannot tell whether {path} is in use ({exc.strerror}); not replacing it"
        ) from None
    else:
        raise ListenerError(_in_use(path))
    finally:
        probe.close()
    path.unlink(missing_ok=True)
    log.warning("stale_socket_removed", path=str(path))


def _in_use(path: Path) -> str:
    return f"{path} is in use by another process (another audit-forwarder?); not starting"
