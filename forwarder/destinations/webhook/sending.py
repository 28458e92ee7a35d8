"""Sending one request and classifying the answer: the only module that knows aiohttp's errors.

``send_request`` turns connection errors, timeouts and HTTP statuses into our
own errors, so the delivery worker and the admin test button handle one error
tree, not aiohttp's. The forwarder's ``statusPolicy`` is asked first: a status
it names is delivered (``success``, even a 4xx), retried (``retry``, with
``Retry-After`` honoured) or dead-lettered as is (``deadLetter``). Otherwise:

* 2xx is delivered, unless it fails the response validators
  (:class:`RetryableDeliveryError` ``invalid_response``);
* connection errors, timeouts, 408, 429 and 5xx → :class:`RetryableDeliveryError`;
* 400, 409, 413 and 422 → :class:`RejectedContentError`: the receiver refused
  what the body carries (malformed, conflicting, too large or invalid), and
  that may be one event of the batch, so the worker bisects the batch until
  the refused events are alone;
* any other status → :class:`PermanentDeliveryError`, for the whole request.
  401, 403, 404, 405, 407, 410, 415, 3xx ... say that the request itself is
  wrong (credentials, URL, method, media type), which no subset of the events
  can fix: splitting would only multiply requests against a misconfigured
  receiver.

A ``deadLetter`` status never splits: the operator said that code means give
up, and a policy that names 400 is also how to turn bisection off.

Two things happen around the exchange when the request asks for them, so
that every caller (the delivery worker, the test button) gets them without
knowing about them:

* ``credentials`` (OAuth2, :mod:`forwarder.destinations.webhook.oauth2`):
  the ``Authorization`` header is asked for just before sending, so a
  cached token is used until it is due for refresh. A 401 answer means the
  token may have been revoked or expired early: the token is invalidated,
  a new one fetched, and the request sent once more at once; only the
  second answer is classified (a second 401 is dead-lettered as usual).
  Failing to get a token is a :class:`RetryableDeliveryError`
  (``token_error``, ``token_rejected``): the events wait, with backoff.
* ``guard`` (``denyPrivateNetworks`` through a proxy): the receiver's host
  is checked before the request goes to the proxy; a refusal is a
  ``connection_error``, as the connector's own guard gives.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson

from forwarder import __version__
from forwarder.destinations.webhook.options import ResponseValidator, StatusPolicy
from forwarder.destinations.webhook.transport import DestinationGuard
from forwarder.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from forwarder.errors import (
    RejectedContentError as RejectedContentError,  # re-exported: its old home
)
from forwarder.secrets import masker

USER_AGENT = f"audit-forwarder/{__version__.split('.')[0]}.0"
RESPONSE_BODY_LIMIT = 4096
VALIDATED_BODY_LIMIT = 1024 * 1024  # validators need the whole JSON answer
RETRYABLE_STATUSES = frozenset({408, 429})
# Statuses that refuse the content, which may be one event of a batch: bisect.
SPLIT_STATUSES = frozenset({400, 409, 413, 422})
NO_POLICY = StatusPolicy()


@dataclass(frozen=True, slots=True)
class Response:
    """What a receiver answered to one successful request."""

    status: int
    headers: dict[str, str]
    body: bytes
    duration: float

    @property
    def code(self) -> str:
        """The status as the attempt metrics and the history label it."""
        return str(self.status)


class Credentials(Protocol):
    """Where a request's ``Authorization`` value comes from when it is not fixed (OAuth2)."""

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        """The header value to send now; RetryableDeliveryError if none can be had."""
        ...

    def invalidate(self, authorization: str) -> None:
        """The receiver refused ``authorization`` (401): do not hand it out again."""
        ...


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """A request ready to send (and to resend unchanged on retry)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    proxy: str | None = None
    """The proxy URL, Basic credentials included; None: connect directly."""
    credentials: Credentials | None = None
    """Supplies ``Authorization`` at send time (OAuth2); None: ``headers`` are complete."""
    guard: DestinationGuard | None = None
    """Checks the host before sending through ``proxy`` (``denyPrivateNetworks``)."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    # isdigit() alone accepts "²", which float() rejects (a ValueError would kill the worker).
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


async def read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body, however many chunks they arrive in."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def json_path_value(document: Any, path: str) -> tuple[bool, Any]:
    """Follow ``$.a.b[0].c``; return (found, value)."""
    value = document
    for key, index in _PATH_STEP.findall(path[1:]):
        if key:
            if not isinstance(value, dict) or key not in value:
                return False, None
            value = value[key]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                return False, None
            value = value[int(index)]
    return True, value


