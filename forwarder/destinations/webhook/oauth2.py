"""OAuth2 client credentials: fetch an access token, cache it, refresh it before it expires.

``auth.type: oauth2`` is how Microsoft's Logs Ingestion API (Sentinel), and
many SIEM and SaaS APIs behind an identity provider, take credentials: the
forwarder trades ``clientId`` and the client secret at ``tokenUrl`` (RFC 6749
section 4.4) for a short-lived access token and sends it as
``Authorization: Bearer <token>``.

Design decisions:

* One :class:`TokenProvider` per forwarder, owned by its request builder and
  asked by :func:`~forwarder.destinations.webhook.sending.send_request` just
  before each request: the delivery loop stays the same for every auth type.
* The token is cached and refreshed once 80 % of its ``expires_in`` has
  passed (48 minutes into Entra ID's usual hour), so a request never leaves
  with a token about to expire in flight. A server that gives no
  ``expires_in`` gets :data:`DEFAULT_LIFETIME`; a 401 from the receiver
  refreshes early in any case. If a refresh fails while the cached token is
  still valid, the cached token is used (and the refresh retried
  :data:`RETRY_REFRESH_SECONDS` later): an identity provider's hiccup does not
  stop deliveries that could still succeed.
* Concurrent requests share one fetch (a lock, and the cache checked again
  under it); :meth:`TokenProvider.invalidate` only drops the token it is
  given, so many requests answered 401 at once cause one refresh, not many.
  A failed fetch is remembered for :data:`FAILURE_MEMO_SECONDS`, so requests
  waiting on the lock do not each ask a refusing endpoint again.
* Failing to get a token is a :class:`RetryableDeliveryError`: the events
  wait, with the forwarder's backoff, until the endpoint or the credentials
  are fixed (a live reload of ``clientSecretFile`` applies at once). A 400 or
  401 from the token endpoint is ``token_rejected`` and says what the
  endpoint said (its ``error`` and ``error_description``, e.g. Entra ID's
  ``AADSTS7000215: Invalid client secret``); anything else is
  ``token_error``. Neither is the receiver's status.
* Secrets: the client secret is a configured secret (masked everywhere); each
  access token is handed to the process's masker
  (:meth:`~forwarder.secrets.SecretMasker.learn`) *before* it is first sent,
  so a receiver echoing it back is masked in logs, history and dead letters.
  Neither is ever logged, and the token endpoint's successful answer (which
  holds the token) is never kept.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from urllib.parse import quote_plus, urlsplit

import aiohttp
import orjson

from forwarder.destinations.webhook.access import AuthConfig
from forwarder.destinations.webhook.sending import USER_AGENT, read_prefix
from forwarder.destinations.webhook.transport import DestinationGuard
from forwarder.errors import RetryableDeliveryError
from forwarder.logs import get_logger
from forwarder.secrets import masker

log = get_logger("oauth2")

REFRESH_AT = 0.8  # of the token's lifetime
DEFAULT_LIFETIME = 300.0  # seconds, when the endpoint gives no expires_in
RETRY_REFRESH_SECONDS = 10.0
FAILURE_MEMO_SECONDS = 1.0
TOKEN_BODY_LIMIT = 64 * 1024
DESCRIPTION_LIMIT = 300


def _lifetime(value: object) -> float:
    """``expires_in`` as seconds (a number, or a numeric string as some servers send)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return DEFAULT_LIFETIME
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return max(1.0, float(value))
    return DEFAULT_LIFETIME


