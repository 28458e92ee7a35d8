"""The metrics listener: ``/metrics``, ``/healthz`` and ``/readyz``.

It starts first and stops last, so Kubernetes sees ``/readyz`` answer 503
for the whole of startup and shutdown instead of connection refused, and
``/healthz`` keeps answering while the daemon drains.

Both probes also fail once the buffer file was deleted or replaced under the
running daemon (``storage_problem``): a query on the open connection still
answers then, so "the database answers" alone would report a daemon that
can no longer keep anything as healthy. Failing liveness gets it restarted
onto a file that exists; failing readiness takes it out of a Service first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forwarder.metrics import Metrics

HEALTH_TIMEOUT_SECONDS = 2.0


@dataclass
class ProbeState:
    """What the probes report: readiness, and how to check the database."""

    metrics: Metrics
    ping_database: Callable[[], Awaitable[None]] | None = None
    # What happened to the buffer file, if it is no longer the one opened (a stat, no query).
    storage_problem: Callable[[], str | None] | None = None
    # The delivery process's part of the exposition, appended to ours.
    more_metrics: Callable[[], Awaitable[bytes]] | None = None
    ready: bool = False
    phase: str = "starting"


PROBE_KEY = web.AppKey("probe_state", ProbeState)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition of the daemon's registry."""
    state = request.app[PROBE_KEY]
    payload = generate_latest(state.metrics.registry)
    if state.more_metrics is not None:
        payload += await state.more_metrics()
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """200 while the event loop runs, the buffer file is the one opened and answers a query."""
    state = request.app[PROBE_KEY]
    problem = state.storage_problem() if state.storage_problem is not None else None
    if problem is not None:
        return web.json_response({"status": "unhealthy", "error": f"buffer: {problem}"}, status=503)
    if state.ping_database is not None:
        try:
            await asyncio.wait_for(state.ping_database(), HEALTH_TIMEOUT_SECONDS)
        except Exception as exc:
            return web.json_response(
                {"status": "unhealthy", "error": f"database: {type(exc).__name__}"}, status=503
            )
    return web.json_response({"status": "ok", "phase": state.phase})


async def readyz(request: web.Request) -> web.Response:
    """200 once the database is open and every ingest listener is bound, while the file is ours."""
    state = request.app[PROBE_KEY]
    problem = state.storage_problem() if state.storage_problem is not None else None
    if problem is not None:
        body = {"ready": False, "phase": state.phase, "error": f"buffer: {problem}"}
        return web.json_response(body, status=503)
    status = 200 if state.ready else 503
    return web.json_response({"ready": state.ready, "phase": state.phase}, status=status)


def build_probe_app(state: ProbeState) -> web.Application:
    """The aiohttp application of the metrics listener."""
    app = web.Application()
    app[PROBE_KEY] = state
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
