"""Which proxy a forwarder's request goes through: its ``proxy`` section, or the environment.

* With a ``proxy`` section, its URL (and Basic credentials) are used for the
  receiver and the OAuth2 token endpoint alike, except for hosts its
  ``noProxy`` lists; ``NO_PROXY`` and ``HTTP(S)_PROXY`` are then ignored for
  that forwarder, so one forwarder can go through a proxy the rest do not use.
* Without one, ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` (either case)
  apply, as curl reads them; a proxy given without a scheme
  (``proxy:3128``) is ``http://``.
* The choice is made once per forwarder and URL, when the forwarder starts,
  rather than per request (as aiohttp's ``trust_env`` would, with a netrc
  lookup in a thread each time): a changed environment needs a restart.
* https receivers are reached through a CONNECT tunnel, so TLS (and the
  receiver's certificate check) stays end to end; http ones by sending the
  absolute URL to the proxy. aiohttp does both, given the proxy URL.

The proxy URL returned here carries the password: it is a configured secret
(the masker knows it), and only aiohttp sees the URL.

``urllib.request`` and yarl are imported where they are used: this module is
loaded with the configuration's models, and ``check-config`` would pay for
them (with ``http.client`` and the email parser, ~15 ms) without calling
either. The daemon has them loaded by aiohttp already.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from forwarder.destinations.webhook.options import WebhookForwarderConfig


def _with_scheme(proxy: str) -> str:
    # curl and most tools take HTTPS_PROXY=proxy:3128 to mean http://proxy:3128.
    return proxy if "://" in proxy else f"http://{proxy}"


def env_proxy(url: str) -> str | None:
    """The proxy that ``HTTP(S)_PROXY`` / ``NO_PROXY`` name for ``url`` (as they are now)."""
    import urllib.request  # see the module docstring

    host = urlsplit(url).hostname or ""
    if host and urllib.request.proxy_bypass(host):
        return None
    found = urllib.request.getproxies_environment().get(urlsplit(url).scheme)
    return _with_scheme(found) if found else None


def bypasses(host: str, no_proxy: Iterable[str]) -> bool:
    """Whether ``host`` matches a ``noProxy`` entry (name or subdomain, IP, CIDR, or ``*``)."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            host.strip("[]")
        )
    except ValueError:
        address = None
    for entry in no_proxy:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                continue
        else:
            name = entry.lstrip(".").rstrip(".")
            if name and (host == name or host.endswith(f".{name}")):
                return True
    return False


def proxy_url(spec: WebhookForwarderConfig, url: str) -> str | None:
    """The proxy (with credentials) ``spec``'s requests to ``url`` go through; None: direct.

    The forwarder's ``proxy`` section when it has one (its ``noProxy`` then
    replaces ``NO_PROXY``), else the environment's proxies.
    """
    proxy = spec.proxy
    if proxy is None:
        return env_proxy(url)
    if bypasses(urlsplit(url).hostname or "", proxy.no_proxy):
        return None
    if proxy.username is None:
        return proxy.url
    password = proxy.password.get_secret_value() if proxy.password is not None else None
    from yarl import URL  # see the module docstring

    # yarl encodes the credentials; aiohttp sends them as Proxy-Authorization: Basic.
    return str(URL(proxy.url).with_user(proxy.username).with_password(password))


def forwarder_urls(spec: WebhookForwarderConfig) -> list[str]:
    """Every URL ``spec``'s session requests: the receiver and, for oauth2, the token endpoint."""
    token_url = spec.auth.token_url if spec.auth.type == "oauth2" else None
    return [spec.uri] if token_url is None else [spec.uri, token_url]