def _endpoint_said(body: bytes) -> str:
    """The ``error`` and ``error_description`` of an OAuth2 error answer, short and masked."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        said = document["error"]
        description = document.get("error_description")
        if isinstance(description, str) and description:
            said += f": {description.splitlines()[0][:DESCRIPTION_LIMIT]}"
    else:
        said = body.decode("utf-8", "replace").strip()[:DESCRIPTION_LIMIT]
    return masker.mask(said)


class TokenProvider:
    """The access token of one forwarder: cached, refreshed, fetched once for all waiters.

    ``proxy`` and ``guard`` are the token endpoint's route (they may differ
    from the receiver's: ``noProxy`` may name one and not the other).
    ``clock`` is monotonic seconds; tests inject one to pass expiry.
    """

    def __init__(
        self,
        forwarder: str,
        auth: AuthConfig,
        timeout_seconds: float,
        *,
        proxy: str | None = None,
        guard: DestinationGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if auth.token_url is None or auth.client_id is None:
            raise ValueError("auth.type oauth2 needs tokenUrl and clientId")  # the model checks
        self._forwarder = forwarder
        self._url = auth.token_url
        self._endpoint = urlsplit(auth.token_url).netloc.rpartition("@")[2]
        self._timeout = timeout_seconds
        self._proxy = proxy
        self._guard = guard
        self._clock = clock
        secret = auth.client_secret.get_secret_value() if auth.client_secret else ""
        self._form = {"grant_type": "client_credentials", **auth.extra_params}
        if auth.scopes:
            self._form["scope"] = " ".join(auth.scopes)
        if auth.audience is not None:
            self._form["audience"] = auth.audience
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if auth.client_auth == "basic":
            # RFC 6749 section 2.3.1: both form-encoded before Basic encoding.
            pair = f"{quote_plus(auth.client_id, safe='')}:{quote_plus(secret, safe='')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            self._form.update(client_id=auth.client_id, client_secret=secret)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._failure: tuple[float, RetryableDeliveryError] | None = None

    def _cached(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        """``Bearer <token>``: the cached token, or a new one; RetryableDeliveryError if none."""
        token = self._cached()
        if token is None:
            async with self._lock:
                token = self._cached() or await self._renew(session)
        return f"Bearer {token}"

    def invalidate(self, authorization: str) -> None:
        """Drop the token in ``authorization`` if it is still the cached one."""
        if self._token is not None and authorization == f"Bearer {self._token}":
            self._token = None

    async def _renew(self, session: aiohttp.ClientSession) -> str:
        """A new token; the still-valid cached one if the endpoint fails now."""
        now = self._clock()
        if self._failure is not None and now - self._failure[0] < FAILURE_MEMO_SECONDS:
            raise self._failure[1]
        try:
            token, lifetime = await self._fetch(session)
        except RetryableDeliveryError as exc:
            self._failure = (self._clock(), exc)
            if self._token is not None and self._clock() < self._expires_at:
                log.warning(
                    "oauth2_refresh_failed",
                    forwarder=self._forwarder,
                    status=exc.code,
                    error=exc.message,
                    using="the cached token until it expires",
                )
                self._refresh_at = self._clock() + RETRY_REFRESH_SECONDS
                return self._token
            raise
        self._failure = None
        # Before it is sent anywhere: a receiver echoing it must find it masked.
        masker.learn(f"oauth2:{self._forwarder}", token)
        self._token = token
        self._refresh_at = now + lifetime * REFRESH_AT
        self._expires_at = now + lifetime
        log.info(
            "oauth2_token_fetched",
            forwarder=self._forwarder,
            token_endpoint=self._endpoint,
            expires_in=round(lifetime),
        )
        return token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        """Ask the token endpoint; the access token and its lifetime in seconds."""
        try:
            if self._guard is not None:
                await self._guard.check(self._url)
            async with session.post(
                self._url,
                data=self._form,
                headers=self._headers,
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as answer:
                status = answer.status
                body = await read_prefix(answer.content, TOKEN_BODY_LIMIT)
        except TimeoutError:
            message = f"the token endpoint {self._endpoint} gave no answer in {self._timeout:g} s"
            raise RetryableDeliveryError("token_error", message) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = masker.mask(f"{type(exc).__name__}: {exc}")
            message = f"cannot reach the token endpoint {self._endpoint}: {reason}"
            raise RetryableDeliveryError("token_error", message) from None
        if status in (400, 401):
            message = (
                f"the token endpoint {self._endpoint} refused the client credentials"
                f" (HTTP {status}): {_endpoint_said(body)}"
            )
            raise RetryableDeliveryError("token_rejected", message)
        if not 200 <= status < 300:
            message = f"the token endpoint {self._endpoint} answered HTTP {status}"
            raise RetryableDeliveryError("token_error", f"{message}: {_endpoint_said(body)}")
        return self._token_from(body)

    def _token_from(self, body: bytes) -> tuple[str, float]:
        """The access token and lifetime of a 2xx answer; RetryableDeliveryError if unusable.

        The messages never quote the body: it may hold a token.
        """
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        token = document.get("access_token") if isinstance(document, dict) else None
        problem = None
        if not isinstance(document, dict):
            problem = "is not a JSON object"
        elif not isinstance(token, str) or not token:
            problem = "has no access_token"
        elif not (token.isascii() and token.isprintable() and " " not in token):
            problem = "has an access_token that cannot be sent in a header"
        elif str(document.get("token_type", "bearer")).lower() != "bearer":
            problem = "gives a token_type other than Bearer"
        if problem is not None or not isinstance(token, str) or not isinstance(document, dict):
            message = f"the answer of the token endpoint {self._endpoint} {problem}"
            raise RetryableDeliveryError("token_error", message)
        return token, _lifetime(document.get("expires_in"))
