"""A debug receiver: prints every delivery it gets, with its headers, and answers.

It exists for the quick start and for trying a configuration by hand: point a
forwarder at it and watch what the destination would see. ``--status`` makes
it answer something else than 200, to watch retries and dead letters.
Secrets in ``Authorization`` are shown masked, never in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import TextIO

from aiohttp import web

MASKED_HEADERS = frozenset({"authorization", "dd-api-key", "x-api-key"})


def _mask(name: str, value: str) -> str:
    if name.lower() not in MASKED_HEADERS:
        return value
    scheme, _, secret = value.partition(" ")
    if secret:
        return f"{scheme} {secret[:3]}***"
    return f"{value[:3]}***"


def format_delivery(method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    """Render one delivery for a terminal."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    lines = [f"--- {stamp} {method} {path} ({len(body)} bytes)"]
    lines += [f"  {name}: {_mask(name, value)}" for name, value in headers.items()]
    text = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    lines += ["", text, ""]
    return "\n".join(lines)


def build_receiver_app(status: int = 200, out: TextIO = sys.stdout) -> web.Application:
    """An application that prints each request and answers ``status``."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        print(
            format_delivery(request.method, request.path_qs, dict(request.headers), body),
            file=out,
            flush=True,
        )
        return web.json_response({"received": True}, status=status)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


async def run_receiver(host: str, port: int, status: int) -> None:
    """Serve until cancelled (Ctrl-C)."""
    runner = web.AppRunner(build_receiver_app(status), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"receiver listening on http://{host}:{port}/ (answering {status})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
