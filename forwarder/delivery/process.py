"""The daemon's side of the delivery process: spawn it, serve its writes, proxy its answers.

Why a process: one asyncio loop cannot both parse ingest and speak HTTP to
receivers at the rates we aim for (profiled: with deliveries of one event per
request, delivery took most of the single core and ingest latency rose to a
second). In a second process, delivery runs on the other core.

What stays here: the buffer's single writer. The delivery process reads the
SQLite file itself but sends acks, history rows and dead letters back, and
this side hands them to the buffer's group commit — in the order they
arrive, which is what lets a reload commit a retired worker's last acks
before re-registering cursors. After each commit that appended events, this
side tells the delivery process the new head.

If the delivery process dies, ``on_exit`` tells the daemon, which stops with
a non-zero code (the supervisor restarts both; nothing acknowledged is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forwarder.buffer.ipc import Channel, RemoteError
from forwarder.buffer.remote import unpack_statements
from forwarder.buffer.store import AppendSummary, EventBuffer
from forwarder.config.settings import Settings
from forwarder.delivery.forwarders import UnknownForwarderError
from forwarder.logs import get_logger

log = get_logger("daemon")

START_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 60.0


class DeliveryProcess:
    """Owns the delivery child process. Constructing it does no I/O."""

    def __init__(
        self,
        buffer: EventBuffer,
        config_path: Path,
        on_exit: Callable[[str], None],
    ) -> None:
        self._buffer = buffer
        self._config_path = config_path
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._channel: Channel | None = None
        self._serving: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._forwarding = False
        self._stopping = False
        self._names: list[str] = []

    @property
    def pid(self) -> int | None:
        """The delivery process's pid, once started."""
        return self._process.pid if self._process is not None else None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the process and wait until its workers run."""
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "forwarder.delivery.child",
                "--config",
                str(self._config_path),
                "--fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._channel = channel = await Channel.from_socket(ours)
        channel.on("state", self._state)
        channel.on("ack", self._ack)
        channel.on("submit", self._submit)
        channel.on("execute", self._execute)
        channel.on("failure", self._failure)
        self._serving = asyncio.create_task(channel.serve(), name="delivery-channel")
        self._watch = asyncio.create_task(self._watch_exit(), name="delivery-process")
        self._buffer.add_listener(self._forward)
        self._names = await channel.request("start", within=START_TIMEOUT_SECONDS)

    async def _watch_exit(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        if not self._stopping:
            log.error("delivery_process_exited", code=code)
            self._on_exit(f"the delivery process exited with {code}")

    async def stop(self, grace_seconds: float) -> dict[str, Any]:
        """Ask the process to drain and exit; kill it if it does not. Safe to call twice."""
        self._stopping = True
        self._buffer.remove_listener(self._forward)
        summary: dict[str, Any] = {}
        if self._channel is not None and self._process is not None:
            if self._process.returncode is None:
                with contextlib.suppress(Exception):
                    summary = await self._channel.request(
                        "stop", within=grace_seconds + REQUEST_TIMEOUT_SECONDS, grace=grace_seconds
                    )
            # The stop reply came after every ack the workers sent: they are queued.
            await self._channel.close()
        if self._process is not None and self._process.returncode is None:
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        for task in (self._serving, self._watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._serving = self._watch = None
        return summary

    # -- what the delivery process asks of the daemon ----------------------------

    async def _state(self, _: dict[str, Any]) -> dict[str, Any]:
        # No await between the snapshot and the reply: every commit after it
        # is forwarded after the reply, so the other side misses none.
        self._forwarding = True
        return {"head": self._buffer.head_seq, "cursors": self._buffer.cursors()}

    def _forward(self, summary: AppendSummary) -> None:
        if self._forwarding and self._channel is not None and not self._stopping:
            with contextlib.suppress(Exception):
                self._channel.notify("appended", summary=summary.to_message())

    async def _ack(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self._buffer.ack(str(message["forwarder"]), int(message["seq"]))

    async def _submit(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self._buffer.submit(unpack_statements(message["statements"]))

    async def _execute(self, message: dict[str, Any]) -> None:
        acks = {str(name): int(seq) for name, seq in message.get("acks", {}).items()}
        await self._buffer.execute(unpack_statements(message["statements"]), acks)

    async def _failure(self, message: dict[str, Any]) -> None:
        self._on_exit(f"{message.get('task')} failed in the delivery process")

    # -- what the daemon and the admin API ask of it ---------------------------

    def _require(self) -> Channel:
        if self._channel is None or self._stopping:
            raise RemoteError("Stopping", "the delivery process is stopping")
        return self._channel

    def names(self) -> list[str]:
        """Forwarder names in configuration order."""
        return list(self._names)

    async def statuses(self) -> list[dict[str, Any]]:
        """Every forwarder's state."""
        result: list[dict[str, Any]] = await self._require().request(
            "statuses", within=REQUEST_TIMEOUT_SECONDS
        )
        return result

    async def gauges(self) -> list[tuple[str, int, float]]:
        """(name, pending, oldest age) per forwarder."""
        rows = await self._require().request("gauges", within=REQUEST_TIMEOUT_SECONDS)
        return [(str(name), int(pending), float(age)) for name, pending, age in rows]

    async def test(self, name: str) -> dict[str, Any]:
        """The test button, run by the worker's own request builder and session."""
        try:
            result: dict[str, Any] = await self._require().request(
                "test", within=REQUEST_TIMEOUT_SECONDS, name=name
            )
        except RemoteError as exc:
            if exc.kind == UnknownForwarderError.__name__:
                raise UnknownForwarderError(name) from None
            raise
        return result

    async def exposition(self) -> bytes:
        """The delivery process's metrics (empty while it is not running)."""
        if self._channel is None or self._stopping:
            return b""
        try:
            text: str = await self._channel.request("metrics", within=10)
        except Exception:
            return b""
        return text.encode()

    async def reload(self, new: Settings) -> dict[str, list[str]]:
        """Apply the (validated) config file: retire, re-register cursors, start."""
        channel = self._require()
        plan: dict[str, list[str]] = await channel.request(
            "prepare", within=REQUEST_TIMEOUT_SECONDS * 2
        )
        await self._buffer.execute([])  # commit the retired workers' last acks
        await self._buffer.register_forwarders(new.forwarder_names())
        self._names = await channel.request("finish", within=REQUEST_TIMEOUT_SECONDS)
        return plan
