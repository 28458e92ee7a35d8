"""The daemon's HTTP listeners: file descriptors, backlog, the Unix socket, the guard.

Everything about accepting connections lives here, so ``app.py`` only says
which app to serve where. Design decisions:

* **File descriptors.** Every connection is one; at the limit ``accept()``
  fails and uvloop resets whoever connects next, ingest, buffer files and
  metrics alike. At start the soft ``RLIMIT_NOFILE`` is raised to the hard
  limit (the unprivileged maximum; distributions default the soft one to
  1024), and the ingest cap defaults to what that leaves after a reserve for
  the buffer, the delivery pipe, the metrics listener and refusals in flight.
* **Backlog.** A burst of connections waits in the kernel's accept queue; on a
  Unix socket a full queue makes ``connect()`` fail at once (``EAGAIN``), so
  the listeners ask for 4096, as much as the default ``net.core.somaxconn``
  of current kernels. The kernel silently caps it at ``somaxconn``: we read
  it, log the backlog in effect, and warn when it is small.
* **The Unix socket is bound by us** (``unix_socket.py``), not by asyncio,
  whose ``create_unix_server(path)`` deletes whatever socket file is in the
  way, live or not; and it is removed at stop only if it is still ours.
* **A cap and deadlines per group of listeners** (``connections.py``): the
  ingest listeners (TCP and Unix) share one, the probes listener has its own
  small one, so a flood on ingest never takes ``/metrics`` or ``/readyz`` down
  with it.

Listeners are ``aiohttp.web.BaseSite`` subclasses, so ``runner.cleanup()``
stops them like its own sites and ``runner.addresses`` reports them.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from forwarder.config.settings import IngestConfig
from forwarder.ingest.connections import ConnectionGuard, ConnectionLimits, ConnectionStats
from forwarder.ingest.unix_socket import ClaimedSocket, claim_unix_socket
from forwarder.logs import get_logger

log = get_logger("listeners")

REQUESTED_BACKLOG = 4096
SMALL_BACKLOG = 1024
SOMAXCONN_PATH = Path("/proc/sys/net/core/somaxconn")
# File descriptors kept out of the ingest cap: buffer files, the delivery
# process's pipe, logs, the config watch, DNS lookups.
RESERVED_FDS = 256
MIN_DEFAULT_CONNECTIONS = 16
# Descriptors the default cap leaves for refusals (503s) in flight, at least.
MIN_LINGERING_REFUSALS = 128
# Past this, memory (not descriptors) is what runs out first.
MAX_DEFAULT_CONNECTIONS = 16384
# Where RLIMIT_NOFILE's hard limit is "unlimited" (macOS), ask for this much.
UNLIMITED_OPEN_FILES_TARGET = 65536
# Scrapers and kubelet probes: a few connections; the cap only bounds a flood.
PROBE_LIMITS = ConnectionLimits(
    max_connections=32, idle_timeout_seconds=30.0, request_timeout_seconds=10.0
)
PROBE_RESERVED_FDS = PROBE_LIMITS.max_connections


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_OPEN_FILES_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("open_files_limit", soft=target, hard=hard, raised_from=soft)
        return target
    log.info("open_files_limit", soft=soft, hard=hard)
    return soft


def open_files_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process now."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED_OPEN_FILES_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_budget(open_files: int) -> int:
    """Descriptors the ingest listeners may use: ``open_files`` less the reserve."""
    return open_files - RESERVED_FDS - PROBE_RESERVED_FDS


def default_max_connections(open_files: int) -> int:
    """The ingest cap that ``open_files`` descriptors allow, leaving room for refusals."""
    budget = connection_budget(open_files) - MIN_LINGERING_REFUSALS
    return max(MIN_DEFAULT_CONNECTIONS, min(MAX_DEFAULT_CONNECTIONS, budget))


def listen_backlog(somaxconn_path: Path = SOMAXCONN_PATH) -> int:
    """The accept-queue length the kernel will grant: ours, capped at ``somaxconn``."""
    try:
        somaxconn = int(somaxconn_path.read_text().strip())
    except (OSError, ValueError):
        return REQUESTED_BACKLOG  # not Linux: the kernel caps it its own way
    return max(1, min(REQUESTED_BACKLOG, somaxconn))


def format_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a TCP address, ``unix:<path>`` for a socket path."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{address}"


# -- sites and groups ----------------------------------------------------------------


class GuardedSite(web.BaseSite):
    """A TCP (``host``, ``port``) or Unix (bound ``sock``) listener behind a guard."""

    __slots__ = ("_guard", "_host", "_port", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        guard: ConnectionGuard,
        backlog: int,
        *,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        self._host = host
        self._port = port
        self._sock = sock

    @property
    def name(self) -> str:
        """The listener as a URL-ish name (aiohttp's convention)."""
        if self._sock is not None:
            return f"http://unix:{self._sock.getsockname()}:"
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen, with every accepted connection wrapped by the guard."""
        await super().start()
        server = self._runner.server
        assert server is not None
        factory = self._guard.protocol_factory(server)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_unix_server(
                factory, sock=self._sock, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=self._backlog
            )


class Listeners:
    """A group of listeners sharing one connection guard (the ingest ones, or the probes).

    Constructing it does no I/O; the cap is resolved when the first listener
    starts, after :func:`raise_open_files_limit` has run.
    """

    def __init__(
        self,
        name: str,
        *,
        max_connections: int | None,
        idle_timeout_seconds: float,
        request_timeout_seconds: float,
        shutdown_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.guard: ConnectionGuard | None = None
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout_seconds
        self._request_timeout = request_timeout_seconds
        self._shutdown_timeout = shutdown_timeout
        self._backlog = REQUESTED_BACKLOG
        self._runners: list[web.AppRunner] = []
        self._claims: list[ClaimedSocket] = []

    @classmethod
    def for_ingest(cls, config: IngestConfig, shutdown_timeout: float) -> Listeners:
        """The ingest group, limited by the ``ingest`` section."""
        return cls(
            "ingest",
            max_connections=config.max_connections,
            idle_timeout_seconds=config.idle_timeout_seconds,
            request_timeout_seconds=config.request_timeout_seconds,
            shutdown_timeout=shutdown_timeout,
        )

    @classmethod
    def for_probes(cls) -> Listeners:
        """The metrics/probes group, with its own small cap."""
        return cls(
            "probes",
            max_connections=PROBE_LIMITS.max_connections,
            idle_timeout_seconds=PROBE_LIMITS.idle_timeout_seconds,
            request_timeout_seconds=PROBE_LIMITS.request_timeout_seconds,
        )

    @property
    def addresses(self) -> list[str]:
        """Where the group listens, formatted for logs."""
        return [format_address(a) for runner in self._runners for a in runner.addresses]

    def stats(self) -> ConnectionStats:
        """The guard's counts (zeros before the first listener starts)."""
        if self.guard is None:
            return ConnectionStats(0, 0, {"over_limit": 0, "shed": 0, "timeout": 0})
        return self.guard.stats()

    async def serve_tcp(self, app: web.Application, host: str, port: int) -> None:
        """Serve ``app`` on ``host:port`` (port 0: a free one)."""
        guard = self._start_guard()
        runner = await self._runner(app, guard)
        await GuardedSite(runner, guard, self._backlog, host=host, port=port).start()

    async def serve_unix(self, app: web.Application, path: Path) -> None:
        """Serve ``app`` on the Unix socket ``path`` (mode 0660); see :func:`claim_unix_socket`."""
        guard = self._start_guard()
        sock, claim = claim_unix_socket(path)
        self._claims.append(claim)
        try:
            runner = await self._runner(app, guard)
            await GuardedSite(runner, guard, self._backlog, sock=sock).start()
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening, close connections (aiohttp's graceful shutdown), remove our socket.

        Safe to call twice.
        """
        # The socket file first: while our listening socket is open it pins the
        # inode, so a successor's file cannot have the number we compare with.
        # Connections already accepted are not affected by the unlink.
        for claim in self._claims:
            claim.release()
        self._claims.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self.guard is not None:
            self.guard.close_lingering()
            closed = {k: v for k, v in self.guard.closed.items() if v}
            if closed:
                log.info("connections_closed_early", listener=self.name, **closed)

    async def _runner(self, app: web.Application, guard: ConnectionGuard) -> web.AppRunner:
        # Innermost, so its 408 goes out through the app's own error middleware.
        app.middlewares.append(guard.middleware)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self._idle_timeout,
        )
        await runner.setup()
        self._runners.append(runner)
        return runner

    def _start_guard(self) -> ConnectionGuard:
        if self.guard is not None:
            return self.guard
        open_files = open_files_limit()
        budget = default_max_connections(open_files)
        max_connections = self._max_connections or budget
        self._backlog = listen_backlog()
        self.guard = ConnectionGuard(
            self.name,
            ConnectionLimits(
                max_connections,
                self._idle_timeout,
                self._request_timeout,
                max_lingering=max(
                    MIN_LINGERING_REFUSALS, connection_budget(open_files) - max_connections
                ),
            ),
        )
        log.info(
            "connection_limits",
            listener=self.name,
            max_connections=max_connections,
            idle_timeout_seconds=self._idle_timeout,
            request_timeout_seconds=self._request_timeout,
            backlog=self._backlog,
            open_files=open_files,
        )
        if self._backlog < SMALL_BACKLOG:
            log.warning(
                "listen_backlog_small",
                listener=self.name,
                backlog=self._backlog,
                hint="raise net.core.somaxconn so bursts of connections are not refused",
            )
        if self._max_connections is not None and self._max_connections > budget:
            log.warning(
                "connection_limit_above_open_files",
                listener=self.name,
                max_connections=self._max_connections,
                open_files=open_files,
                safe_max_connections=budget,
            )
        return self.guard
