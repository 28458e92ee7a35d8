"""Delivery in the daemon's own process: ``delivery.process: inline`` (and ``auto``).

The workers run on the daemon's event loop against the in-process
:class:`~forwarder.buffer.store.EventBuffer` (the same :class:`DeliveryBuffer`
port the delivery process satisfies with its ``RemoteBuffer``), so acks,
history rows and dead letters go straight to the buffer's single writer, as
they do through the channel with a separate process.

Why it exists: a sidecar is idle most of its life, and one interpreter that
has imported this stack holds ~50 MB; a second process doubles that for no
work. At a sidecar's rates one event loop has room for both ingest and
delivery (measured: see the README's Performance section); ``separate`` is
there for rates that need a second core.

``InlineDelivery`` has the shape of :class:`~forwarder.delivery.process.DeliveryProcess`,
so the daemon, the admin API, the housekeeping and ``/metrics`` do not care
where the workers run. Delivery metrics stay on a registry of their own,
exposed after the daemon's, exactly as the delivery process's are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest

from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import Settings
from forwarder.delivery.forwarders import LocalForwarders
from forwarder.logs import get_logger
from forwarder.metrics import ForwarderGauges, Metrics, counter_total

log = get_logger("daemon")


class InlineDelivery:
    """The delivery workers on the daemon's loop. Constructing it does no I/O."""

    def __init__(
        self, buffer: EventBuffer, settings: Settings, on_exit: Callable[[str], None]
    ) -> None:
        self._buffer = buffer
        self._settings = settings
        self._on_exit = on_exit
        self.metrics = Metrics(part="delivery")
        self.forwarders = LocalForwarders(
            buffer, self.metrics, self._worker_failed, settings.shutdown_grace_seconds
        )
        self.metrics.attach(ForwarderGauges(self.forwarders.gauges))
        self._started = False

    @property
    def pid(self) -> int | None:
        """The process the workers run in: the daemon's own, once started."""
        return os.getpid() if self._started else None

    def _worker_failed(self, task: str, exc: BaseException | None) -> None:
        log.error("task_failed", task=task, exc_info=exc)
        self._on_exit(f"{task} failed")

    async def start(self) -> None:
        """Start a worker per forwarder (the buffer registered their cursors when it opened)."""
        self._started = True
        await self.forwarders.start(self._settings.audit_log_forwarders)

    async def stop(self, grace_seconds: float) -> dict[str, Any]:
        """Stop the workers (in-flight requests get the grace). Safe to call twice."""
        if not self._started:
            return {}
        self._started = False
        summary = await self.forwarders.stop(grace_seconds)
        summary["delivered"] = counter_total(self.metrics.events_delivered)
        summary["dead_lettered"] = counter_total(self.metrics.events_dead_lettered)
        return summary

    def names(self) -> list[str]:
        """Forwarder names in configuration order."""
        return self.forwarders.names()

    async def statuses(self) -> list[dict[str, Any]]:
        """Every forwarder's state."""
        return await self.forwarders.statuses()

    async def gauges(self) -> list[tuple[str, int, float]]:
        """(name, pending, oldest age) per forwarder."""
        return self.forwarders.gauges()

    async def test(self, name: str) -> dict[str, Any]:
        """The test button, run by the worker's own request builder and session."""
        return await self.forwarders.test(name)

    async def exposition(self) -> bytes:
        """The delivery metrics in the Prometheus text format."""
        return generate_latest(self.metrics.registry)

    async def reload(self, new: Settings) -> dict[str, list[str]]:
        """Retire what changed, commit its last acks, re-register cursors, start the rest."""
        self.forwarders.grace_seconds = new.shutdown_grace_seconds
        plan = await self.forwarders.prepare(new.audit_log_forwarders)
        await self._buffer.execute([])  # commit the retired workers' last acks
        await self._buffer.register_forwarders(new.forwarder_names())
        await self.forwarders.finish()
        self._settings = new
        return plan
