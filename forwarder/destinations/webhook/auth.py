"""How a forwarder's token goes out: an Authorization header, another header, or the URL.

The default is Chainloop's: ``Authorization: Bearer <token>`` when a token is
set and nothing when it is not. The other ``auth.type`` values cover the
seeds' receivers without custom code:

* ``header`` — any header, with an optional scheme: Splunk HEC's
  ``Authorization: Splunk <token>``, Datadog's ``DD-API-KEY: <token>``;
* ``basic`` — the token is ``user:password`` and goes out as HTTP Basic;
* ``query`` — the token is a query parameter (``?token=<token>``), URL-encoded
  and appended after the URI's own parameters. Logz.io's listener URL already
  carries ``?token=...``: a URI given that way works with no ``token`` set;
* ``none`` — no credentials at all;
* ``oauth2`` — a token fetched from ``auth.tokenUrl`` with the client
  credentials grant (:mod:`forwarder.destinations.webhook.oauth2`), added to
  each request at send time; nothing of it is fixed here.

Design decisions:

* Everything is computed once per forwarder (:func:`request_target`), not per
  request: the headers and URL are the same for every batch.
* A token in the URL is a secret in every log line that prints the URL, so a
  :class:`RequestTarget` carries a ``display_url`` with the query token, any
  other well-known secret parameter (``api_key``, ``sig``...) and the password
  of ``user:password@`` masked as ``***``. A secret in the *path* (Slack's
  ``/services/T00/B00/xxxx``) cannot be recognised; :func:`mask_url` masks any
  value the caller knows to be secret.
* The masker of every output (:mod:`forwarder.secrets`) needs the raw secret
  values; :func:`forwarder_secrets` lists those of one forwarder, including
  the ones that are not ``SecretStr`` fields: the password of a Basic token
  (a receiver may echo it alone), credentials pasted into the URI, and
  well-known credential headers set under ``headers``; each signing secret
  of a rotation; the OAuth2 client secret (and the ``id:secret`` pair
  ``clientAuth: basic`` encodes); the proxy password, whether configured or
  in ``HTTP(S)_PROXY``. Access tokens are learned when they are fetched.
* :func:`check_token` returns a message instead of raising, so
  ``check-config`` can list it with the YAML path it knows and we do not. It
  runs on the resolved token (``tokenFile`` is read by ``config/files.py``; this
  module does no I/O).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.proxies import env_proxy
from forwarder.destinations.webhook.signing import split_secrets
from forwarder.secrets import MASK, SecretMasker

# Query parameters masked in display URLs whatever auth.type says: a token pasted
# into the URI (Logz.io's ?token=, an ?api_key=, a pre-signed ?sig=) is still a secret.
SECRET_QUERY_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "secret",
        "password",
        "sig",
        "signature",
    }
)

# Headers whose values are credentials, whatever auth.type says: masked wherever shown.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "dd-api-key", "x-api-key", "x-splunk-token"}
)


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """Where a forwarder's requests go and the credentials they carry."""

    url: str
    """The URI to request: with the query token appended for ``auth.type: query``."""
    headers: dict[str, str]
    """The auth header(s) to send; empty for ``none`` and ``query``."""
    display_url: str
    """``url`` with every secret in it masked as ``***``: safe to log and show."""


def _token(spec: WebhookForwarderConfig) -> str | None:
    return spec.token.get_secret_value() if spec.token is not None else None


def _query_names(query: str) -> list[str]:
    """The decoded names of the parameters of a raw query string, in order."""
    return [unquote_plus(pair.partition("=")[0]) for pair in query.split("&") if pair]


def _with_query_param(url: str, name: str, value: str) -> str:
    """``url`` with ``name=value`` appended to its query, the URI's own parameters kept as given."""
    parts = urlsplit(url)
    pair = f"{quote(name, safe='')}={quote(value, safe='')}"
    query = f"{parts.query}&{pair}" if parts.query else pair
    return urlunsplit(parts._replace(query=query))


def mask_url(url: str, secrets: Iterable[str] = (), *, params: Iterable[str] = ()) -> str:
    """``url`` with secrets replaced by ``***``.

    Masks the values of the query parameters named in ``params`` or in
    :data:`SECRET_QUERY_PARAMS` (case-insensitively), the password of
    ``user:password@`` (or the whole user part when it has no password: some
    services take the token as the user name), and then every occurrence of
    each string in ``secrets``, as given or in any encoding (see
    :mod:`forwarder.secrets`), anywhere in what is left (a token in the path).
    """
    masked_names = SECRET_QUERY_PARAMS | {name.lower() for name in params}
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        raw_name, equals, _ = pair.partition("=")
        if equals and unquote_plus(raw_name).lower() in masked_names:
            pair = f"{raw_name}={MASK}"
        pairs.append(pair)
    masked = urlunsplit(parts._replace(netloc=netloc, query="&".join(pairs)))
    return SecretMasker(secrets).mask(masked)


def _decoded(value: str) -> list[str]:
    """A URI component decoded both ways a server may read it (``+`` as itself or a space)."""
    return list(dict.fromkeys([unquote(value), unquote_plus(value)]))


def forwarder_secrets(spec: WebhookForwarderConfig) -> list[str]:
    """Every secret value ``spec``'s requests carry, as configured (not encoded), for masking."""
    token = _token(spec)
    values = [token or ""]
    if token is not None and spec.auth.type == "basic":
        values.append(token.partition(":")[2])
    if spec.signing_secret is not None:
        values += split_secrets(spec.signing_secret.get_secret_value())
    values += _access_secrets(spec)
    parts = urlsplit(spec.uri)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        # As in mask_url: the password, or the whole user part when there is none.
        user, colon, password = userinfo.partition(":")
        values += _decoded(password if colon else user)
    names = set(SECRET_QUERY_PARAMS)
    if spec.auth.type == "query":
        names.add(spec.auth.param.lower())
    for pair in parts.query.split("&") if parts.query else []:
        raw_name, equals, raw_value = pair.partition("=")
        if equals and unquote_plus(raw_name).lower() in names:
            values += _decoded(raw_value)
    for name, value in spec.headers.items():
        if name.lower() in SECRET_HEADERS:
            values += [value, value.partition(" ")[2]]
    return [value for value in dict.fromkeys(values) if value]


