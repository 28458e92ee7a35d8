"""The delivery process: ``python -m forwarder.delivery.child --config F --fd N``.

Started by the daemon (never by hand) with one end of a socketpair. It runs
every delivery worker on its own event loop, so HTTP delivery uses the
machine's second core instead of competing with ingest for one, and it
answers the daemon's requests: start, status, gauges, the test button, its
part of the metrics, the two phases of a reload, and stop.

It ignores SIGINT and SIGTERM: the daemon decides when it stops (a Ctrl-C
reaches the whole process group; the daemon then asks this process to drain
in order). If the daemon disappears (the channel closes), it stops at once:
nothing is lost, since every acknowledgement it could not send means only a
re-delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import generate_latest

from forwarder.buffer.ipc import Channel
from forwarder.buffer.remote import RemoteBuffer
from forwarder.config.loading import load_config
from forwarder.config.settings import Settings
from forwarder.delivery.forwarders import LocalForwarders
from forwarder.errors import ConfigError
from forwarder.event_loop import event_loop_runner
from forwarder.logs import configure_logging, get_logger, redactor
from forwarder.memory import MemoryTrimmer
from forwarder.metrics import ForwarderGauges, Metrics, counter_total

log = get_logger("delivery_process")


class DeliveryChild:
    """The delivery process's state and its answers to the daemon."""

    def __init__(self, settings: Settings, config_path: Path, channel: Channel) -> None:
        self.settings = settings
        self.config_path = config_path
        self.channel = channel
        self.metrics = Metrics(part="delivery")
        self.buffer = RemoteBuffer(settings.buffer.path, channel, settings.buffer.keyring())
        self.forwarders = LocalForwarders(
            self.buffer, self.metrics, self._worker_failed, settings.shutdown_grace_seconds
        )
        self.metrics.attach(ForwarderGauges(self.forwarders.gauges))
        self.stopped = asyncio.Event()
        handlers = {
            "start": self.start,
            "statuses": self.statuses,
            "gauges": self.gauges,
            "test": self.test,
            "metrics": self.exposition,
            "prepare": self.prepare,
            "finish": self.finish,
            "stop": self.stop,
        }
        for kind, handler in handlers.items():
            channel.on(kind, handler)

    def _worker_failed(self, task: str, exc: BaseException | None) -> None:
        log.error("task_failed", task=task, exc_info=exc)
        with contextlib.suppress(Exception):
            self.channel.notify("failure", task=task, error=repr(exc))

    async def start(self, _: dict[str, Any]) -> list[str]:
        """Open the buffer, learn the cursors, start the workers."""
        await self.buffer.open()
        await self.buffer.sync()
        await self.forwarders.start(self.settings.audit_log_forwarders)
        return self.forwarders.names()

    async def statuses(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        """Every forwarder's state for the admin API."""
        return await self.forwarders.statuses()

    async def gauges(self, _: dict[str, Any]) -> list[tuple[str, int, float]]:
        """(name, pending, oldest age) per forwarder."""
        return self.forwarders.gauges()

    async def test(self, message: dict[str, Any]) -> dict[str, Any]:
        """The test button."""
        return await self.forwarders.test(str(message["name"]))

    async def exposition(self, _: dict[str, Any]) -> str:
        """This process's metrics in the Prometheus text format."""
        return generate_latest(self.metrics.registry).decode()

    async def prepare(self, _: dict[str, Any]) -> dict[str, list[str]]:
        """Reload, phase one: load the file the daemon validated, retire what changes."""
        try:
            settings = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            raise RuntimeError(f"the configuration changed again while reloading: {exc}") from None
        configure_logging(settings.logging.level, settings.logging.format)
        redactor.update(self.settings.secrets() + settings.secrets())
        self.forwarders.grace_seconds = settings.shutdown_grace_seconds
        plan = await self.forwarders.prepare(settings.audit_log_forwarders)
        self.settings = settings
        return plan

    async def finish(self, _: dict[str, Any]) -> list[str]:
        """Reload, phase two: the daemon re-registered cursors; start the new workers."""
        await self.buffer.sync()
        await self.forwarders.finish()
        redactor.update(self.settings.secrets())
        return self.forwarders.names()

    async def stop(self, message: dict[str, Any]) -> dict[str, Any]:
        """Stop the workers (in-flight requests get the grace); then this process exits."""
        summary = await self.forwarders.stop(float(message["grace"]))
        summary["delivered"] = counter_total(self.metrics.events_delivered)
        summary["dead_lettered"] = counter_total(self.metrics.events_dead_lettered)
        self.stopped.set()
        return summary


async def run(settings: Settings, config_path: Path, fd: int) -> int:
    """Serve the daemon until it asks to stop (0) or goes away (1)."""
    channel = await Channel.from_socket(socket.socket(fileno=fd))
    child = DeliveryChild(settings, config_path, channel)
    serving = asyncio.create_task(channel.serve(), name="delivery-channel")
    stopped = asyncio.create_task(child.stopped.wait())
    # Given back after each burst, as in the daemon (see forwarder/memory.py).
    trimmer = MemoryTrimmer()
    trimmer.start()
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    await trimmer.stop()
    if not child.stopped.is_set():
        log.error("daemon_gone", action="stopping deliveries")
        await child.forwarders.stop(0)
        await child.buffer.close()
        return 1
    # The stop reply was written when its handler returned; flush it, then close.
    with contextlib.suppress(Exception):
        await channel.drain()
    await channel.close()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await child.buffer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the delivery process."""
    parser = argparse.ArgumentParser(prog="audit-forwarder-delivery")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = load_config(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    structlog.contextvars.bind_contextvars(process="delivery")
    redactor.update(settings.secrets())
    return event_loop_runner()(run(settings, Path(args.config), args.fd))


if __name__ == "__main__":
    sys.exit(main())
