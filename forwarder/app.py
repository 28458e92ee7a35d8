"""The daemon: start → serve → stop, signals, draining and task supervision.

One process or two (``delivery.process``): this one always holds the ingest
listeners, the buffer and its single writer, probes, admin API, housekeeping
and reload; the delivery workers run on its own event loop (``inline``, and
``auto``: see ``delivery/inline.py`` for why that is the default) or in a
delivery process it spawns (``separate``: see ``delivery/process.py``). Both
have the same shape, so nothing else here cares which it is. A sidecar is
idle most of its life, so once started the daemon freezes what start-up
built out of the collector's way and, after each burst, drops the buffer's
read caches and gives memory back to the system (``forwarder/memory.py``).

Start order is probes listener → database → delivery → ingest
listeners, and ``/readyz`` turns 200 only after the last of them is bound.
Stop runs in reverse: readiness off and ingest closed first (new requests are
refused, requests already inside finish their commit), then the delivery
process drains (in-flight requests get the grace period, their acks come back
and are queued), then the buffer commits what is queued and closes, and the
probes listener goes last.

Every background task has an owner: if the buffer's writer, the housekeeping
or the delivery process dies unexpectedly, the daemon logs it and stops with
a non-zero exit code rather than run on silently degraded — acknowledged
events are safe in the buffer and the supervisor (systemd, Kubernetes)
restarts us.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from forwarder import __version__
from forwarder.buffer.retention import Housekeeper
from forwarder.buffer.store import EventBuffer
from forwarder.config.reload import Reloader
from forwarder.config.settings import Settings
from forwarder.delivery.inline import InlineDelivery
from forwarder.delivery.process import DeliveryProcess
from forwarder.errors import ForwarderError
from forwarder.ingest.api import IngestContext, build_ingest_app
from forwarder.ingest.connections import ConnectionGauges
from forwarder.ingest.listeners import Listeners, raise_open_files_limit
from forwarder.logs import configure_logging, get_logger, redactor
from forwarder.memory import MemoryTrimmer
from forwarder.metrics import BufferGauges, Metrics, ProcessMetrics, counter_total
from forwarder.ops.admin import AdminContext, add_admin_routes
from forwarder.ops.probes import ProbeState, build_probe_app

log = get_logger("daemon")


class StartupError(ForwarderError):
    """The daemon could not start: a port in use, or another OS-level refusal while binding."""


class Daemon:
    """One running audit-forwarder. Constructing it does no I/O."""

    def __init__(
        self,
        settings: Settings,
        config_path: Path,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        # Listeners and the buffer are bound once; a reload cannot move them.
        self._bound = settings
        self.metrics = metrics if metrics is not None else Metrics(part="ingest")
        self.buffer = EventBuffer(
            settings.buffer.path,
            synchronous=settings.buffer.synchronous,
            keyring=settings.buffer.keyring(),
        )
        self.delivery: InlineDelivery | DeliveryProcess
        if settings.delivery.process == "separate":
            self.delivery = DeliveryProcess(self.buffer, config_path, self._delivery_failed)
        else:
            self.delivery = InlineDelivery(self.buffer, settings, self._delivery_failed)
        self.housekeeper = Housekeeper(
            self.buffer,
            settings.buffer.retention_hours * 3600,
            settings.buffer.history_max_rows,
            self.delivery.gauges,
        )
        self.probes = ProbeState(
            self.metrics,
            ping_database=self.buffer.ping,
            storage_problem=self.buffer.file_watch.check,
            more_metrics=self.delivery.exposition,
        )
        self.ingest = IngestContext(
            self.buffer,
            settings.ingest,
            self.metrics,
            max_buffer_bytes=settings.buffer.max_bytes,
        )
        self.admin = AdminContext(self.delivery, self.buffer, self._ingest_token)
        self._ingest_listeners = Listeners.for_ingest(
            settings.ingest, settings.shutdown_grace_seconds
        )
        self._probe_listeners = Listeners.for_probes()
        self.trimmer = MemoryTrimmer(release=[self.buffer.release_memory])
        self._stop_requested = asyncio.Event()
        self._failure: str | None = None
        self._started_at = 0.0
        self.reloader = Reloader(self, config_path)
        redactor.update(settings.secrets())

    # -- start -----------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up; raise StartupError (after cleaning up) on failure."""
        self._started_at = time.monotonic()
        try:
            # The buffer's lock before anything binds: a second daemon on the same
            # file is refused naming the first one's PID, not a port in use.
            self.buffer.lock.acquire()
            raise_open_files_limit()
            await self._start_probes()
            await self.buffer.open(self.settings.forwarder_names())
            self._supervise(self.buffer.writer_task, "buffer-writer")
            self.metrics.attach(
                BufferGauges(
                    self.buffer_event_count, self.buffer.size_bytes, self.buffer.held_bytes_by_kind
                )
            )
            processes: dict[str, Callable[[], int | None]] = {"daemon": os.getpid}
            if isinstance(self.delivery, DeliveryProcess):
                processes["delivery"] = lambda: self.delivery.pid
            self.metrics.attach(ProcessMetrics(processes))
            await self.delivery.start()
            self.housekeeper.start()
            self._supervise(self.housekeeper.task, "housekeeping")
            self.reloader.start()
            self._supervise(self.reloader.task, "config-watch")
            self.trimmer.start()
            self._supervise(self.trimmer.task, "memory-trim")
            addresses = await self._start_ingest()
            # What start-up built lives as long as the daemon: out of the
            # collector's way, so its passes scan only what serving allocates.
            gc.collect()
            gc.freeze()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot start: {exc.strerror or exc}") from None
        except BaseException:
            await self.stop()
            raise
        self.probes.ready = True
        self.probes.phase = "serving"
        log.info(
            "daemon_started",
            version=__version__,
            ingest=addresses,
            metrics=self.metrics_addresses,
            buffer=str(self.settings.buffer.path.resolve()),
            synchronous=self.settings.buffer.synchronous,
            delivery_process=self._bound.delivery.process,
            delivery_pid=self.delivery.pid,
            forwarders=[
                {"name": str(f.name), "kind": f.kind, "method": f.method, "host": f.host}
                for f in self.settings.audit_log_forwarders
            ],
        )

    async def _start_probes(self) -> None:
        cfg = self.settings.metrics
        await self._probe_listeners.serve_tcp(build_probe_app(self.probes), cfg.host, cfg.port)
        log.info("probes_listening", metrics=self.metrics_addresses)

    async def _start_ingest(self) -> list[str]:
        cfg = self.settings.ingest
        listeners = self._ingest_listeners
        self.metrics.attach(ConnectionGauges(listeners.stats))
        if cfg.port is not None:
            await listeners.serve_tcp(self._ingest_app("http"), cfg.host, cfg.port)
        if cfg.unix_socket is not None:
            await listeners.serve_unix(self._ingest_app("unix"), cfg.unix_socket)
        return listeners.addresses

    def _ingest_app(self, transport: str) -> web.Application:
        app = build_ingest_app(self.ingest, transport)
        self.metrics.add_transport(transport)
        add_admin_routes(app, self.admin, transport)
        return app

    @property
    def metrics_addresses(self) -> list[str]:
        """Where the probes listener is bound."""
        return self._probe_listeners.addresses

    @property
    def ingest_addresses(self) -> list[str]:
        """Where the ingest listeners are bound."""
        return self._ingest_listeners.addresses

    # -- reload ----------------------------------------------------------------

    async def apply(self, new: Settings) -> None:
        """Apply a validated configuration to the running daemon (see reload.py)."""
        restart = [
            key
            for key, before, after in (
                ("ingest.host", self._bound.ingest.host, new.ingest.host),
                ("ingest.port", self._bound.ingest.port, new.ingest.port),
                ("ingest.unixSocket", self._bound.ingest.unix_socket, new.ingest.unix_socket),
                (
                    "ingest.maxConnections",
                    self._bound.ingest.max_connections,
                    new.ingest.max_connections,
                ),
                (
                    "ingest.idleTimeoutSeconds",
                    self._bound.ingest.idle_timeout_seconds,
                    new.ingest.idle_timeout_seconds,
                ),
                (
                    "ingest.requestTimeoutSeconds",
                    self._bound.ingest.request_timeout_seconds,
                    new.ingest.request_timeout_seconds,
                ),
                ("metrics.host", self._bound.metrics.host, new.metrics.host),
                ("metrics.port", self._bound.metrics.port, new.metrics.port),
                ("buffer.path", self._bound.buffer.path, new.buffer.path),
                ("buffer.synchronous", self._bound.buffer.synchronous, new.buffer.synchronous),
                ("delivery.process", self._bound.delivery.process, new.delivery.process),
                ("buffer.encryption", self._bound.buffer.encryption, new.buffer.encryption),
            )
            if before != after
        ]
        if restart:
            log.warning("config_restart_required", keys=restart, applied="everything else")
        configure_logging(new.logging.level, new.logging.format)
        redactor.update(self.settings.secrets() + new.secrets())
        self.ingest.config = new.ingest
        self.ingest.max_buffer_bytes = new.buffer.max_bytes
        self.housekeeper.retention_seconds = new.buffer.retention_hours * 3600
        self.housekeeper.history_max_rows = new.buffer.history_max_rows
        plan = await self.delivery.reload(new)
        self.settings = new
        redactor.update(new.secrets())
        log.info("config_reloaded", **plan, restart_required=restart)

    def _supervise(self, task: asyncio.Task[Any] | None, name: str) -> None:
        if task is None:
            return

        def done(finished: asyncio.Task[Any]) -> None:
            if finished.cancelled() or self._stop_requested.is_set():
                return
            # Supervised tasks only end by themselves when the daemon stops.
            exc = finished.exception()
            self._failure = f"{name} stopped unexpectedly"
            log.error("task_failed", task=name, exc_info=exc)
            self._stop_requested.set()

        task.add_done_callback(done)

    def _ingest_token(self) -> str | None:
        token = self.ingest.config.token
        return token.get_secret_value() if token is not None else None

    # -- state for metrics -----------------------------------------------------

    def buffer_event_count(self) -> int:
        """Events held in the buffer."""
        return self.buffer.event_count

    def _delivery_failed(self, reason: str) -> None:
        if self._stop_requested.is_set():
            return
        self._failure = reason
        log.error("task_failed", task="delivery", error=reason)
        self._stop_requested.set()

    # -- serve and stop --------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the daemon to drain and exit (signal handlers call this).

        A second SIGINT (Ctrl-C twice) exits at once: acknowledged events are
        safe in the buffer either way. A repeated SIGTERM is ignored, since
        supervisors resend it while waiting for the graceful exit.
        """
        if self._stop_requested.is_set():
            if reason == "SIGINT":
                log.warning("forced_exit", reason=reason)
                os._exit(1)
            return
        log.info("shutdown_requested", reason=reason)
        self._stop_requested.set()

    async def serve(self) -> int:
        """Start, wait for a signal or a failure, stop; return the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.request)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return 1 if self._failure else 0

    async def stop(self) -> None:
        """Drain and close everything that was started. Safe to call twice."""
        self._stop_requested.set()
        self.probes.ready = False
        self.probes.phase = "stopping"
        self.ingest.accepting = False
        await self.reloader.stop()
        await self._ingest_listeners.close()
        grace = self.settings.shutdown_grace_seconds
        summary = await self.delivery.stop(grace)
        if summary.get("unfinished"):
            log.warning("deliveries_cancelled", workers=summary["unfinished"], grace_seconds=grace)
        await self.housekeeper.stop()
        await self.trimmer.stop()
        await self.buffer.close()
        await self._probe_listeners.close()
        if self._started_at:
            log.info(
                "daemon_stopped",
                uptime_seconds=round(time.monotonic() - self._started_at, 3),
                received=counter_total(self.metrics.events_received),
                delivered=summary.get("delivered", 0),
                dead_lettered=summary.get("dead_lettered", 0),
                pending=summary.get("pending", {}),
                failure=self._failure,
            )
            self._started_at = 0.0
