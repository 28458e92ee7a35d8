"""The real daemon against a remote-style endpoint: OAuth2, a proxy and signing-secret rotation.

The setup is the Microsoft Sentinel recipe on loopback: a token endpoint with
Entra ID's path, a Logs Ingestion-shaped URL taking a JSON array, an
authenticating forward proxy in front of both, and two signing secrets. The
receiver refuses the first token (401), then echoes the second one in a 500
body, then accepts: the daemon must refresh once, retry, deliver, and leave
neither token nor secret in its log or its history.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.destinations.webhook.loopback_servers import ForwardProxy, TokenEndpoint
from tests.support import (
    DaemonProcess,
    Reply,
    ScriptedReceiver,
    daemon_config,
    forwarder_config,
    post_events,
    wait_for,
)

CLIENT_SECRET = "e2e-client~secret.value_0123456789"
PROXY_PASSWORD = "e2e-proxy-password-9876"
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
STREAM_PATH = "/dataCollectionRules/dcr-0123456789abcdef/streams/Custom-AuditForwarder_CL"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[TokenEndpoint, ForwardProxy]]:
    """A token endpoint and an authenticating forward proxy on loopback."""
    endpoint = await TokenEndpoint().start()
    proxy = await ForwardProxy(username="svc", password=PROXY_PASSWORD).start()
    yield endpoint, proxy
    await proxy.stop()
    await endpoint.stop()


async def test_sentinel_recipe_through_a_proxy_with_token_refresh_and_rotation(
    receiver: ScriptedReceiver,
    servers: tuple[TokenEndpoint, ForwardProxy],
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """401 → one refresh; 500 → retried; delivered via the proxy, signed twice, nothing leaked."""
    endpoint, proxy = servers
    answers = iter([401, 500])

    async def decide(request: web.Request) -> Reply:
        status = next(answers, 200)
        # A receiver quoting the credentials it got, as error pages do.
        echo = request.headers.get("Authorization", "").encode()
        return Reply(status=status, body=b'{"error": "' + echo + b'"}')

    receiver.decide = decide
    (tmp_path / "client-secret").write_text(CLIENT_SECRET)
    (tmp_path / "proxy-password").write_text(PROXY_PASSWORD)
    forwarder = forwarder_config(
        f"{receiver.url.rstrip('/')}{STREAM_PATH}?api-version=2023-01-01",
        name="sentinel",
        batch={"maxEvents": 50, "maxWaitMs": 200},
        auth={
            "type": "oauth2",
            "tokenUrl": endpoint.url,
            "clientId": "00000000-app-id",
            "clientSecretFile": str(tmp_path / "client-secret"),
            "scopes": ["https://monitor.azure.com//.default"],
        },
        proxy={
            "url": proxy.url,
            "username": "svc",
            "passwordFile": str(tmp_path / "proxy-password"),
        },
        signingSecret=[OLD, NEW],
    )
    daemon = await daemons(daemon_config(tmp_path, [forwarder])).start()
    events = b'[{"id": "evt-1", "event_type": "user.login"}, {"id": "evt-2", "event_type": "x"}]'
    status, _, _ = await post_events(daemon.ingest_url, events)
    assert status == 202

    await wait_for(lambda: receiver.delivered, message="the batch delivered")
    delivered = receiver.delivered[0]
    assert delivered.path == STREAM_PATH
    assert delivered.query == {"api-version": "2023-01-01"}
    assert [event["id"] for event in delivered.json()] == ["evt-1", "evt-2"]
    # 401 → a second token at once; the 500 that follows is retried with that same token.
    assert len(endpoint.issued) == 2
    assert [r.headers["Authorization"] for r in receiver.attempts] == [
        f"Bearer {endpoint.issued[0]}",
        f"Bearer {endpoint.issued[1]}",
        f"Bearer {endpoint.issued[1]}",
    ]
    assert endpoint.forms[0]["scope"] == "https://monitor.azure.com//.default"
    assert endpoint.forms[0]["client_secret"] == CLIENT_SECRET
    for secret in (OLD, NEW):
        Webhook(secret).verify(delivered.body, delivered.headers)
    targets = {(request.method, request.target.split("?")[0]) for request in proxy.requests}
    assert ("POST", endpoint.url) in targets
    assert ("POST", f"{receiver.url.rstrip('/')}{STREAM_PATH}") in targets
    assert all(request.proxy_authorization for request in proxy.requests)

    assert await daemon.terminate() == 0
    connection = sqlite3.connect(tmp_path / "buffer.db")
    try:
        history = connection.execute(
            "SELECT code, error, response_body FROM delivery_attempts ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    assert [row[0] for row in history] == ["500", "200"]
    assert history[0][2] == b'{"error": "Bearer ***"}'
    stored = repr(history) + daemon.output()
    for secret in (CLIENT_SECRET, PROXY_PASSWORD, OLD, NEW, *endpoint.issued):
        assert secret not in stored
    assert "oauth2_token_fetched" in daemon.output()
