"""A message channel between the daemon and its delivery process, over a socketpair.

Frames are a 4-byte big-endian length and an orjson object. A message is
either a notification (``{"kind": ..., ...}``), a request (with ``"id"``),
or a response (``{"reply": id, "result": ...}`` or ``{"reply": id, "error": ...}``).
Handlers are plain coroutines registered per kind; a request's handler return
value becomes the response. Notifications are processed in order on one
task, which is what makes "acks sent before a reply are applied before the
reply is read" hold — the daemon relies on it to commit a stopping worker's
last acknowledgements before it re-registers forwarders.

Writes never await the peer: ``notify`` only buffers (the kernel socket
buffer plus asyncio's transport buffer), so the hot paths (a commit
notifying the delivery process, a worker acknowledging a batch) never block
on the other process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from forwarder.errors import ForwarderError
from forwarder.logs import get_logger

log = get_logger("ipc")

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ChannelClosedError(ForwarderError):
    """The other process went away (or the channel was closed)."""


class RemoteError(ForwarderError):
    """The other side's handler raised; ``kind`` is its exception's class name."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}: {message}")


class Channel:
    """One end of the socketpair. ``serve()`` must run for anything to be received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    @classmethod
    async def from_socket(cls, sock: Any) -> Channel:
        """Wrap a connected socket (one end of ``socket.socketpair()``)."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer)

    def on(self, kind: str, handler: Handler) -> None:
        """Handle messages of ``kind`` (notifications and requests alike)."""
        self._handlers[kind] = handler

    def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        payload = orjson.dumps(message)
        self._writer.write(_HEADER.pack(len(payload)) + payload)

    def notify(self, kind: str, **fields: Any) -> None:
        """Send a message that expects no answer; never waits."""
        self._send({"kind": kind, **fields})

    async def request(self, kind: str, within: float | None = None, **fields: Any) -> Any:
        """Send a request and wait for its result (raises RemoteError / ChannelClosedError)."""
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send({"kind": kind, "id": request_id, **fields})
            return await asyncio.wait_for(future, within)
        finally:
            self._pending.pop(request_id, None)

    async def drain(self) -> None:
        """Wait until buffered writes are handed to the kernel."""
        if not self._closed:
            await self._writer.drain()

    async def serve(self) -> None:
        """Receive until the peer closes; dispatch notifications, requests and replies."""
        try:
            while True:
                try:
                    header = await self._reader.readexactly(_HEADER.size)
                    (size,) = _HEADER.unpack(header)
                    if size > MAX_FRAME:
                        raise ChannelClosedError(f"frame of {size} bytes is too large")
                    message = orjson.loads(await self._reader.readexactly(size))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._dispatch(message)
        finally:
            self._fail_pending()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        reply_to = message.get("reply")
        if reply_to is not None:
            future = self._pending.get(reply_to)
            if future is not None and not future.done():
                if "error" in message:
                    error = message["error"]
                    future.set_exception(RemoteError(error["kind"], error["message"]))
                else:
                    future.set_result(message.get("result"))
            return
        handler = self._handlers.get(message.get("kind", ""))
        request_id = message.get("id")
        if handler is None:
            if request_id is not None:
                self._reply_error(request_id, "UnknownRequest", str(message.get("kind")))
            return
        if request_id is None:
            await handler(message)
            return
        # Requests run concurrently (a test request may take seconds) while
        # notifications keep flowing in order.
        task = asyncio.create_task(self._answer(handler, message, request_id))
        task.add_done_callback(_log_failure)

    async def _answer(self, handler: Handler, message: dict[str, Any], request_id: int) -> None:
        try:
            result = await handler(message)
        except Exception as exc:
            self._reply_error(request_id, type(exc).__name__, str(exc))
            return
        with contextlib.suppress(ChannelClosedError):
            self._send({"reply": request_id, "result": result})

    def _reply_error(self, request_id: int, kind: str, message: str) -> None:
        with contextlib.suppress(ChannelClosedError):
            self._send({"reply": request_id, "error": {"kind": kind, "message": message}})

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosedError("the other process went away"))
        self._pending.clear()

    async def close(self) -> None:
        """Close this end. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._fail_pending()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ipc_handler_failed", exc_info=task.exception())
