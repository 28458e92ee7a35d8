"""The connection layer of a forwarder's HTTP session: TLS options, proxies, the SSRF guard.

TLS: a private CA is *added* to the system CAs (``load_verify_locations`` on
a default context), so a receiver whose certificate moves from the company CA
to a public one (or back) keeps working; ``certFile`` /
``keyFile`` present a client certificate (mTLS); ``insecureSkipVerify`` turns
verification off (the caller logs that it did, not this module). With no TLS
option set, :func:`ssl_context` returns None and aiohttp's own verified
context is used. Building a context reads files and the system CA store:
call it at startup, not per request.

SSRF (``denyPrivateNetworks``, Atmos Pro's protection): a URL is only as safe
as the address it resolves to *when the connection is made* — checking the
host name once at configuration time is bypassed by DNS rebinding (a name that
resolves to a public address for the check and to 169.254.169.254 for the
request). So the check runs on resolved addresses, in two layers:

1. :class:`PrivateNetworkGuard`, an ``aiohttp.abc.AbstractResolver`` around
   aiohttp's default resolver, drops private answers. A name with both public
   and private answers still reaches its public ones, and a name with only
   private answers fails with a message naming the address.
2. A ``socket_factory`` (aiohttp ≥ 3.12) checks every address the connector
   is about to open a socket to, before the socket exists. aiohttp never
   passes IP literals (``http://127.0.0.1/``, ``http://[::1]/``) to the
   resolver, so this layer is what refuses them; it also covers answers
   served from aiohttp's DNS cache and any resolver aiohttp might call in a
   later version. We chose it over overriding ``TCPConnector._resolve_host``
   (private API) or checking the URL's literal host when the connector is
   built (which misses every other URL the session may be asked to reach).

Both raise :class:`PrivateNetworkError`, an ``OSError``, which aiohttp wraps
in ``ClientConnectorError`` (``ClientConnectorDNSError`` from the resolver):
delivery sees an ordinary ``aiohttp.ClientError`` ("connection_error"), with
``[refused: 169.254.169.254 is a private/loopback/link-local address]`` in its
message, and no packet was sent to the refused address.

"Private" (:func:`is_private`) means every address that is not globally
routable — loopback, RFC 1918, link-local (cloud metadata), CGNAT
(100.64.0.0/10), unique-local, unspecified, multicast, reserved and
documentation ranges — judged on the embedded IPv4 address for IPv4-mapped
(``::ffff:127.0.0.1``) and NAT64 (``64:ff9b::/96``) addresses. Anything that is
not an IP address at all is treated as private: the guard fails closed.

Proxies (chosen in :mod:`forwarder.destinations.webhook.proxies`): the
socket goes to the proxy and the proxy resolves the receiver, so the guard
moves to where it can still see the final destination:

* the proxy itself is trusted — the operator named it, and corporate
  proxies live on private networks — so the connector lets the proxy's
  addresses through (its literal IP, or what its name resolved to);
* :class:`DestinationGuard` checks the receiver's host *before* the request
  goes to the proxy: a private IP literal is refused, and a name is resolved
  here and refused if *any* answer is private (the proxy, not we, picks the
  address it connects to). A name that does not resolve here is refused
  too: the guard fails closed, so with ``denyPrivateNetworks`` the forwarder
  must be able to resolve what it sends to.

The proxy resolves the name again, so a name that changes its answers
between the two lookups (DNS rebinding) can still reach a private address
behind the proxy: where that matters, the proxy must enforce its own egress
policy as well.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from forwarder.destinations.webhook.options import TlsConfig, WebhookForwarderConfig
from forwarder.destinations.webhook.proxies import forwarder_urls, proxy_url
from forwarder.errors import ForwarderError

if TYPE_CHECKING:
    from aiohappyeyeballs import AddrInfoType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``tls``, or None for aiohttp's default verification.

    Raises ``OSError`` (``ssl.SSLError`` for a bad PEM) if a file cannot be
    loaded; :func:`check_tls` turns that into a message for ``check-config``.
    """
    if tls.ca_file is None and tls.cert_file is None and not tls.insecure_skip_verify:
        return None
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])  # as aiohttp's own contexts do
    return context


def check_tls(tls: TlsConfig) -> str | None:
    """Why ``tls`` cannot be loaded (missing file, bad PEM, key not matching), or None."""
    try:
        ssl_context(tls)
    except ssl.SSLError as exc:
        return f"cannot load the TLS files: {exc.reason or exc}"
    except OSError as exc:
        return f"cannot read {exc.filename or 'a TLS file'}: {exc.strerror or exc}"
    return None


class PrivateNetworkError(ForwarderError, OSError):
    """A connection to a private address was refused by ``denyPrivateNetworks``.

    An ``OSError`` so that aiohttp's connector wraps it in
    ``ClientConnectorError`` like any failure to connect; ``strerror`` carries
    the message that wrapper shows.
    """

    def __init__(self, address: str, host: str | None = None) -> None:
        message = f"refused: {address} is a private/loopback/link-local address"
        if host is not None and host != address:
            message += f" ({host} resolves to it)"
        super().__init__(errno.EACCES, message)
        self.address = address
        self.host = host

    def __str__(self) -> str:
        return str(self.strerror)


class UncheckedDestinationError(ForwarderError, OSError):
    """A proxied request was refused because its host could not be resolved to be checked."""

    def __init__(self, host: str, reason: str) -> None:
        message = (
            f"refused: {host} does not resolve here ({reason}), and denyPrivateNetworks"
            " must see its addresses before sending it to the proxy"
        )
        super().__init__(errno.EACCES, message)
        self.host = host

    def __str__(self) -> str:
        return str(self.strerror)


