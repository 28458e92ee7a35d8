"""The webhook destination: the webhook modules behind the destination Protocol.

A thin wrapper, on purpose: building a request (format, auth, signature,
gzip) stays in :mod:`.requests`, sending and classifying the answer in
:mod:`.sending`, the connector (TLS, private-network guard) in
:mod:`.transport`. This module only owns the forwarder's HTTP session and
says how the test button shows a request (secret headers masked), so that
the delivery loop can treat a webhook like any other destination
(:mod:`forwarder.destinations.adapter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.auth import SECRET_HEADERS
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.requests import BuiltRequest, RequestBuilder
from forwarder.destinations.webhook.sending import OutgoingRequest, Response, send_request
from forwarder.destinations.webhook.transport import build_connector
from forwarder.errors import RetryableDeliveryError


def mask_headers(headers: Mapping[str, str], token_header: str = "") -> dict[str, str]:
    """Headers with secret values replaced: ``Bearer ***``, ``***``.

    ``token_header`` is the header the forwarder's auth puts its token in
    (any name with ``auth.type: header``), masked along the well-known ones.
    """
    secret_names = SECRET_HEADERS | {token_header.lower()}
    masked = {}
    for name, value in headers.items():
        if name.lower() in secret_names:
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} ***" if secret else "***"
        masked[name] = value
    return masked


def describe_request(
    request: OutgoingRequest, display_url: str, token_header: str = ""
) -> dict[str, Any]:
    """The request as the admin API shows it, secrets masked (query token included)."""
    return {
        "method": request.method,
        "url": display_url,
        "headers": mask_headers(request.headers, token_header),
        "body": request.body.decode("utf-8", "replace"),
    }


class WebhookDestination:
    """Delivers batches as HTTP requests to one receiver. Constructing it does no I/O."""

    kind = "webhook"

    def __init__(self, spec: WebhookForwarderConfig) -> None:
        self.spec = spec
        self.requests = RequestBuilder(spec)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The HTTP session (None before ``open`` and after ``close``)."""
        return self._session

    async def open(self) -> None:
        """Open the HTTP session (connections are made when requests are sent)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=build_connector(self.spec))

    async def close(self) -> None:
        """Close the HTTP session; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def build(self, events: Sequence[StoredEvent], now: float) -> BuiltRequest:
        """The request carrying ``events``, signed at ``now``."""
        return self.requests.build(events, now)

    async def send(self, payload: BuiltRequest) -> Response:
        """Send the request once; the delivered answer or a DeliveryError."""
        if self._session is None:
            raise RetryableDeliveryError("stopping", "the forwarder is stopping")
        return await send_request(
            self._session,
            payload.request,
            self.spec.timeout_seconds,
            self.spec.response_validators,
            self.spec.status_policy,
        )

    def describe(self, payload: BuiltRequest) -> dict[str, Any]:
        """The request as the test button shows it (the URL's token and secret headers masked)."""
        return describe_request(payload.request, self.requests.display_url, self.spec.auth.header)