def _userinfo_secret(url: str | None) -> list[str]:
    """The password of ``url``'s ``user:password@`` (decoded both ways), if it has one."""
    userinfo, at, _ = urlsplit(url or "").netloc.rpartition("@")
    _, colon, password = userinfo.partition(":")
    return _decoded(password) if at and colon else []


def _access_secrets(spec: WebhookForwarderConfig) -> list[str]:
    """The OAuth2 client secret and the proxy passwords ``spec``'s requests may carry."""
    values: list[str] = []
    auth = spec.auth
    if auth.client_secret is not None:
        secret = auth.client_secret.get_secret_value()
        values.append(secret)
        if auth.client_auth == "basic" and auth.client_id is not None:
            # Masked as a whole, so its base64 form (the Basic header) is found too.
            values.append(f"{quote_plus(auth.client_id, safe='')}:{quote_plus(secret, safe='')}")
    proxy = spec.proxy
    if proxy is not None and proxy.password is not None:
        values.append(proxy.password.get_secret_value())
        values.append(f"{proxy.username}:{proxy.password.get_secret_value()}")
    if proxy is None:
        urls = [spec.uri, auth.token_url] if auth.type == "oauth2" else [spec.uri]
        for url in urls:
            values += _userinfo_secret(env_proxy(url) if url else None)
    return values


def request_target(spec: WebhookForwarderConfig) -> RequestTarget:
    """The URL and auth headers of ``spec``'s requests, per its ``auth`` section."""
    auth = spec.auth
    token = _token(spec)
    url = spec.uri
    headers: dict[str, str] = {}
    if token is not None:
        if auth.type == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif auth.type == "header":
            headers[auth.header] = f"{auth.scheme} {token}" if auth.scheme else token
        elif auth.type == "basic":
            encoded = base64.b64encode(token.encode("utf-8")).decode("ascii")
            headers["Authorization"] = f"Basic {encoded}"
        elif auth.type == "query":
            url = _with_query_param(url, auth.param, token)
    secret_params = [auth.param] if auth.type == "query" else []
    display_url = mask_url(url, [token] if token else [], params=secret_params)
    return RequestTarget(url, headers, display_url)


def _header_safe(token: str) -> bool:
    return token.isascii() and token.isprintable()


def check_token(spec: WebhookForwarderConfig) -> str | None:
    """A problem with how ``spec``'s token would go out, or None if it can work.

    Rules: ``bearer`` may have no token (no header is sent, as Chainloop does);
    ``header``, ``basic`` and ``query`` need one — ``query`` is also satisfied
    by the parameter already in the URI (Logz.io), but not by both at once;
    ``basic`` needs ``user:password`` with a non-empty user; ``none`` must not
    have one (it would silently not be sent). A token sent in a header must be
    printable ASCII, since a control character would split or break the header.
    Credentials in the URI (``user:password@``) and an ``Authorization`` header
    conflict: aiohttp refuses to send such a request at all.
    """
    token = _token(spec)
    if token == "":
        return "the token is empty"
    problem = _presence_problem(spec, token is not None or spec.token_file is not None)
    if problem is not None or token is None or spec.auth.type in ("none", "query"):
        return problem  # bearer without a token is Chainloop's default; a tokenFile is unread
    return _header_problem(spec, token)


def _presence_problem(spec: WebhookForwarderConfig, has_token: bool) -> str | None:
    """Whether ``spec`` has a token when it needs one, and none when it must not."""
    auth = spec.auth
    if auth.type == "none" and has_token:
        return "auth.type none sends no credentials: remove the token or pick another type"
    if auth.type == "oauth2" and has_token:
        return "auth.type oauth2 fetches its token from auth.tokenUrl: remove token and tokenFile"
    if auth.type == "oauth2" and "@" in urlsplit(spec.uri).netloc:
        return "the uri has credentials (user@) and oauth2 sends an Authorization header: use one"
    if auth.type == "query":
        in_uri = auth.param in _query_names(urlsplit(spec.uri).query)
        if in_uri and has_token:
            return f"the uri already has ?{auth.param}=; set the token there or in token, not both"
        if not in_uri and not has_token:
            return f"auth.type query needs a token (or ?{auth.param}= in the uri)"
    if auth.type in ("header", "basic") and not has_token:
        return f"auth.type {auth.type} needs a token"
    return None


def _header_problem(spec: WebhookForwarderConfig, token: str) -> str | None:
    """Whether ``token`` can go out in the header ``spec`` puts it in."""
    auth = spec.auth
    if auth.type == "basic":
        user, colon, _ = token.partition(":")
        if not colon or not user:
            return 'auth.type basic needs the token as "user:password"'
    elif not _header_safe(token):
        return "the token must be printable ASCII: it is sent in a header"
    if auth.type == "header" and auth.scheme is not None and not _header_safe(auth.scheme):
        return "auth.scheme must be printable ASCII: it is sent in a header"
    sends_authorization = auth.type != "header" or auth.header.lower() == "authorization"
    if sends_authorization and "@" in urlsplit(spec.uri).netloc:
        return "the uri has credentials (user@) and auth sends an Authorization header: use one"
    return None