def _is_private_ip(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_private_ip(ip.ipv4_mapped)
        if ip in _NAT64:
            return _is_private_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and _is_private_ip(ip.sixtofour):
            return True
        if ip.is_site_local:
            return True
    # is_global alone misses multicast (224.0.0.0/4 and ff0e::/16 count as global).
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def is_private(address: str) -> bool:
    """True unless ``address`` is a globally routable unicast IP address (see the module doc).

    Accepts ``[v6]`` brackets and ``%zone`` suffixes; a string that is not an IP
    address (a host name, legacy ``127.1``) is private: the guard fails closed.
    """
    try:
        ip = ipaddress.ip_address(address.removeprefix("[").removesuffix("]"))
    except ValueError:
        return True
    return _is_private_ip(ip)


def _ip(address: str) -> IPAddress | None:
    """``address`` as an IP address (brackets and ``%zone`` allowed), or None."""
    try:
        return ipaddress.ip_address(address.removeprefix("[").removesuffix("]").split("%")[0])
    except ValueError:
        return None


class PrivateNetworkGuard(AbstractResolver):
    """A resolver that drops private addresses from another resolver's answers.

    ``proxies`` are the hosts of the forwarder's proxies: their answers are
    kept whole and remembered, so that :meth:`open_socket` lets connections to
    them through (the guard applies to the final destination, not the proxy).
    """

    def __init__(self, resolver: AbstractResolver, proxies: Iterable[str] = ()) -> None:
        self._resolver = resolver
        self._closed = False
        self._proxy_names = {host.lower() for host in proxies if _ip(host) is None}
        self.proxy_addresses = {ip for host in proxies if (ip := _ip(host)) is not None}

    def open_socket(self, addr_info: AddrInfoType) -> socket.socket:
        """A socket for ``addr_info``: a proxy's, or one :func:`guarded_socket` allows."""
        family, type_, proto, _, address = addr_info
        if _ip(str(address[0])) in self.proxy_addresses:
            return socket.socket(family=family, type=type_, proto=proto)
        return guarded_socket(addr_info)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The public answers for ``host``; PrivateNetworkError if every answer is private.

        A proxy's answers are returned whole, and remembered for :meth:`open_socket`.
        """
        answers = await self._resolver.resolve(host, port, family)
        if host.lower() in self._proxy_names:
            self.proxy_addresses.update(ip for a in answers if (ip := _ip(a["host"])) is not None)
            return answers
        public = [answer for answer in answers if not is_private(answer["host"])]
        if answers and not public:
            raise PrivateNetworkError(answers[0]["host"], host)
        return public

    async def close(self) -> None:
        """Close the wrapped resolver (once)."""
        if not self._closed:
            self._closed = True
            await self._resolver.close()


def guarded_socket(addr_info: AddrInfoType) -> socket.socket:
    """A socket for ``addr_info``, unless its address is private (PrivateNetworkError)."""
    family, type_, proto, _, address = addr_info
    host = str(address[0])
    if is_private(host):
        raise PrivateNetworkError(host)
    return socket.socket(family=family, type=type_, proto=proto)


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(answer[4][0]) for answer in answers]


class DestinationGuard:
    """``denyPrivateNetworks`` for requests sent through a proxy: checks the final host.

    Answers are cached for ``ttl`` seconds (aiohttp's own DNS cache time), so
    a busy forwarder does not resolve once per request; failures are not
    cached. ``resolve`` is injectable for tests; it defaults to the system
    resolver, as aiohttp's connector uses.
    """

    def __init__(
        self,
        resolve: Resolve = _getaddrinfo,
        *,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def check(self, url: str) -> None:
        """Return if ``url``'s host is public, else raise (PrivateNetworkError and the like)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if _ip(host) is not None:
            if is_private(host):
                raise PrivateNetworkError(host)
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for address in await self._addresses(host, port):
            if is_private(address):
                raise PrivateNetworkError(address, host)

    async def _addresses(self, host: str, port: int) -> list[str]:
        now = self._clock()
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise UncheckedDestinationError(host, str(exc.strerror or exc)) from None
        if not addresses:
            raise UncheckedDestinationError(host, "no addresses")
        self._cache[(host, port)] = (now + self._ttl, addresses)
        return addresses


class _GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector with both guard layers; closes the resolver it was given."""

    def __init__(self, guard: PrivateNetworkGuard, **options: Any) -> None:
        super().__init__(resolver=guard, socket_factory=guard.open_socket, **options)
        self._guard = guard

    async def close(self, *, abort_ssl: bool = False) -> None:
        """Close the connections, then the resolver (aiohttp leaves a given resolver open)."""
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._guard.close()


def build_connector(spec: WebhookForwarderConfig) -> aiohttp.TCPConnector:
    """The connector for ``spec``'s session: its TLS options and, if asked, the SSRF guard.

    Call it in the running event loop (aiohttp's connectors and resolvers
    bind to it); it reads the TLS files (see :func:`ssl_context`).
    """
    context = ssl_context(spec.tls)
    tls: ssl.SSLContext | bool = context if context is not None else True
    if not spec.deny_private_networks:
        return aiohttp.TCPConnector(ssl=tls)
    proxies = {proxy_url(spec, url) for url in forwarder_urls(spec)} - {None}
    hosts = [URL(proxy).host or "" for proxy in proxies if proxy is not None]
    return _GuardedConnector(PrivateNetworkGuard(DefaultResolver(), hosts), ssl=tls)
