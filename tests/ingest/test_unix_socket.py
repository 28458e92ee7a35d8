"""Claiming the Unix socket path: what counts as live, and what is never touched.

Real socket files in ``tmp_path``; the "live" listener is a plain listening
socket of this process, which is all another daemon looks like from here.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from forwarder.ingest.unix_socket import ListenerError, claim_unix_socket


def test_a_socket_with_a_full_accept_queue_counts_as_live(tmp_path: Path) -> None:
    """A listener too busy to accept (connect gives EAGAIN) is not mistaken for a stale file."""
    path = tmp_path / "busy.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(0)
    waiting: list[socket.socket] = []
    try:
        for _ in range(64):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            waiting.append(client)
            if client.connect_ex(str(path)) == errno.EAGAIN:
                break
        else:
            pytest.fail("the accept queue never filled")
        with pytest.raises(ListenerError, match="in use"):
            claim_unix_socket(path)
        assert path.exists()
    finally:
        for client in waiting:
            client.close()
        busy.close()


def test_a_path_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    """A regular file at the socket path is neither replaced nor touched."""
    path = tmp_path / "ingest.sock"
    path.write_text("not a socket")
    with pytest.raises(ListenerError, match="exists and is not a socket"):
        claim_unix_socket(path)
    assert path.read_text() == "not a socket"
