"""OAuth2 client credentials against a real token endpoint and a real receiver on loopback.

The token endpoint (``loopback_servers.TokenEndpoint``) answers the client
credentials grant from a script; requests are built and sent as the delivery
worker does. Only the token provider's clock is injected, to pass an expiry
without waiting for it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from forwarder.buffer.store import StoredEvent
from forwarder.config.loading import load_config
from forwarder.destinations.webhook import oauth2
from forwarder.destinations.webhook.auth import forwarder_secrets
from forwarder.destinations.webhook.oauth2 import TokenProvider
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.requests import RequestBuilder
from forwarder.destinations.webhook.sending import Response, send_request
from forwarder.errors import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from forwarder.secrets import SecretMasker
from tests.destinations.webhook.loopback_servers import TokenEndpoint, TokenReply
from tests.support import Reply, ScriptedReceiver

CLIENT_SECRET = "client-secret~with.odd_chars-1234"


def spec(uri: str, token_url: str, **auth: Any) -> WebhookForwarderConfig:
    """A forwarder with auth.type oauth2 against ``token_url``."""
    section = {
        "type": "oauth2",
        "tokenUrl": token_url,
        "clientId": "app-1",
        "clientSecret": CLIENT_SECRET,
        **auth,
    }
    return WebhookForwarderConfig.model_validate(
        {"kind": "webhook", "name": "sentinel", "uri": uri, "auth": section}
    )


def event(number: int = 1) -> StoredEvent:
    """One stored event."""
    body = b'{"id": "evt-%d"}' % number
    return StoredEvent(number, f"evt-{number}", "user.login", time.time(), None, body)


@pytest.fixture(autouse=True)
def masker(monkeypatch: pytest.MonkeyPatch) -> SecretMasker:
    """A masker of this test's own: tokens learned here do not outlive it."""
    isolated = SecretMasker()
    monkeypatch.setattr(oauth2, "masker", isolated)
    return isolated


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    """A token endpoint on loopback."""
    server = await TokenEndpoint().start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session, closed at teardown."""
    async with aiohttp.ClientSession() as client:
        yield client


async def send(
    builder: RequestBuilder, session: aiohttp.ClientSession, number: int = 1
) -> Response:
    """Build and send one request, as the delivery worker does."""
    return await send_request(session, builder.build([event(number)], time.time()).request, 5)


def bearer(receiver: ScriptedReceiver) -> list[str]:
    """The Authorization header of every request the receiver got."""
    return [r.headers.get("Authorization", "") for r in receiver.attempts]


async def test_token_is_fetched_once_and_sent_as_bearer(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """One token serves many requests; the grant carries id, secret, scope, audience, extras."""
    builder = RequestBuilder(
        spec(
            receiver.url,
            endpoint.url,
            scopes=["https://monitor.azure.com//.default"],
            audience="api://siem",
            extraParams={"resource": "https://siem.example"},
        )
    )
    for number in (1, 2, 3):
        await send(builder, session, number)
    assert len(endpoint.forms) == 1
    assert endpoint.forms[0] == {
        "grant_type": "client_credentials",
        "client_id": "app-1",
        "client_secret": CLIENT_SECRET,
        "scope": "https://monitor.azure.com//.default",
        "audience": "api://siem",
        "resource": "https://siem.example",
    }
    assert bearer(receiver) == [f"Bearer {endpoint.issued[0]}"] * 3


async def test_client_auth_basic_sends_the_credentials_in_a_header(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """clientAuth basic: HTTP Basic of the form-encoded id and secret; no secret in the form."""
    await send(RequestBuilder(spec(receiver.url, endpoint.url, clientAuth="basic")), session)
    assert "client_secret" not in endpoint.forms[0]
    expected = base64.b64encode(f"app-1:{CLIENT_SECRET}".encode()).decode()
    assert endpoint.authorizations == [f"Basic {expected}"]


async def test_token_is_refreshed_before_it_expires(
    endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """At 80 % of expires_in the next request gets a new token; before, the cached one."""
    now = [1000.0]
    provider = TokenProvider(
        "sentinel", spec("http://x/", endpoint.url).auth, 5, clock=lambda: now[0]
    )
    endpoint.script.extend([TokenReply(expires_in=100), TokenReply(expires_in="100")])
    first = await provider.authorization(session)
    now[0] += 79
    assert await provider.authorization(session) == first
    now[0] += 2
    second = await provider.authorization(session)
    assert second != first
    assert [f"Bearer {t}" for t in endpoint.issued] == [first, second]


async def test_concurrent_requests_share_one_fetch(
    endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """Many requests needing a token at once cause one token request."""
    provider = TokenProvider("sentinel", spec("http://x/", endpoint.url).auth, 5)
    tokens = await asyncio.gather(*(provider.authorization(session) for _ in range(10)))
    assert len(set(tokens)) == 1
    assert len(endpoint.forms) == 1


async def test_401_refreshes_once_and_resends(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """A 401 drops the token, fetches a new one and sends again at once: delivered."""
    builder = RequestBuilder(spec(receiver.url, endpoint.url))
    receiver.respond(Reply(status=401))
    response = await send(builder, session)
    assert response.status == 200
    assert len(endpoint.issued) == 2
    assert bearer(receiver) == [f"Bearer {token}" for token in endpoint.issued]
    assert len(receiver.delivered) == 1


async def test_a_second_401_is_not_retried_again(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """Refused with a fresh token too: the 401 is the verdict (dead letter), after one refresh."""
    builder = RequestBuilder(spec(receiver.url, endpoint.url))
    receiver.respond(Reply(status=401), Reply(status=401))
    with pytest.raises(PermanentDeliveryError) as raised:
        await send(builder, session)
    assert raised.value.status == 401
    assert len(receiver.attempts) == 2
    assert len(endpoint.issued) == 2


async def test_token_endpoint_down_is_a_retryable_token_error(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """No token endpoint: a retryable token_error, and nothing is sent to the receiver."""
    builder = RequestBuilder(spec(receiver.url, endpoint.url))
    await endpoint.stop()
    with pytest.raises(RetryableDeliveryError) as raised:
        await send(builder, session)
    assert raised.value.code == "token_error"
    assert "cannot reach the token endpoint 127.0.0.1" in raised.value.message
    assert receiver.attempts == []


async def test_rejected_credentials_say_what_the_endpoint_said(
    receiver: ScriptedReceiver, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """A 401 from the token endpoint is token_rejected, with its error and description."""
    builder = RequestBuilder(spec(receiver.url, endpoint.url))
    endpoint.script.append(TokenReply(status=401))
    with pytest.raises(RetryableDeliveryError) as raised:
        await send(builder, session)
    assert raised.value.code == "token_rejected"
    assert "refused the client credentials (HTTP 401): invalid_client: AADSTS7000215" in (
        raised.value.message
    )
    assert receiver.attempts == []


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (TokenReply(status=503), "answered HTTP 503"),
        (TokenReply(body={"token_type": "Bearer"}), "has no access_token"),
        (TokenReply(body={"access_token": "abc", "token_type": "mac"}), "other than Bearer"),
    ],
)
async def test_unusable_token_answers_are_token_errors(
    reply: TokenReply, problem: str, endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """A 5xx or an answer without a usable bearer token is a retryable token_error."""
    provider = TokenProvider("sentinel", spec("http://x/", endpoint.url).auth, 5)
    endpoint.script.append(reply)
    with pytest.raises(RetryableDeliveryError, match=problem) as raised:
        await provider.authorization(session)
    assert raised.value.code == "token_error"


async def test_cached_token_outlives_a_failed_refresh(
    endpoint: TokenEndpoint, session: aiohttp.ClientSession
) -> None:
    """A refresh failing before the token expires keeps the cached token in use."""
    now = [0.0]
    provider = TokenProvider(
        "sentinel", spec("http://x/", endpoint.url).auth, 5, clock=lambda: now[0]
    )
    endpoint.script.extend([TokenReply(expires_in=100), TokenReply(status=503)])
    first = await provider.authorization(session)
    now[0] = 85
    assert await provider.authorization(session) == first
    now[0] = 101
    endpoint.script.append(TokenReply(status=503))
    with pytest.raises(RetryableDeliveryError):
        await provider.authorization(session)


async def test_token_and_secret_never_reach_logs_unmasked(
    receiver: ScriptedReceiver,
    endpoint: TokenEndpoint,
    session: aiohttp.ClientSession,
    masker: SecretMasker,
) -> None:
    """The token is learned by the masker before use; neither it nor the secret is logged."""
    forwarder = spec(receiver.url, endpoint.url)
    masker.update(forwarder_secrets(forwarder))
    builder = RequestBuilder(forwarder)
    # A receiver echoing the credentials it got, as some error pages do.
    receiver.respond(Reply(status=401, body=b"bad token"), Reply(status=500))
    with capture_logs() as logs, pytest.raises(RetryableDeliveryError):
        await send(builder, session)
    token = endpoint.issued[-1]
    assert masker.mask(f"echo {token} and {CLIENT_SECRET}") == "echo *** and ***"
    assert [entry["event"] for entry in logs] == ["oauth2_token_fetched"] * 2
    assert token not in repr(logs)
    assert CLIENT_SECRET not in repr(logs)
    masker.update([])  # a reload keeps what was learned
    assert masker.mask(token) == "***"


def write_config(tmp_path: Path, auth: dict[str, Any], **forwarder: Any) -> Path:
    """A configuration file with one forwarder using ``auth``."""
    path = tmp_path / "config.yaml"
    config = {
        "ingest": {"port": 0},
        "auditLogForwarders": [
            {"kind": "webhook", "uri": "https://siem.example/", "auth": auth, **forwarder}
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"type": "oauth2", "clientId": "a", "clientSecret": "s"}, "type oauth2 needs tokenUrl"),
        (
            {"type": "oauth2", "tokenUrl": "ftp://idp/", "clientId": "a", "clientSecret": "s"},
            "tokenUrl must be an absolute http:// or https:// URL",
        ),
        ({"type": "oauth2", "tokenUrl": "https://idp/t", "clientId": "a"}, "needs clientSecret"),
        ({"type": "bearer", "tokenUrl": "https://idp/t"}, "tokenUrl: only for type oauth2"),
        (
            {
                "type": "oauth2",
                "tokenUrl": "https://idp/t",
                "clientId": "a",
                "clientSecret": "s",
                "extraParams": {"client_secret": "x"},
            },
            "extraParams cannot set client_secret",
        ),
        (
            {
                "type": "oauth2",
                "tokenUrl": "https://idp/t",
                "clientId": "a",
                "clientSecret": "s",
                "scopes": ["a b"],
            },
            "is not one scope",
        ),
    ],
)
def test_check_config_explains_oauth2_mistakes(
    tmp_path: Path, auth: dict[str, Any], message: str
) -> None:
    """An oauth2 section that cannot work fails loading, said at auditLogForwarders[0].auth."""
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, auth))
    problems = [str(problem) for problem in raised.value.problems]
    assert any(p.startswith("auditLogForwarders[0].auth") and message in p for p in problems), (
        problems
    )


def test_oauth2_with_a_static_token_is_refused(tmp_path: Path) -> None:
    """oauth2 fetches its own token: a token beside it is a mistake, said at .token."""
    auth = {"type": "oauth2", "tokenUrl": "https://idp/t", "clientId": "a", "clientSecret": "s"}
    with pytest.raises(ConfigError, match=r"\.token: auth.type oauth2 fetches its token"):
        load_config(write_config(tmp_path, auth, token="static"))


def test_client_secret_file_is_read_and_masked(tmp_path: Path) -> None:
    """clientSecretFile (relative to the config file) is read at load, and its value is a secret."""
    (tmp_path / "client-secret").write_text(CLIENT_SECRET + "\n")
    auth = {"type": "oauth2", "tokenUrl": "https://idp/t", "clientId": "a"}
    settings = load_config(write_config(tmp_path, {**auth, "clientSecretFile": "client-secret"}))
    forwarder = settings.audit_log_forwarders[0]
    assert forwarder.auth.client_secret is not None
    assert forwarder.auth.client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET in settings.secrets()


def test_unreadable_client_secret_file_is_a_problem(tmp_path: Path) -> None:
    """A missing clientSecretFile fails loading at its YAML path."""
    auth = {"type": "oauth2", "tokenUrl": "https://idp/t", "clientId": "a"}
    with pytest.raises(ConfigError, match=r"auth\.clientSecretFile: cannot read"):
        load_config(write_config(tmp_path, {**auth, "clientSecretFile": "missing"}))
