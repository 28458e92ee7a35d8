"""Proxies: per-forwarder and environment proxies, CONNECT for https, and the private-network guard.

Every request goes through a real forward proxy on loopback (see
``loopback_servers.ForwardProxy``). Where a test names a public address, the
proxy is told to connect to a loopback receiver instead, so nothing leaves the
machine while the forwarder believes it is sending to the public address.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from pydantic import ValidationError

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.auth import forwarder_secrets
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.proxies import bypasses, env_proxy, proxy_url
from forwarder.destinations.webhook.requests import RequestBuilder
from forwarder.destinations.webhook.sending import Response, send_request
from forwarder.destinations.webhook.transport import DestinationGuard, build_connector
from forwarder.errors import PermanentDeliveryError, RetryableDeliveryError
from tests.destinations.webhook.loopback_servers import ForwardProxy
from tests.support import ScriptedReceiver

PUBLIC_IP = "93.184.216.34"  # only ever named: the proxy connects to loopback instead
PASSWORD = "proxy-pass-word-31337"


def spec(uri: str, **options: Any) -> WebhookForwarderConfig:
    """A forwarder entry as the YAML would give it."""
    return WebhookForwarderConfig.model_validate(
        {"kind": "webhook", "uri": uri, "name": "remote", **options}
    )


def event(number: int = 1) -> StoredEvent:
    """One stored event."""
    body = b'{"id": "evt-%d", "event_type": "user.login"}' % number
    return StoredEvent(number, f"evt-{number}", "user.login", time.time(), None, body)


async def deliver(spec_: WebhookForwarderConfig) -> Response:
    """Build and send one request as a delivery worker does (its connector, its builder)."""
    builder = RequestBuilder(spec_)
    async with aiohttp.ClientSession(connector=build_connector(spec_)) as session:
        request = builder.build([event()], time.time()).request
        return await send_request(session, request, 10)


ProxyFactory = Callable[..., Awaitable[ForwardProxy]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    """Start forward proxies on loopback; stopped at teardown."""
    started: list[ForwardProxy] = []

    async def make(**options: Any) -> ForwardProxy:
        proxy = await ForwardProxy(**options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.stop()


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variables from the machine running the tests."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
async def https_receiver(tmp_path: Path) -> AsyncIterator[tuple[ScriptedReceiver, Path]]:
    """An HTTPS receiver on loopback whose certificate also names PUBLIC_IP; and its CA file."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", PUBLIC_IP, "receiver.example").configure_cert(context)
    receiver = ScriptedReceiver()
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    receiver.port = runner.addresses[0][1]
    yield receiver, tmp_path / "ca.pem"
    await runner.cleanup()


# -- choosing the proxy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypassed"),
    [
        ("api.example.com", ["example.com"], True),
        ("example.com", [".example.com"], True),
        ("badexample.com", ["example.com"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.3"], True),
        ("11.1.2.3", ["10.0.0.0/8"], False),
        ("anything.test", ["*"], True),
        ("::1", ["::1/128"], True),
    ],
)
def test_no_proxy_entries(host: str, no_proxy: list[str], bypassed: bool) -> None:
    """noProxy matches a name and its subdomains, IPs and CIDRs, and * for everything."""
    assert bypasses(host, no_proxy) is bypassed


def test_environment_proxy_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch, no_env_proxy: None
) -> None:
    """HTTPS_PROXY applies to https URLs (scheme added when missing), NO_PROXY exempts hosts."""
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.corp")
    assert env_proxy("https://siem.example.com/") == "http://proxy.corp:3128"
    assert env_proxy("https://logs.internal.corp/") is None
    assert env_proxy("http://siem.example.com/") is None  # no HTTP_PROXY set


def test_forwarder_proxy_replaces_the_environment(
    monkeypatch: pytest.MonkeyPatch, no_env_proxy: None
) -> None:
    """A proxy section wins over HTTPS_PROXY, and its noProxy over NO_PROXY."""
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    forwarder = spec(
        "https://siem.example.com/",
        proxy={"url": "http://own-proxy:8080", "noProxy": ["direct.example.com"]},
    )
    assert proxy_url(forwarder, forwarder.uri) == "http://own-proxy:8080"
    assert proxy_url(forwarder, "https://direct.example.com/") is None


