"""The buffer as the delivery process sees it: reads from SQLite, writes through the daemon.

The delivery process opens the WAL database read-only (WAL readers never
block the writer, across processes too) and reads events by primary-key
range, a batch at a time (``forwarder.buffer.batches``). Every write — cursor acks,
delivery history, dead letters — is sent to the daemon over the channel and
committed by the daemon's single writer task, so the one-writer, group-commit
design holds for the whole program.
The daemon tells this side about each commit (``appended``: the new head
and per-type counts), which wakes the workers and keeps pending counts exact
without polling. Reads stop at the head the daemon last reported, although
the file may already hold more: a commit is visible to readers before the
daemon's ``COMMIT`` call returns (it runs the WAL auto-checkpoint, up to
~200 ms after a large commit), and only then is its notice sent. A worker
that delivered a commit's events before its notice arrived would take them
off a pending count that had not added them yet (the gauge then stayed
above 0 for good, by the size of that commit). What this side has been told
of and what it reads are thereby the same, whatever order the two arrive in.

With encryption at rest this process opens the sealed batches it reads
with its own keyring, loaded from the same configuration file; what it
sends to be written (dead letters, history) goes in clear over the channel
and the daemon's writer seals it, so the socketpair is the only place
besides memory where those bytes are plain.

Rows cross the channel as JSON; ``bytes`` values (bodies, response bodies)
are wrapped as ``{"b": <base64>}``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from forwarder.buffer.batches import BatchReader, id_prefix, up_to_head
from forwarder.buffer.encryption import NO_KEYS, Keyring
from forwarder.buffer.ipc import Channel
from forwarder.buffer.store import AppendListener, AppendSummary, StoredEvent
from forwarder.errors import BufferUnavailableError
from forwarder.logs import get_logger

log = get_logger("remote_buffer")

Statements = list[tuple[str, Sequence[Sequence[Any]]]]


def pack_value(value: Any) -> Any:
    """A JSON-safe form of one SQL parameter."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(value)).decode()}
    return value


def unpack_value(value: Any) -> Any:
    """The inverse of :func:`pack_value`."""
    if isinstance(value, dict):
        return base64.b64decode(value["b"])
    return value


def pack_statements(statements: Statements) -> list[list[Any]]:
    """Statements with their parameter rows, JSON-safe."""
    return [[sql, [[pack_value(v) for v in row] for row in rows]] for sql, rows in statements]


def unpack_statements(packed: list[list[Any]]) -> Statements:
    """The inverse of :func:`pack_statements`."""
    return [(sql, [tuple(unpack_value(v) for v in row) for row in rows]) for sql, rows in packed]


class RemoteBuffer:
    """Reads the buffer file directly; writes go to the daemon. Constructing it does no I/O."""

    def __init__(self, path: Path, channel: Channel, keyring: Keyring = NO_KEYS) -> None:
        self.path = path
        self.keyring = keyring
        self._channel = channel
        self._reader: aiosqlite.Connection | None = None
        self._head = 0
        self._cursors: dict[str, int] = {}
        self._listeners: list[AppendListener] = []
        self._changed = asyncio.Event()
        self._batch_reader = BatchReader(self.query, "", keyring)
        channel.on("appended", self._on_appended)

    async def open(self) -> None:
        """Open the read-only connection."""
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA query_only = 1")
        await self._reader.execute("PRAGMA busy_timeout = 5000")
        await self._reader.execute("PRAGMA cache_size = -2000")
        rows = await self.query("SELECT value FROM meta WHERE key = 'instance'")
        # The daemon creates the instance number before it starts this process.
        self._batch_reader = BatchReader(self.query, id_prefix(int(rows[0][0])), self.keyring)

    async def sync(self) -> None:
        """Fetch the committed head and cursors from the daemon (after it registered them)."""
        state = await self._channel.request("state")
        self._head = max(self._head, int(state["head"]))
        self._cursors = {str(name): int(seq) for name, seq in state["cursors"].items()}
        self._wake()

    async def close(self) -> None:
        """Close the connection. Safe to call twice."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def _on_appended(self, message: dict[str, Any]) -> None:
        summary = AppendSummary.from_message(message["summary"])
        if summary.last_seq > self._head:
            self._head = summary.last_seq
        for listener in list(self._listeners):
            listener(summary)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- DeliveryBuffer ----------------------------------------------------------

    @property
    def head_seq(self) -> int:
        """The highest committed seq the daemon has reported."""
        return self._head

    def cursor(self, forwarder: str) -> int:
        """The committed cursor of ``forwarder`` at the last sync."""
        return self._cursors[forwarder]

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener(summary)`` for every commit the daemon reports."""
        self._listeners.append(listener)

    def remove_listener(self, listener: AppendListener) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def wait_beyond(self, seq: int) -> None:
        """Return once the daemon reports an event above ``seq``."""
        while self._head <= seq:
            changed = self._changed
            await changed.wait()

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` after ``after_seq``, none above the head.

        The file may hold a commit whose ``appended`` notice is still on its
        way; its events are left for the read after the notice (see the
        module docstring and :func:`~forwarder.buffer.batches.up_to_head`).
        """
        if after_seq >= self._head:
            return []  # nothing reported: no query either (a caught-up worker asks often)
        events = await self._batch_reader.read_after(forwarder, after_seq, limit)
        return up_to_head(events, self._head)

    async def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query on this process's connection."""
        if self._reader is None:
            raise BufferUnavailableError("closed", "the buffer is closed")
        rows = await self._reader.execute_fetchall(sql, parameters)
        return [tuple(row) for row in rows]

    def ack(self, forwarder: str, seq: int) -> None:
        """Ask the daemon to advance the cursor (not awaited, as locally)."""
        self._channel.notify("ack", forwarder=forwarder, seq=seq)

    def submit(self, statements: Statements) -> None:
        """Statements for the daemon's next group commit (not awaited)."""
        self._channel.notify("submit", statements=pack_statements(statements))

    async def execute(self, statements: Statements, acks: dict[str, int] | None = None) -> None:
        """Statements and acks committed by the daemon; returns after the commit."""
        try:
            await self._channel.request(
                "execute", statements=pack_statements(statements), acks=acks or {}
            )
        except Exception as exc:
            raise BufferUnavailableError(
                "storage_error", f"the daemon could not commit: {exc}"
            ) from exc