def validation_problem(body: bytes, validators: Sequence[ResponseValidator]) -> str | None:
    """Why a 2xx body fails the response validators, or None when it passes."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the response body is not JSON"
    for validator in validators:
        found, value = json_path_value(document, validator.json_path)
        if not found:
            return f"{validator.json_path} is missing from the response"
        if value not in validator.expected:
            shown = orjson.dumps(value).decode()[:100]
            return f"{validator.json_path} is {shown}, not one of the expected values"
    return None


class _Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    retry_after: str | None


async def _exchange(
    session: aiohttp.ClientSession,
    request: OutgoingRequest,
    headers: dict[str, str],
    timeout_seconds: float,
    limit: int,
) -> _Answer:
    """One HTTP exchange, aiohttp's errors translated; the body read up to ``limit``."""
    try:
        if request.guard is not None:
            await request.guard.check(request.url)
        async with session.request(
            request.method,
            request.url,
            data=request.body,
            headers=headers,
            proxy=request.proxy,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
        ) as answer:
            return _Answer(
                answer.status,
                {str(name): value for name, value in answer.headers.items()},
                await read_prefix(answer.content, limit),
                # Looked up case-insensitively: dict() keeps the case as received.
                answer.headers.get(aiohttp.hdrs.RETRY_AFTER),
            )
    except TimeoutError:
        raise RetryableDeliveryError("timeout", f"no answer within {timeout_seconds:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        # aiohttp's messages may quote the URL, query token included (ClientResponseError);
        # an OSError here is the destination guard's refusal, said as the connector says it.
        message = masker.mask(f"{type(exc).__name__}: {exc}")
        raise RetryableDeliveryError("connection_error", message) from None


async def send_request(
    session: aiohttp.ClientSession,
    request: OutgoingRequest,
    timeout_seconds: float,
    validators: Sequence[ResponseValidator] = (),
    policy: StatusPolicy = NO_POLICY,
) -> Response:
    """Send one request; return the delivered answer or raise a DeliveryError.

    This is the only place that knows about aiohttp's exceptions. With
    ``validators``, a 2xx whose JSON body does not match is a retryable
    ``invalid_response`` failure (Apono's response validators). ``policy``
    (the forwarder's ``statusPolicy``) overrides the classification of the
    statuses it names.
    """
    started = time.monotonic()
    limit = VALIDATED_BODY_LIMIT if validators else RESPONSE_BODY_LIMIT
    credentials = request.credentials
    if credentials is None:
        answer = await _exchange(session, request, request.headers, timeout_seconds, limit)
    else:
        authorization = await credentials.authorization(session)
        sent = {**request.headers, "Authorization": authorization}
        answer = await _exchange(session, request, sent, timeout_seconds, limit)
        if answer.status == 401:
            # Revoked or expired early: one new token and one more try, before any verdict.
            credentials.invalidate(authorization)
            sent["Authorization"] = await credentials.authorization(session)
            answer = await _exchange(session, request, sent, timeout_seconds, limit)
    duration = time.monotonic() - started
    status, headers, body, retry_after_value = answer
    verdict = policy.verdict(status)
    is_2xx = 200 <= status < 300
    if verdict == "success" or (verdict is None and is_2xx):
        # Validators judge a 2xx body; a 4xx the policy counts as success carries an error document.
        problem = validation_problem(body, validators) if validators and is_2xx else None
        if problem is not None:
            raise RetryableDeliveryError(
                "invalid_response", problem, status=status, body=body[:RESPONSE_BODY_LIMIT]
            )
        return Response(status, headers, body[:RESPONSE_BODY_LIMIT], duration)
    body = body[:RESPONSE_BODY_LIMIT]
    message = f"HTTP {status}" if verdict is None else f"HTTP {status} (statusPolicy)"
    if verdict == "retry" or (verdict is None and (status in RETRYABLE_STATUSES or status >= 500)):
        retry_after = parse_retry_after(retry_after_value, time.time())
        raise RetryableDeliveryError(
            str(status), message, status=status, body=body, retry_after=retry_after
        )
    if verdict is None and status in SPLIT_STATUSES:
        raise RejectedContentError(str(status), message, status=status, body=body)
    raise PermanentDeliveryError(str(status), message, status=status, body=body)
