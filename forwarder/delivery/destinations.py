"""The destination adapter of each forwarder kind, built from its options.

Kept out of :mod:`forwarder.destinations.kinds` (which the configuration
imports) because an adapter brings its client library's module with it
(aiohttp for webhooks), and loading or checking a configuration must not.
"""

from __future__ import annotations

from typing import Any

from forwarder.destinations.adapter import Destination
from forwarder.destinations.kinds import AnyForwarderConfig
from forwarder.destinations.nats.destination import NatsDestination
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.webhook.destination import WebhookDestination


def build_destination(spec: AnyForwarderConfig) -> Destination[Any]:
    """The adapter that delivers ``spec``'s batches. No I/O."""
    if isinstance(spec, NatsForwarderConfig):
        return NatsDestination(spec)
    return WebhookDestination(spec)
