"""Building the HTTP request for a batch: body format, auth, custom headers, signature, gzip.

Everything that does not depend on the batch (the encoder, the target URL
with its auth, the static headers, the signer) is prepared once per
forwarder; building a request is then one encode, an optional HMAC and an
optional gzip. A request is rebuilt on every attempt so the Standard Webhooks
timestamp is fresh (receivers reject old ones), while ``webhook-id`` — derived
from the event ids — stays the same across retries for de-duplication.

The signature covers the uncompressed body: receivers verify what their
application reads after HTTP decoding, which is what the Standard Webhooks
libraries are handed.

The route is prepared here too: the proxy each URL goes through, and, when
``denyPrivateNetworks`` is on and a URL is proxied, the
:class:`DestinationGuard` that checks its host before sending. With
``auth.type: oauth2`` the builder owns the forwarder's
:class:`TokenProvider`, attached to every request, and the ``Authorization``
header is added at send time (a token is fetched asynchronously and
refreshed; a built request is only the part that never changes).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.webhook.auth import request_target
from forwarder.destinations.webhook.formats import build_encoder
from forwarder.destinations.webhook.oauth2 import TokenProvider
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.proxies import proxy_url
from forwarder.destinations.webhook.sending import USER_AGENT, OutgoingRequest
from forwarder.destinations.webhook.signing import Signer, message_id
from forwarder.destinations.webhook.transport import DestinationGuard
from forwarder.integrity.envelope import chain_headers

GZIP_LEVEL = 5  # most of level 9's ratio on JSON at a fraction of the CPU


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """A request and the size of its encoded (uncompressed) body, for batch limits."""

    request: OutgoingRequest
    encoded_bytes: int


class RequestBuilder:
    """Turns batches of stored events into requests for one forwarder."""

    def __init__(self, spec: WebhookForwarderConfig) -> None:
        self._spec = spec
        self._encoder = build_encoder(spec)
        target = request_target(spec)
        self.url = target.url
        self.display_url = target.display_url
        self._proxy = proxy_url(spec, spec.uri)
        guard = DestinationGuard() if spec.deny_private_networks else None
        self._guard = guard if self._proxy is not None else None
        self.credentials: TokenProvider | None = None
        if spec.auth.type == "oauth2" and spec.auth.token_url is not None:
            token_proxy = proxy_url(spec, spec.auth.token_url)
            self.credentials = TokenProvider(
                str(spec.name),
                spec.auth,
                spec.timeout_seconds,
                proxy=token_proxy,
                guard=guard if token_proxy is not None else None,
            )
        self._headers = {"User-Agent": USER_AGENT, **spec.headers, **target.headers}
        secret = spec.signing_secret
        self._signer = Signer(secret.get_secret_value()) if secret is not None else None
        self._gzip = spec.compression == "gzip"

    def build(self, events: Sequence[StoredEvent], now: float) -> BuiltRequest:
        """The request carrying ``events``, signed at ``now`` (Unix time)."""
        encoded = self._encoder.encode(events)
        headers = dict(self._headers)
        headers["Content-Type"] = encoded.content_type
        if events and events[0].chain is not None:  # integrity: every event has its record
            headers.update(chain_headers([e.chain for e in events if e.chain is not None]))
        if self._signer is not None:
            ids = [event.event_id for event in events]
            headers.update(self._signer.headers(message_id(ids), int(now), encoded.body))
        body = encoded.body
        if self._gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        request = OutgoingRequest(
            self._spec.method, self.url, headers, body, self._proxy, self.credentials, self._guard
        )
        return BuiltRequest(request, len(encoded.body))
