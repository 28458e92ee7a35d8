"""Standard Webhooks signatures, checked with the specification's own Python library."""

from __future__ import annotations

import base64
import time

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from forwarder.destinations.webhook.signing import Signer, check_secret, message_id
from tests.support import ScriptedReceiver

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"id":"evt-1","type":"user.login","data":{"user":"ana"}}'


def test_whsec_signature_verifies_with_standardwebhooks() -> None:
    """A whsec_ secret's headers pass the reference library's verification."""
    headers = Signer(SECRET).headers("evt-1", int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(BODY, headers) == {
        "id": "evt-1",
        "type": "user.login",
        "data": {"user": "ana"},
    }


def test_raw_secret_is_used_as_utf8_bytes() -> None:
    """A secret without whsec_ is the key as UTF-8 bytes: it verifies when passed as bytes."""
    secret = "a-long-enough-raw-secret-ünïcode"
    headers = Signer(secret).headers("evt-1", int(time.time()), BODY)
    Webhook(secret.encode()).verify(BODY, headers)


def test_known_answer_from_the_specification_examples() -> None:
    """The signature matches the published example vector (Svix / Standard Webhooks docs)."""
    signer = Signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = signer.signature(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_unpadded_whsec_secret_decodes_like_the_reference() -> None:
    """An unpadded base64 secret gives the same key the reference library derives."""
    unpadded = "whsec_" + base64.b64encode(b"0123456789abcdefX").decode().rstrip("=")
    headers = Signer(unpadded).headers("evt-1", int(time.time()), BODY)
    Webhook(unpadded).verify(BODY, headers)


@pytest.mark.parametrize(
    ("field", "tampered"),
    [
        ("body", BODY.replace(b"ana", b"eve")),
        ("webhook-timestamp", None),
        ("webhook-id", "evt-2"),
    ],
)
def test_tampering_fails_verification(field: str, tampered: bytes | str | None) -> None:
    """Changing the body, the timestamp or the id by even a little fails verification."""
    now = int(time.time())
    headers = Signer(SECRET).headers("evt-1", now, BODY)
    body = BODY
    if field == "body":
        assert isinstance(tampered, bytes)
        body = tampered
    elif field == "webhook-timestamp":
        headers[field] = str(now - 1)  # still within the tolerance: only the HMAC can catch it
    else:
        assert isinstance(tampered, str)
        headers[field] = tampered
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(body, headers)


def test_wrong_secret_fails_verification() -> None:
    """A receiver with another secret rejects the signature."""
    headers = Signer(SECRET).headers("evt-1", int(time.time()), BODY)
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


async def test_signed_request_verifies_at_a_real_receiver(receiver: ScriptedReceiver) -> None:
    """The headers and body survive an HTTP round trip and verify on the receiving side."""
    ids = ["evt-1", "evt-2"]
    body = b"[" + BODY + b"," + BODY.replace(b"evt-1", b"evt-2") + b"]"
    headers = Signer(SECRET).headers(message_id(ids), int(time.time()), body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(receiver.url, data=body, headers=headers) as response,
    ):
        assert response.status == 200
    received = receiver.attempts[0]
    assert received.headers["webhook-id"] == message_id(ids)
    Webhook(SECRET).verify(received.body, received.headers, json_parse=False)


def test_message_id_of_one_event_is_its_id() -> None:
    """A single event's webhook-id is its own id, so receivers can dedupe by event id."""
    assert message_id(["0190e5a4-7b1c-7cde-8f00-0123456789ab"]) == (
        "0190e5a4-7b1c-7cde-8f00-0123456789ab"
    )


def test_message_id_is_stable_per_batch_and_differs_between_batches() -> None:
    """The same ordered ids always give the same batch id; other ids or another order differ."""
    batch = ["evt-1", "evt-2", "evt-3"]
    first = message_id(batch)
    assert first.startswith("batch_")
    assert message_id(list(batch)) == first
    assert message_id(tuple(batch)) == first
    assert message_id(["evt-1", "evt-2"]) != first
    assert message_id(["evt-3", "evt-2", "evt-1"]) != first
    # An unambiguous encoding: moving a separator between ids changes the digest.
    assert message_id(["a,b", "c"]) != message_id(["a", "b,c"])


@pytest.mark.parametrize(
    "event_id", ["has space", "line\nbreak", "ünïcode", "batch_0123", "evt_abc", "x" * 300]
)
def test_unsafe_single_id_is_digested(event_id: str) -> None:
    """An id that is not header-safe, or mimics our prefixes, becomes a stable evt_ digest."""
    digested = message_id([event_id])
    assert digested.startswith("evt_")
    assert digested == message_id([event_id])
    Signer(SECRET).headers(digested, int(time.time()), BODY)  # header-safe


def test_message_id_needs_an_event() -> None:
    """An empty batch has no id: asking for one is a programming error."""
    with pytest.raises(ValueError, match="at least one event"):
        message_id([])


def test_headers_refuse_an_unsafe_message_id() -> None:
    """Signer.headers refuses an id that would break the header line."""
    with pytest.raises(ValueError, match="header-safe"):
        Signer(SECRET).headers("a\r\nX-Injected: 1", 0, BODY)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (SECRET, None),
        ("a-raw-secret-of-24-bytes", None),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), None),
        ("", "empty"),
        (" " + SECRET, "whitespace"),
        (SECRET + "\n", "whitespace"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_", "0 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 15).decode(), "15 bytes"),
        ("short-raw", "9 bytes"),
    ],
)
def test_check_secret(secret: str, problem: str | None) -> None:
    """check_secret accepts usable secrets and says why each unusable one is refused."""
    found = check_secret(secret)
    if problem is None:
        assert found is None
        Signer(secret)
    else:
        assert found is not None
        assert problem in found
        with pytest.raises(ValueError, match=problem):
            Signer(secret)
