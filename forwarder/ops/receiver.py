"""A debug receiver: prints every delivery it gets, with its headers, and answers.

It exists for the quick start and for trying a configuration by hand: point a
forwarder at it and watch what the destination would see. ``--status`` makes
it answer something else than 200, to watch retries and dead letters.

Its output lands in terminals and CI logs, so credentials are never printed,
not even in part: the value of every well-known credential header is shown
as ``***`` (after its scheme: ``Bearer ***``), and so is the value of every
well-known secret query parameter (``?token=***``), as the daemon's display
URLs show them. The receiver has no configuration to learn other secrets
from. Bodies are printed: showing what the destination would receive is the
receiver's purpose.

A port it cannot listen on (in use, privileged) is a
:class:`ReceiverBindError`, which the command line reports in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

from aiohttp import web

from forwarder.destinations.webhook.auth import SECRET_HEADERS, mask_url
from forwarder.errors import ForwarderError
from forwarder.secrets import MASK


class ReceiverBindError(ForwarderError):
    """The receiver cannot listen on the address it was given."""


def _mask(name: str, value: str) -> str:
    if name.lower() not in SECRET_HEADERS:
        return value
    scheme, space, _ = value.partition(" ")
    return f"{scheme} {MASK}" if space else MASK


def format_delivery(method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    """Render one delivery for a terminal."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    lines = [f"--- {stamp} {method} {mask_url(path)} ({len(body)} bytes)"]
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
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio's message repeats the address; the errno's words do not.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ReceiverBindError(f"cannot listen on {host}:{port}: {reason}") from None
    print(f"receiver listening on http://{host}:{port}/ (answering {status})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
