"""Real servers on loopback for remote-endpoint tests: a forward proxy and an OAuth2 token endpoint.

``ForwardProxy`` is a small HTTP/1.1 forward proxy on asyncio streams: CONNECT
opens a tunnel (TLS stays end to end), an absolute-URI request is forwarded as
is (aiohttp's server accepts the absolute form). It checks
``Proxy-Authorization`` when given credentials (407 otherwise) and records
what it was asked. ``upstream`` overrides where it connects, whatever the
request names, so a test can name a public address (which the private-network
guard lets through) while every byte stays on loopback.

``TokenEndpoint`` is an aiohttp server answering the client credentials grant
from a script, recording every form it receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web


@dataclass
class ProxyRequest:
    """What the proxy was asked: the request line and the Proxy-Authorization sent."""

    method: str
    target: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    """A forward proxy on 127.0.0.1 (see the module docstring)."""

    username: str | None = None
    password: str | None = None
    upstream: tuple[str, int] | None = None
    requests: list[ProxyRequest] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The proxy's URL, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open tunnel."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authorized(self, value: str | None) -> bool:
        if self.username is None:
            return True
        pair = f"{self.username}:{self.password}".encode()
        return value == "Basic " + base64.b64encode(pair).decode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            authorization = headers.get("proxy-authorization")
            self.requests.append(ProxyRequest(method, target, authorization))
            if not self._authorized(authorization):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                    b"Connection: close\r\n\r\n"
                )
                await writer.drain()
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
            else:
                parts = urlsplit(target)
                host, port = str(parts.hostname), str(parts.port or 80)
            up_host, up_port = self.upstream or (host.strip("[]"), int(port))
            up_reader, up_writer = await asyncio.open_connection(up_host, up_port)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()


@dataclass
class TokenReply:
    """One scripted answer of the token endpoint; ``token`` None means a fresh one each time."""

    status: int = 200
    token: str | None = None
    expires_in: Any = 3600
    body: dict[str, Any] | None = None


class TokenEndpoint:
    """An OAuth2 token endpoint on loopback, answering from a script (default: a new token)."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.authorizations: list[str | None] = []
        self.issued: list[str] = []
        self.script: deque[TokenReply] = deque()
        self.port = 0
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The token URL (with a tenant in the path, as Entra ID's)."""
        return f"http://127.0.0.1:{self.port}/tenant-1/oauth2/v2.0/token"

    async def start(self) -> TokenEndpoint:
        """Listen on loopback (on the same port again after :meth:`stop`)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening: token requests are refused until :meth:`start` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.forms.append({key: str(value) for key, value in form.items()})
        self.authorizations.append(request.headers.get("Authorization"))
        reply = self.script.popleft() if self.script else TokenReply()
        if reply.body is not None:
            return web.json_response(reply.body, status=reply.status)
        if reply.status != 200:
            error = {"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"}
            return web.json_response(error, status=reply.status)
        token = reply.token or f"access-token-{next(self._counter)}-{'x' * 24}"
        self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if reply.expires_in is not None:
            body["expires_in"] = reply.expires_in
        return web.json_response(body)
