"""Signing-secret rotation: one ``v1,`` signature per secret, verified by Standard Webhooks.

The receiver side is the reference ``standardwebhooks`` library, and the
requests are real ones, sent to a loopback receiver by the request builder.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from forwarder.buffer.store import StoredEvent
from forwarder.config.loading import load_config
from forwarder.config.reload import dependent_files
from forwarder.destinations.webhook.auth import forwarder_secrets
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.requests import RequestBuilder
from forwarder.destinations.webhook.sending import send_request
from forwarder.errors import ConfigError
from tests.support import Received, ScriptedReceiver

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()


def spec(uri: str, **options: Any) -> WebhookForwarderConfig:
    """A forwarder entry as the YAML would give it."""
    return WebhookForwarderConfig.model_validate({"kind": "webhook", "uri": uri, **options})


async def deliver(forwarder: WebhookForwarderConfig, receiver: ScriptedReceiver) -> Received:
    """Send one event through the request builder; what the receiver got."""
    body = b'{"id": "evt-1", "event_type": "user.login"}'
    stored = StoredEvent(1, "evt-1", "user.login", time.time(), None, body)
    request = RequestBuilder(forwarder).build([stored], time.time()).request
    async with aiohttp.ClientSession() as session:
        await send_request(session, request, 5)
    return receiver.delivered[-1]


def verifies(secret: str, received: Received) -> bool:
    """Whether the Standard Webhooks library, holding ``secret``, accepts the request."""
    try:
        Webhook(secret).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_either_secret_verifies_during_rotation(receiver: ScriptedReceiver) -> None:
    """With two secrets, the request carries two v1 signatures and each secret verifies it."""
    received = await deliver(spec(receiver.url, signingSecret=[OLD, NEW]), receiver)
    signatures = received.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(signature.startswith("v1,") for signature in signatures)
    assert verifies(OLD, received)
    assert verifies(NEW, received)
    assert not verifies(OTHER, received)


async def test_one_secret_still_sends_one_signature(receiver: ScriptedReceiver) -> None:
    """A single secret (string or one-item list) gives exactly one signature, as before."""
    for secret in (NEW, [NEW]):
        received = await deliver(spec(receiver.url, signingSecret=secret), receiver)
        assert " " not in received.headers["webhook-signature"]
        assert verifies(NEW, received)


async def test_signing_secret_file_holds_one_secret_per_line(
    receiver: ScriptedReceiver, tmp_path: Path
) -> None:
    """A signingSecretFile with two lines signs with both (a Secret updated in place rotates)."""
    (tmp_path / "signing").write_text(f"{OLD}\n{NEW}\n")
    path = tmp_path / "config.yaml"
    forwarder = {"kind": "webhook", "uri": receiver.url, "signingSecretFile": "signing"}
    path.write_text(yaml.safe_dump({"ingest": {"port": 0}, "auditLogForwarders": [forwarder]}))
    settings = load_config(path)
    received = await deliver(settings.audit_log_forwarders[0], receiver)
    assert verifies(OLD, received)
    assert verifies(NEW, received)
    assert {OLD, NEW} <= set(settings.secrets())
    assert tmp_path / "signing" in dependent_files(path, settings)


def test_each_secret_of_a_rotation_is_masked() -> None:
    """Every secret of the list is a secret of its own for the masker."""
    secrets = forwarder_secrets(spec("https://example.com/", signingSecret=[OLD, NEW]))
    assert OLD in secrets
    assert NEW in secrets


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ([], "signingSecret: the list is empty"),
        ([OLD, "short"], "signingSecret: secret 2 of 2: the signing secret is 5 bytes"),
        ([OLD, 42], "each secret in the list must be a string"),
    ],
)
def test_check_config_explains_bad_secret_lists(
    tmp_path: Path, secret: list[Any], message: str
) -> None:
    """An empty list, a weak secret in the list, or a non-string is refused with its reason."""
    path = tmp_path / "config.yaml"
    forwarder = {"kind": "webhook", "uri": "https://example.com/", "signingSecret": secret}
    path.write_text(yaml.safe_dump({"ingest": {"port": 0}, "auditLogForwarders": [forwarder]}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert any(message in str(problem) for problem in raised.value.problems), raised.value.problems
