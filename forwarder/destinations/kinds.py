"""Every destination kind in one place: the ``kind`` union of the configuration and its adapters.

A forwarder entry is a webhook unless it says ``kind: nats``: the union is
discriminated on ``kind`` with an absent (or unknown) kind read as webhook,
so a Chainloop-style file without ``kind`` is judged exactly as before
(``kind`` is required by the webhook model, and an unknown one is refused
there with the list of kinds). Adding a kind is one model and one adapter
registered here (and its adapter in ``forwarder.delivery.destinations``); the
delivery loop does not change. Only the options are imported here: loading a
configuration must not load an HTTP or NATS client.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Discriminator, Tag

from forwarder.destinations.nats.options import NatsForwarderConfig, as_kind
from forwarder.destinations.webhook.auth import forwarder_secrets
from forwarder.destinations.webhook.options import WebhookForwarderConfig

KINDS = ("webhook", "nats")

ForwarderConfig = Annotated[
    Annotated[WebhookForwarderConfig, Tag("webhook")] | Annotated[NatsForwarderConfig, Tag("nats")],
    Discriminator(as_kind),
]
"""One entry of ``auditLogForwarders``, whatever its kind."""

AnyForwarderConfig = WebhookForwarderConfig | NatsForwarderConfig


def secrets_of(spec: AnyForwarderConfig) -> list[str]:
    """Every secret value ``spec`` holds, raw, for the masker."""
    if isinstance(spec, NatsForwarderConfig):
        return spec.secrets()
    return forwarder_secrets(spec)
