"""The operator's side of the admin API: a small client and the tables the CLI prints.

The CLI finds the daemon the way an operator would expect: from the same
configuration file the daemon runs with — the Unix socket when one is
configured (it needs no port and works inside a pod), else the TCP listener
(a wildcard bind address is reached on loopback) — and it sends the ingest
token from that file when one is set.

It speaks to the admin API the way that API insists on, to keep web pages
out (see ``admin.py``): every call that changes state carries
``Content-Type: application/json``, even with no body, and the ``Host`` it
sends names loopback — ``localhost:PORT`` over TCP, whatever the configured
address is called (a host name that ``/etc/hosts`` maps to 127.0.1.1 is
loopback, but the API cannot know that from the name), and ``localhost`` on
the Unix socket, where the URL's host is only a placeholder.

When the Unix socket cannot be reached — the file is missing, nothing
listens on it, or this user may not open it (mode 0660, another group) — and
the configuration also has a TCP listener, the client tries that instead
and says so in one line: the daemon may well be running with a socket the
operator cannot use. Only a failure to *connect* falls back, never a request
that reached the daemon, so nothing is ever sent twice. When neither
answers, the one error names both.

The client is the standard library's ``http.client``, synchronous: an
operator command makes one or two requests and exits, and importing aiohttp
(and asyncio) would cost it several times the request itself — the command
line's start-up target is 150 ms (see ``cli.py``). For the same reason it
takes an :class:`~forwarder.ops.locate.AdminAddress`, which ``locate.py``
reads from the file without pydantic, or validated settings (``top``).
:meth:`AdminClient.call` is the blocking call; :meth:`AdminClient.request`
runs it in a worker thread for callers on an event loop (``top``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from forwarder.errors import ForwarderError
from forwarder.ops.locate import AdminAddress, address_of

if TYPE_CHECKING:
    from forwarder.config.settings import Settings

TIMEOUT_SECONDS = 30.0
# The Host the admin API accepts from any loopback client (with the port over
# TCP); over the Unix socket it is the URL's placeholder host, sent as is.
LOOPBACK_HOST = "localhost"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class DaemonUnreachableError(ForwarderError):
    """Nothing answers at the configured ingest address."""


class AdminRequestError(ForwarderError):
    """The daemon answered with an error; ``status`` and ``payload`` say which."""

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload = payload if isinstance(payload, dict) else {"message": str(payload)}
        self.reason = str(self.payload.get("error") or f"http_{status}")
        self.message = str(self.payload.get("message") or f"HTTP {status}")
        super().__init__(f"HTTP {status}: {self.message}")


class _ConnectFailed(Exception):
    """No connection could be made (nothing was sent); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AdminClient:
    """Talks to a running daemon's ingest listener. Constructing it does no I/O.

    ``notice`` receives the one line saying that the Unix socket could not be
    reached and TCP was used instead.
    """

    def __init__(
        self, where: AdminAddress | Settings, notice: Callable[[str], None] | None = None
    ) -> None:
        ingest = where if isinstance(where, AdminAddress) else address_of(where)
        self._socket = ingest.unix_socket
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(ingest.host, ingest.host)
        host = f"[{host}]" if ":" in host else host
        self._tcp = f"{host}:{ingest.port}" if ingest.port is not None else None
        # Port 0 is picked by the kernel at each start: nothing to fall back on.
        self._fallback = bool(ingest.port)
        self.address = f"unix:{self._socket}" if self._socket else f"{host}:{ingest.port}"
        token = ingest.token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._notice = notice or (lambda line: None)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """:meth:`call` in a worker thread, for callers on an event loop."""
        # Already imported by whoever awaits this: the CLI's blocking path never loads it.
        import asyncio

        return await asyncio.to_thread(self.call, method, path, body, content_type)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request; return the decoded JSON answer or raise."""
        headers = dict(self._headers)
        # The admin API refuses (415) a call that changes state without this
        # label, even one with no body.
        if body is not None or method.upper() not in SAFE_METHODS:
            headers["Content-Type"] = content_type
        if self._socket is None:
            return self._over_tcp(method, path, body, headers, None)
        try:
            return self._send(self._socket, method, path, body, headers)
        except _ConnectFailed as failure:
            if not self._fallback:
                raise self._unreachable(self.address, failure.reason) from None
            socket_failure = f"unix:{self._socket} ({failure.reason})"
        # Later requests of this command go straight to TCP.
        self._socket, self.address = None, str(self._tcp)
        return self._over_tcp(method, path, body, headers, socket_failure)

    def _over_tcp(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        socket_failure: str | None,
    ) -> Any:
        try:
            answer = self._send(None, method, path, body, headers)
        except _ConnectFailed as failure:
            tried = f"{socket_failure} nor at " if socket_failure else ""
            raise self._unreachable(f"{tried}{self._tcp}", failure.reason) from None
        except AdminRequestError:
            if socket_failure:
                self._announce(socket_failure)
            raise
        if socket_failure:
            self._announce(socket_failure)
        return answer

    def _announce(self, socket_failure: str) -> None:
        self._notice(f"cannot reach the daemon at {socket_failure}; used TCP {self._tcp} instead")

    @staticmethod
    def _unreachable(where: str, reason: str) -> DaemonUnreachableError:
        return DaemonUnreachableError(
            f"cannot reach the daemon at {where} (is it running?): {reason}"
        )

    def _send(
        self,
        socket_path: str | None,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> Any:
        """One request over the socket (a path) or TCP (None); ``_ConnectFailed`` if not sent."""
        where = f"unix:{socket_path}" if socket_path else str(self._tcp)
        connection: http.client.HTTPConnection
        if socket_path:
            # The Host header is the connection's placeholder host: ``localhost``.
            connection = _UnixConnection(socket_path, TIMEOUT_SECONDS)
        else:
            connection = http.client.HTTPConnection(str(self._tcp), timeout=TIMEOUT_SECONDS)
            port = (self._tcp or "").rpartition(":")[2]
            headers = {**headers, "Host": f"{LOOPBACK_HOST}:{port}"}
        try:
            try:
                connection.connect()
            except TimeoutError:
                raise self._unreachable(where, "TimeoutError") from None
            except OSError as exc:
                raise _ConnectFailed(_reason(exc)) from None
            try:
                connection.request(method, path, body=body, headers=headers)
                answer = connection.getresponse()
                raw = answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as exc:
                # The request may have reached the daemon: never retried elsewhere.
                raise self._unreachable(where, type(exc).__name__) from None
        finally:
            connection.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        if status >= 400:
            raise AdminRequestError(status, payload)
        return payload


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket; the connection's host is only the ``Host`` header's value."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__(LOOPBACK_HOST, timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        """Connect to the socket file (``OSError`` as ``socket.connect`` raises it)."""
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(self.timeout)
        try:
            unix.connect(self._socket_path)
        except BaseException:
            unix.close()
            raise
        self.sock = unix


def _reason(error: OSError) -> str:
    """``Connection refused``, ``Permission denied``: the system's words, not a repr."""
    return os.strerror(error.errno) if error.errno else str(error) or type(error).__name__


