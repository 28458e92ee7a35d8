"""The pending count of a worker in the delivery process, whatever order commits are learnt in.

The delivery process reads the SQLite file itself but learns of each commit
from the daemon's ``appended`` notice over the channel, so the file can hold
a commit before its notice arrives. These tests hold a notice back (the one
thing that is timing in the daemon) and check that the count, the oldest
pending age and the reads still agree. Everything else is real: the buffer
file and its writer, the socketpair channel, the ``RemoteBuffer``, a worker
and an aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer import batches
from forwarder.buffer.commits import AppendSummary
from forwarder.buffer.ipc import Channel
from forwarder.buffer.remote import RemoteBuffer, unpack_statements
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.options import BatchConfig
from forwarder.metrics import Metrics
from tests.delivery.workers import append, body, webhook
from tests.support import ScriptedReceiver, wait_for


@dataclass
class HeldNotices:
    """The daemon's side of the channel, with its ``appended`` notices sent only on release.

    Answers what ``forwarder.delivery.process`` answers for a worker (the
    state, acks, history rows) from a real ``EventBuffer``.
    """

    buffer: EventBuffer
    channel: Channel
    held: list[AppendSummary] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buffer.add_listener(self.held.append)
        self.channel.on("state", self._state)
        self.channel.on("ack", self._ack)
        self.channel.on("submit", self._submit)

    def release(self, count: int) -> None:
        """Send the oldest ``count`` held notices, in commit order."""
        released, self.held[:count] = self.held[:count], []
        for summary in released:
            self.channel.notify("appended", summary=summary.to_message())

    async def _state(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"head": self.buffer.head_seq, "cursors": self.buffer.cursors()}

    async def _ack(self, message: dict[str, Any]) -> None:
        self.buffer.ack(str(message["forwarder"]), int(message["seq"]))

    async def _submit(self, message: dict[str, Any]) -> None:
        self.buffer.submit(unpack_statements(message["statements"]))


@dataclass
class Pair:
    """The daemon's buffer and the delivery process's view of the same file."""

    buffer: EventBuffer
    daemon: HeldNotices
    remote: RemoteBuffer


@pytest.fixture
async def pair(buffer: EventBuffer, tmp_path: Path) -> AsyncIterator[Pair]:
    """A ``RemoteBuffer`` on ``buffer``'s file, its notices held by the daemon's side."""
    ours, theirs = socket.socketpair()
    daemon_channel = await Channel.from_socket(ours)
    child_channel = await Channel.from_socket(theirs)
    daemon = HeldNotices(buffer, daemon_channel)
    remote = RemoteBuffer(tmp_path / "buffer.db", child_channel)
    serving = [
        asyncio.create_task(daemon_channel.serve()),
        asyncio.create_task(child_channel.serve()),
    ]
    await remote.open()
    await remote.sync()
    yield Pair(buffer, daemon, remote)
    await remote.close()
    for channel in (daemon_channel, child_channel):
        await channel.close()
    await asyncio.gather(*serving, return_exceptions=True)


def delivered_count(receiver: ScriptedReceiver) -> int:
    """Events the receiver accepted, over all its requests."""
    return sum(len(batch) for batch in receiver.events())


async def test_a_commit_read_before_its_notice_is_counted_once(
    pair: Pair, receiver: ScriptedReceiver, registry: CollectorRegistry
) -> None:
    """A commit already in the file when its notice is late still leaves pending at 0 once sent."""
    spec = webhook(receiver, batch=BatchConfig(max_events=100, max_wait_ms=50))
    worker = DeliveryWorker(spec, pair.remote, Metrics(registry))
    await worker.start()
    try:
        await append(pair.buffer, body(1), body(2), body(3))
        await append(pair.buffer, body(4), body(5))  # in the file; its notice is held
        pair.daemon.release(1)
        await wait_for(lambda: delivered_count(receiver) >= 3, message="the first commit sent")
        pair.daemon.release(1)
        await wait_for(lambda: pair.remote.head_seq == 5, message="the late notice")
        await wait_for(lambda: delivered_count(receiver) >= 5, message="both commits sent")
        await wait_for(lambda: worker.status.pending == 0, timeout=10, message="pending back to 0")
        assert worker.oldest_pending_age() == 0
        assert [e["n"] for batch in receiver.events() for e in batch] == [1, 2, 3, 4, 5]
    finally:
        await worker.stop(0)


async def test_reads_stop_at_the_head_the_daemon_reported(pair: Pair) -> None:
    """``read_after`` returns no event of a commit whose notice has not arrived."""
    await append(pair.buffer, body(1), body(2))
    await append(pair.buffer, body(3))
    pair.daemon.release(1)
    await wait_for(lambda: pair.remote.head_seq == 2, message="the first notice")
    assert [e.seq for e in await pair.remote.read_after("f", 0, 100)] == [1, 2]
    assert await pair.remote.read_after("f", 2, 100) == []
    pair.daemon.release(1)
    await wait_for(lambda: pair.remote.head_seq == 3, message="the second notice")
    assert [e.seq for e in await pair.remote.read_after("f", 0, 100)] == [1, 2, 3]


async def test_the_daemons_buffer_reads_no_further_than_its_head(
    buffer: EventBuffer, tmp_path: Path
) -> None:
    """Rows SQLite shows before the writer's COMMIT call has returned are not read."""
    await append(buffer, body(1), body(2))
    # What a reader sees while the writer's COMMIT call is still checkpointing:
    # the next commit's row, with the head and the listeners not yet moved.
    records = [EventRecord(None, "test.event", body(3), False)]
    with sqlite3.connect(tmp_path / "buffer.db") as conn:
        conn.execute(batches.INSERT, batches.batch_row(3, records, time.time()))
    assert buffer.head_seq == 2
    assert [e.seq for e in await buffer.read_after("f", 0, 100)] == [1, 2]
    assert await buffer.read_after("f", 2, 100) == []
