"""TLS options and the SSRF guard, against real HTTPS and HTTP servers on loopback.

No test sends traffic anywhere but loopback: public addresses are only
classified, and 169.254.169.254 must be refused before a socket exists.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.transport import (
    PrivateNetworkError,
    PrivateNetworkGuard,
    build_connector,
    check_tls,
    guarded_socket,
    is_private,
    ssl_context,
)
from tests.support import ScriptedReceiver


def spec(uri: str, **options: Any) -> WebhookForwarderConfig:
    """A forwarder entry as the YAML would give it."""
    return WebhookForwarderConfig.model_validate({"kind": "webhook", "uri": uri, **options})


async def get(connector: aiohttp.BaseConnector, url: str) -> int:
    """GET ``url`` through a session owning ``connector``; the status."""
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status


async def get_with(spec_: WebhookForwarderConfig, url: str | None = None) -> int:
    """GET ``url`` (default: the forwarder's URI) through the connector built for ``spec_``."""
    return await get(build_connector(spec_), url or spec_.uri)


StartHttps = Callable[[bool], Awaitable[tuple[str, ScriptedReceiver]]]


@dataclass
class Pki:
    """A private CA, its PEM on disk, and a client certificate it issued."""

    ca: trustme.CA
    ca_file: Path
    client_cert: Path
    client_key: Path
    client_combined: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh private CA and client certificate, written under tmp_path."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client = ca.issue_cert("forwarder@example.com")
    client.cert_chain_pems[0].write_to_path(tmp_path / "client.crt")
    client.private_key_pem.write_to_path(tmp_path / "client.key")
    client.private_key_and_cert_chain_pem.write_to_path(tmp_path / "client.pem")
    return Pki(
        ca,
        tmp_path / "ca.pem",
        tmp_path / "client.crt",
        tmp_path / "client.key",
        tmp_path / "client.pem",
    )


@pytest.fixture
async def https_server(pki: Pki) -> AsyncIterator[StartHttps]:
    """Start HTTPS receivers on 127.0.0.1 with a certificate from the private CA.

    ``await https_server(require_client_cert)`` returns the base URL and the receiver.
    """
    runners: list[web.AppRunner] = []

    async def start(require_client_cert: bool) -> tuple[str, ScriptedReceiver]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pki.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        if require_client_cert:
            pki.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        receiver = ScriptedReceiver()
        runner = web.AppRunner(receiver.app(), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}/", receiver

    yield start
    for runner in runners:
        await runner.cleanup()


class StaticResolver(AbstractResolver):
    """A resolver answering every name with fixed addresses: DNS we control, no network."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The fixed answers for any host."""
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""


# -- TLS ---------------------------------------------------------------------------------


def test_no_tls_options_keep_aiohttp_default_verification() -> None:
    """With no tls section there is no custom context: aiohttp verifies with its own."""
    assert ssl_context(spec("https://example.com/").tls) is None


def test_ca_file_is_added_to_the_system_cas(pki: Pki) -> None:
    """caFile adds the private CA to the system store instead of replacing it."""
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    context = ssl_context(spec("https://example.com/", tls={"caFile": str(pki.ca_file)}).tls)
    assert context is not None
    assert context.cert_store_stats()["x509_ca"] == system + 1
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


async def test_private_ca_is_trusted_with_ca_file(https_server: StartHttps, pki: Pki) -> None:
    """An HTTPS receiver signed by a private CA is reached when caFile names that CA."""
    url, _ = await https_server(False)
    assert await get_with(spec(url, tls={"caFile": str(pki.ca_file)})) == 200


async def test_private_ca_is_refused_without_ca_file(https_server: StartHttps) -> None:
    """Without caFile the same receiver fails certificate verification."""
    url, receiver = await https_server(False)
    with pytest.raises(aiohttp.ClientConnectorCertificateError, match="CERTIFICATE_VERIFY_FAILED"):
        await get_with(spec(url))
    assert receiver.attempts == []


async def test_insecure_skip_verify_reaches_an_untrusted_receiver(https_server: StartHttps) -> None:
    """insecureSkipVerify connects to a certificate no trusted CA signed."""
    url, _ = await https_server(False)
    assert await get_with(spec(url, tls={"insecureSkipVerify": True})) == 200


async def test_mtls_receiver_refuses_a_forwarder_without_client_cert(
    https_server: StartHttps, pki: Pki
) -> None:
    """A receiver that requires a client certificate rejects a forwarder without one."""
    url, receiver = await https_server(True)
    with pytest.raises(aiohttp.ClientError) as caught:
        await get_with(spec(url, tls={"caFile": str(pki.ca_file)}))
    # TLS 1.3 finishes the client's side of the handshake first: the refusal shows as a
    # disconnect (or a TLS alert under 1.2) when the request is sent, never as an answer.
    assert isinstance(caught.value, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError)
    assert receiver.attempts == []


@pytest.mark.parametrize("layout", ["separate", "combined"])
async def test_mtls_receiver_accepts_the_client_cert(
    https_server: StartHttps, pki: Pki, layout: str
) -> None:
    """certFile + keyFile (or one PEM holding both) present the client certificate."""
    url, _ = await https_server(True)
    tls: dict[str, str] = {"caFile": str(pki.ca_file)}
    if layout == "separate":
        tls |= {"certFile": str(pki.client_cert), "keyFile": str(pki.client_key)}
    else:
        tls |= {"certFile": str(pki.client_combined)}
    assert await get_with(spec(url, tls=tls)) == 200


def test_check_tls_reports_unusable_files(pki: Pki, tmp_path: Path) -> None:
    """check_tls names a missing file, a file that is not PEM and a key that does not match."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    other_key = tmp_path / "other.key"
    pki.ca.issue_cert("other@example.com").private_key_pem.write_to_path(other_key)

    def check(**tls: str) -> str | None:
        return check_tls(spec("https://example.com/", tls=tls).tls)

    assert check(caFile=str(pki.ca_file), certFile=str(pki.client_combined)) is None
    missing = check(caFile=str(tmp_path / "missing.pem"))
    assert missing is not None
    assert "No such file" in missing
    assert "cannot load the TLS files" in str(check(caFile=str(not_pem)))
    assert "cannot load the TLS files" in str(
        check(certFile=str(pki.client_cert), keyFile=str(other_key))
    )


# -- SSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("100.64.0.1", True),
        ("100.127.255.255", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("224.0.0.1", True),
        ("239.255.255.250", True),
        ("240.0.0.1", True),
        ("192.0.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("::", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("fec0::1", True),
        ("ff02::1", True),
        ("ff0e::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("::ffff:10.0.0.1", True),
        ("64:ff9b::10.0.0.1", True),
        ("64:ff9b::127.0.0.1", True),
        ("2002:7f00:1::", True),
        ("2001:db8::1", True),
        ("localhost", True),
        ("127.1", True),
        ("2130706433", True),
        ("", True),
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("100.63.255.255", False),
        ("100.128.0.0", False),
        ("172.32.0.1", False),
        ("2606:4700::1", False),
        ("[2606:4700::1]", False),
        ("2001:4860:4860::8888", False),
        ("::ffff:8.8.8.8", False),
        ("64:ff9b::8.8.8.8", False),
    ],
)
def test_is_private(address: str, private: bool) -> None:
    """is_private classifies every non-global address as private and public ones as not."""
    assert is_private(address) is private


def assert_refused(exc: aiohttp.ClientConnectorError, address: str) -> None:
    """The error is our refusal of ``address``, raised before any connection attempt."""
    assert isinstance(exc.os_error, PrivateNetworkError)
    assert exc.os_error.address == address
    assert f"refused: {address} is a private/loopback/link-local address" in str(exc)


async def test_guard_refuses_a_loopback_literal(receiver: ScriptedReceiver) -> None:
    """denyPrivateNetworks refuses http://127.0.0.1:<port>/ though a receiver listens there."""
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get_with(spec(receiver.url, denyPrivateNetworks=True))
    assert_refused(caught.value, "127.0.0.1")
    assert receiver.attempts == []


async def test_guard_refuses_a_name_resolving_to_loopback(receiver: ScriptedReceiver) -> None:
    """http://localhost:<port>/ is refused on the address the name resolves to."""
    url = f"http://localhost:{receiver.port}/"
    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await get_with(spec(url, denyPrivateNetworks=True))
    refusal = caught.value.os_error
    assert isinstance(refusal, PrivateNetworkError)
    assert refusal.address in ("127.0.0.1", "::1")
    assert_refused(caught.value, refusal.address)
    assert "(localhost resolves to it)" in str(caught.value)
    assert receiver.attempts == []


async def test_guard_refuses_cloud_metadata_before_connecting() -> None:
    """169.254.169.254 fails at once with the refusal, not a connect error or a timeout."""
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get_with(spec("http://169.254.169.254/latest/meta-data/", denyPrivateNetworks=True))
    assert_refused(caught.value, "169.254.169.254")


async def test_guard_refuses_an_ipv6_loopback_literal(receiver: ScriptedReceiver) -> None:
    """http://[::1]:<port>/ is refused like its IPv4 counterpart."""
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get_with(spec(f"http://[::1]:{receiver.port}/", denyPrivateNetworks=True))
    assert_refused(caught.value, "::1")


async def test_without_the_guard_loopback_is_reached(receiver: ScriptedReceiver) -> None:
    """With denyPrivateNetworks off (the default) the loopback receiver gets the request."""
    assert await get_with(spec(receiver.url)) == 200
    assert len(receiver.attempts) == 1


async def test_guarded_session_keeps_tls_options(https_server: StartHttps, pki: Pki) -> None:
    """The guard and a private CA combine: the CA is honoured, the loopback address refused."""
    url, _ = await https_server(False)
    guarded = spec(url, tls={"caFile": str(pki.ca_file)}, denyPrivateNetworks=True)
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get_with(guarded)
    assert_refused(caught.value, "127.0.0.1")


async def test_resolver_layer_drops_private_answers() -> None:
    """The guard resolver keeps the public answers of a mixed DNS reply and drops the rest."""
    guard = PrivateNetworkGuard(StaticResolver("127.0.0.1", "8.8.8.8", "169.254.169.254", "::1"))
    answers = await guard.resolve("mixed.example", 443)
    assert [answer["host"] for answer in answers] == ["8.8.8.8"]
    await guard.close()
    await guard.close()  # safe twice


async def test_rebinding_name_is_refused_at_connect_time(receiver: ScriptedReceiver) -> None:
    """A name whose DNS answer is loopback when the request is made is refused (DNS rebinding)."""
    connector = aiohttp.TCPConnector(
        resolver=PrivateNetworkGuard(StaticResolver("127.0.0.1")), socket_factory=guarded_socket
    )
    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await get(connector, f"http://rebind.example:{receiver.port}/")
    assert "refused: 127.0.0.1" in str(caught.value)
    assert "(rebind.example resolves to it)" in str(caught.value)
    assert receiver.attempts == []


async def test_socket_layer_refuses_what_a_resolver_lets_through(
    receiver: ScriptedReceiver,
) -> None:
    """Even if a resolver (or a cached answer) yields loopback, no socket is opened to it."""
    connector = aiohttp.TCPConnector(
        resolver=StaticResolver("127.0.0.1"), socket_factory=guarded_socket
    )
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await get(connector, f"http://unguarded.example:{receiver.port}/")
    assert_refused(caught.value, "127.0.0.1")
    assert receiver.attempts == []