def guess_content_type(data: bytes) -> str:
    """``application/json`` for one JSON document, else NDJSON (one per line)."""
    try:
        json.loads(data)
    except ValueError:
        return "application/x-ndjson"
    return "application/json"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def format_status(payload: dict[str, Any]) -> str:
    """The ``status`` table."""
    rows = [
        (
            f["name"],
            f["kind"],
            f["method"],
            f["host"],
            f["pending"],
            f"{f['oldest_pending_age_seconds']:.1f}s",
            f["last_attempt"]["at"],
            f["last_attempt"].get("code"),
            f["last_success_at"],
            f["consecutive_failures"],
            f["dead_letters"],
            # Seconds waited for rateLimit; "*" while a request waits now.
            f"{f.get('throttled_seconds', 0.0):.1f}s{'*' if f.get('throttled') else ''}",
        )
        for f in payload["forwarders"]
    ]
    headers = (
        "NAME",
        "KIND",
        "METHOD",
        "HOST",
        "PENDING",
        "OLDEST",
        "LAST ATTEMPT",
        "STATUS",
        "LAST SUCCESS",
        "FAILURES",
        "DEAD",
        "THROTTLED",
    )
    return table(headers, rows)


def format_deliveries(payload: dict[str, Any]) -> str:
    """The ``deliveries`` table, newest first."""
    rows = [
        (
            d["at"],
            d["attempt"],
            d["outcome"],
            d["code"],
            f"{d['duration_ms']:.1f}ms",
            d["events"],
            d["event_ids"][0] if d["event_ids"] else None,
            (d["error"] or "")[:60] or None,
        )
        for d in payload["deliveries"]
    ]
    headers = ("TIME", "ATTEMPT", "OUTCOME", "CODE", "DURATION", "EVENTS", "FIRST EVENT", "ERROR")
    return table(headers, rows)


def format_test(payload: dict[str, Any]) -> str:
    """The test button's invocation data, for a terminal."""
    request = payload["request"]
    lines = [
        f"test of {payload['forwarder']}: {'OK' if payload['ok'] else 'FAILED'}",
        "",
        f"request: {request['method']} {request['url']}",
    ]
    lines += [f"  {name}: {value}" for name, value in request["headers"].items()]
    lines += [f"  {request['body']}", ""]
    response = payload.get("response")
    if response:
        duration = response.get("duration_ms")
        took = f" in {duration:.1f} ms" if duration is not None else ""
        lines.append(f"response: {response['status']}{took}")
        lines += [f"  {name}: {value}" for name, value in (response.get("headers") or {}).items()]
        lines.append(f"  {response['body']}")
    error = payload.get("error")
    if error:
        lines.append(f"error: {error['code']}: {error['message']}")
    if payload.get("hint"):
        lines.append(f"hint: {payload['hint']}")
    return "\n".join(lines)


def format_dead_letters(payload: dict[str, Any]) -> str:
    """The ``dead-letters list`` table, newest first, with the total."""
    rows = [
        (
            d["id"],
            d["forwarder"],
            d["event_id"],
            d["event_type"],
            d["code"],
            (d["reason"] or "")[:50] or None,
            (d["response_body"] or "")[:40].replace("\n", " ") or None,
        )
        for d in payload["dead_letters"]
    ]
    headers = ("ID", "FORWARDER", "EVENT ID", "TYPE", "CODE", "REASON", "RESPONSE")
    shown = len(rows)
    return f"{table(headers, rows)}\n({shown} shown of {payload['total']})"
