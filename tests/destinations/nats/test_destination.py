"""The NATS destination against a real JetStream server: dedupe, refusals, no responders, NKeys."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from forwarder.buffer.store import StoredEvent
from forwarder.destinations.nats import nkeys
from forwarder.destinations.nats.destination import NatsDestination
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.errors import RejectedContentError, RetryableDeliveryError
from tests.nats_support import (
    NatsServer,
    create_stream,
    needs_nats_server,
    start_server,
    stream_messages,
)

pytestmark = needs_nats_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A JetStream server with stream AUDIT on audit.> (max message 1 KiB)."""
    started = await start_server(tmp_path)
    try:
        await create_stream(started.url, max_msg_size=1024)
        yield started
    finally:
        started.stop()


def event(n: int, event_type: str | None = "user.login", size: int = 0) -> StoredEvent:
    """A stored event with id ``evt-<n>``."""
    body = orjson.dumps({"n": n, "pad": "x" * size})
    return StoredEvent(n, f"evt-{n}", event_type, time.time(), None, body)


def destination(url: str, **options: Any) -> NatsDestination:
    """A NATS destination on ``url`` with a short timeout."""
    spec = NatsForwarderConfig(kind="nats", name="bus", servers=[url], timeout_seconds=2, **options)
    return NatsDestination(spec)


async def test_a_batch_sent_twice_is_stored_once(server: NatsServer) -> None:
    """The second publish of the same events is acknowledged as duplicates, not stored."""
    bus = destination(server.url, stream="AUDIT")
    try:
        batch = bus.build([event(1), event(2), event(3, None)], 0.0)
        first = orjson.loads((await bus.send(batch)).body)
        again = orjson.loads((await bus.send(batch)).body)
    finally:
        await bus.close()
    assert (first["duplicates"], again["duplicates"]) == (0, 3)
    messages = await stream_messages([server.url])
    assert [(m.msg_id, m.subject) for m in messages] == [
        ("evt-1", "audit.user.login"),
        ("evt-2", "audit.user.login"),
        ("evt-3", "audit.unknown"),
    ]


async def test_an_oversized_event_refuses_the_batch_with_the_servers_error(
    server: NatsServer,
) -> None:
    """One message over max_msg_size: RejectedContentError js_10054; the others are stored."""
    bus = destination(server.url)
    try:
        with pytest.raises(RejectedContentError) as refused:
            await bus.send(bus.build([event(1), event(2, size=2000), event(3)], 0.0))
    finally:
        await bus.close()
    assert refused.value.code == "js_10054"
    assert "message size exceeds maximum allowed" in refused.value.message
    assert "(1 of 3 events)" in refused.value.message
    assert [m.msg_id for m in await stream_messages([server.url])] == ["evt-1", "evt-3"]


async def test_no_responders_is_a_refusal_only_when_no_stream_takes_the_subject(
    server: NatsServer,
) -> None:
    """A subject outside every stream is refused (no_stream); a down server is retried."""
    bus = destination(server.url, subject="elsewhere.{event_type}")
    try:
        with pytest.raises(RejectedContentError) as refused:
            await bus.send(bus.build([event(1)], 0.0))
    finally:
        await bus.close()
    assert refused.value.code == "no_stream"
    server.stop()
    down = destination(server.url)
    with pytest.raises(RetryableDeliveryError) as retried:
        await down.send(down.build([event(1)], 0.0))
    assert retried.value.code == "connection_error"


async def test_an_nkey_seed_file_authenticates(tmp_path: Path) -> None:
    """A user NKey seed (decoded without the nkeys package) logs in to a server that requires it."""
    private_key = Ed25519PrivateKey.generate()
    seed = nkeys.seed_for(private_key)
    public = nkeys.from_seed(seed).public_key
    assert public.startswith("U")
    assert len(public) == 56
    (tmp_path / "user.nk").write_text(seed + "\n")
    config = f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n"
    server = await start_server(tmp_path, config_text=config)
    try:
        bus = destination(server.url, nkey_seed_file=tmp_path / "user.nk")
        with pytest.raises(RejectedContentError) as refused:  # logged in: JetStream answers
            await bus.send(bus.build([event(1)], 0.0))
        assert refused.value.code == "no_stream"
        await bus.close()
        wrong = tmp_path / "other.nk"
        wrong.write_text(nkeys.seed_for(Ed25519PrivateKey.generate()))
        stranger = destination(server.url, nkey_seed_file=wrong)
        with pytest.raises(RetryableDeliveryError) as denied:
            await stranger.send(stranger.build([event(1)], 0.0))
        assert denied.value.code == "auth_error"
    finally:
        server.stop()