def test_proxy_password_is_a_masked_secret() -> None:
    """The proxy password (and an env proxy's) is among the forwarder's secrets."""
    forwarder = spec(
        "https://siem.example.com/",
        proxy={"url": "http://proxy:3128", "username": "svc", "password": PASSWORD},
    )
    assert PASSWORD in forwarder_secrets(forwarder)
    assert proxy_url(forwarder, forwarder.uri) == f"http://svc:{PASSWORD}@proxy:3128"


def test_env_proxy_password_is_a_masked_secret(
    monkeypatch: pytest.MonkeyPatch, no_env_proxy: None
) -> None:
    """Credentials in HTTPS_PROXY are masked like configured ones."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://svc:{PASSWORD}@proxy.corp:3128")
    assert PASSWORD in forwarder_secrets(spec("https://siem.example.com/"))


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"url": "socks5://proxy:1080"}, "must be an absolute http:// or https:// URL"),
        ({"url": "http://svc:pw@proxy:3128"}, "not in the url"),
        ({"url": "http://proxy:3128/path"}, "without a path"),
        ({"url": "http://proxy:3128", "password": "x"}, "a password needs a username"),
        (
            {"url": "http://proxy:3128", "username": "u", "password": "x", "passwordFile": "/p"},
            "set password or passwordFile, not both",
        ),
    ],
)
def test_proxy_section_is_validated(proxy: dict[str, Any], message: str) -> None:
    """A proxy that cannot work is refused with a message saying why."""
    with pytest.raises(ValidationError, match=message):
        spec("https://siem.example.com/", proxy=proxy)


# -- through a real proxy ----------------------------------------------------------------


async def test_http_receiver_through_an_authenticating_proxy(
    receiver: ScriptedReceiver, make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """An http receiver is reached by the absolute URL through the proxy, with Basic credentials."""
    proxy = await make_proxy(username="svc", password=PASSWORD)
    forwarder = spec(
        receiver.url + "ingest",
        proxy={"url": proxy.url, "username": "svc", "password": PASSWORD},
    )
    response = await deliver(forwarder)
    assert response.status == 200
    assert [(r.method, r.target) for r in proxy.requests] == [("POST", receiver.url + "ingest")]
    assert proxy.requests[0].proxy_authorization is not None
    assert receiver.events() == [{"id": "evt-1", "event_type": "user.login"}]


async def test_wrong_proxy_password_is_the_proxys_407(
    receiver: ScriptedReceiver, make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """A proxy refusing the credentials answers 407, and nothing reaches the receiver."""
    proxy = await make_proxy(username="svc", password=PASSWORD)
    forwarder = spec(
        receiver.url, proxy={"url": proxy.url, "username": "svc", "password": "wrong-pass"}
    )
    with pytest.raises(PermanentDeliveryError) as raised:
        await deliver(forwarder)
    assert raised.value.status == 407
    assert receiver.attempts == []


async def test_https_receiver_through_a_connect_tunnel(
    https_receiver: tuple[ScriptedReceiver, Path], make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """An https receiver is reached through CONNECT, its certificate verified end to end."""
    receiver, ca_file = https_receiver
    proxy = await make_proxy(username="svc", password=PASSWORD)
    forwarder = spec(
        f"https://127.0.0.1:{receiver.port}/",
        tls={"caFile": str(ca_file)},
        proxy={"url": proxy.url, "username": "svc", "password": PASSWORD},
    )
    assert (await deliver(forwarder)).status == 200
    assert [(r.method, r.target) for r in proxy.requests] == [
        ("CONNECT", f"127.0.0.1:{receiver.port}")
    ]
    assert proxy.requests[0].proxy_authorization is not None
    assert len(receiver.delivered) == 1


async def test_https_proxy_environment_variable_is_honoured(
    https_receiver: tuple[ScriptedReceiver, Path],
    make_proxy: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    no_env_proxy: None,
) -> None:
    """Without a proxy section, HTTPS_PROXY carries the request through a CONNECT tunnel."""
    receiver, ca_file = https_receiver
    proxy = await make_proxy()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    forwarder = spec(f"https://127.0.0.1:{receiver.port}/", tls={"caFile": str(ca_file)})
    assert (await deliver(forwarder)).status == 200
    assert [r.method for r in proxy.requests] == ["CONNECT"]


async def test_no_proxy_sends_directly(
    receiver: ScriptedReceiver, make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """A host noProxy names is reached directly: the proxy sees nothing."""
    proxy = await make_proxy()
    forwarder = spec(receiver.url, proxy={"url": proxy.url, "noProxy": ["127.0.0.0/8"]})
    assert (await deliver(forwarder)).status == 200
    assert proxy.requests == []
    assert len(receiver.delivered) == 1


# -- the private-network guard through a proxy -------------------------------------------


async def test_guard_lets_a_private_proxy_reach_a_public_destination(
    https_receiver: tuple[ScriptedReceiver, Path], make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """denyPrivateNetworks checks the destination, not the proxy: a loopback proxy is used."""
    receiver, ca_file = https_receiver
    proxy = await make_proxy(upstream=("127.0.0.1", receiver.port))
    forwarder = spec(
        f"https://{PUBLIC_IP}/",
        tls={"caFile": str(ca_file)},
        denyPrivateNetworks=True,
        proxy={"url": proxy.url},
    )
    assert (await deliver(forwarder)).status == 200
    assert [(r.method, r.target) for r in proxy.requests] == [("CONNECT", f"{PUBLIC_IP}:443")]
    assert len(receiver.delivered) == 1


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a private"),
        ("https://10.0.0.5/", "10.0.0.5 is a private"),
        ("http://localhost/", "(localhost resolves to it)"),
        ("https://no-such-host.invalid/", "no-such-host.invalid does not resolve here"),
    ],
)
async def test_guard_refuses_private_destinations_before_the_proxy(
    uri: str,
    refused: str,
    receiver: ScriptedReceiver,
    make_proxy: ProxyFactory,
    no_env_proxy: None,
) -> None:
    """Through a proxy, a private or unresolvable destination is refused before any request."""
    # Were the guard to fail, the proxy would still only reach loopback.
    proxy = await make_proxy(upstream=("127.0.0.1", receiver.port))
    forwarder = spec(uri, denyPrivateNetworks=True, proxy={"url": proxy.url})
    with pytest.raises(RetryableDeliveryError) as raised:
        await deliver(forwarder)
    assert raised.value.code == "connection_error"
    assert refused in raised.value.message
    assert proxy.requests == []
    assert receiver.attempts == []


async def test_guard_refuses_a_name_with_any_private_answer() -> None:
    """A name with a public and a private answer is refused: the proxy picks the address."""

    async def resolve(host: str, port: int) -> list[str]:
        return [PUBLIC_IP, "10.0.0.7"]

    with pytest.raises(OSError, match=r"10\.0\.0\.7 is a private.*mixed\.example resolves"):
        await DestinationGuard(resolve).check("https://mixed.example/")


async def test_guard_caches_answers_for_its_ttl() -> None:
    """The destination guard resolves a name once per TTL, not once per request."""
    asked: list[str] = []
    now = [0.0]

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return [PUBLIC_IP]

    guard = DestinationGuard(resolve, ttl=10, clock=lambda: now[0])
    await guard.check("https://siem.example/")
    await guard.check("https://siem.example/a")
    now[0] = 11
    await guard.check("https://siem.example/")
    assert asked == ["siem.example", "siem.example"]


async def test_without_the_guard_a_loopback_proxy_and_destination_work(
    receiver: ScriptedReceiver, make_proxy: ProxyFactory, no_env_proxy: None
) -> None:
    """The guard is what refuses private destinations: without it the same request is sent."""
    proxy = await make_proxy()
    forwarder = spec(receiver.url, proxy={"url": proxy.url})
    assert (await deliver(forwarder)).status == 200
    assert len(proxy.requests) == 1
