"""Fixtures for the admin API: a real buffer with dead letters, the real app on TCP and a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER
from forwarder.buffer.store import EventBuffer
from forwarder.config.settings import IngestConfig
from forwarder.delivery.forwarders import LocalForwarders
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.ingest.api import IngestContext, build_ingest_app
from forwarder.metrics import Metrics
from forwarder.ops.admin import AdminContext, add_admin_routes

Client = TestClient[web.Request, web.Application]
AppFactory = Callable[[str], web.Application]


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real buffer with forwarders siem and archive, and three dead letters."""
    opened = EventBuffer(tmp_path / "buffer.db")
    await opened.open(["siem", "archive"])
    rows = [
        ("siem", 1, "e-1", "a", 1.0, 2.0, 401, "401", "HTTP 401", b"no", b'{"n":1}'),
        ("siem", 2, "e-2", "a", 1.0, 2.0, 401, "401", "HTTP 401", b"no", b'{"n":2}'),
        ("archive", 3, "e-3", "b", 1.0, 2.0, 400, "400", "HTTP 400", b"bad", b'{"n":3}'),
    ]
    await opened.execute([(INSERT_DEAD_LETTER, rows)])
    yield opened
    await opened.close()


@pytest.fixture
def admin_app(buffer: EventBuffer) -> AppFactory:
    """Build the ingest app with the admin routes for a transport; workers not started."""

    def build(transport: str) -> web.Application:
        metrics = Metrics(CollectorRegistry())
        forwarders = LocalForwarders(buffer, metrics, on_failure=lambda task, exc: None)
        forwarders.workers = {
            name: DeliveryWorker(
                WebhookForwarderConfig(name=name, kind="webhook", uri=f"https://{name}.example/in"),
                buffer,
                metrics,
            )
            for name in ("siem", "archive")
        }
        app = build_ingest_app(IngestContext(buffer, IngestConfig(), metrics), transport)
        add_admin_routes(app, AdminContext(forwarders, buffer, lambda: None), transport)
        return app

    return build


@pytest.fixture
async def client(
    admin_app: AppFactory,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> Client:
    """The ingest app with the admin routes on loopback TCP."""
    return await aiohttp_client(admin_app("http"))


@pytest.fixture
async def unix_socket(
    admin_app: AppFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The same app served on a real Unix socket (a short path: sun_path is 108 bytes)."""
    path = str(tmp_path_factory.mktemp("sock") / "ingest.sock")
    runner = web.AppRunner(admin_app("unix"), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()


@pytest.fixture
async def tcp_port(admin_app: AppFactory) -> AsyncIterator[int]:
    """The same app served by a plain runner on 127.0.0.1, for clients other than aiohttp's."""
    runner = web.AppRunner(admin_app("http"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()
