"""How a forwarder's token goes out: headers, Basic, the query string, and masked display URLs."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from forwarder.destinations.webhook.auth import (
    check_token,
    forwarder_secrets,
    mask_url,
    request_target,
)
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from tests.support import Received, ScriptedReceiver


def spec(uri: str = "https://siem.example.com/ingest", **options: Any) -> WebhookForwarderConfig:
    """A forwarder entry as the YAML would give it (camelCase keys accepted)."""
    return WebhookForwarderConfig.model_validate({"kind": "webhook", "uri": uri, **options})


async def send(uri: str, **options: Any) -> Received:
    """Send one request the way ``request_target`` says, to a real receiver; return what it got."""
    receiver = await ScriptedReceiver().start()
    try:
        target = request_target(spec(receiver.url.rstrip("/") + uri, **options))
        async with (
            aiohttp.ClientSession() as session,
            session.post(target.url, headers=target.headers, data=b"{}") as response,
        ):
            assert response.status == 200
        return receiver.attempts[0]
    finally:
        await receiver.stop()


def test_bearer_is_the_default() -> None:
    """Without an auth section the token goes out as Chainloop sends it: Bearer."""
    target = request_target(spec(token="s3cret"))
    assert target.headers == {"Authorization": "Bearer s3cret"}
    assert target.url == target.display_url == "https://siem.example.com/ingest"


def test_bearer_without_token_sends_no_header() -> None:
    """A bearer forwarder without a token sends no Authorization at all, as Chainloop does."""
    assert request_target(spec()).headers == {}
    assert check_token(spec()) is None


def test_header_with_scheme_is_splunk_hec() -> None:
    """auth.type header with scheme Splunk gives Splunk HEC's Authorization: Splunk <token>."""
    target = request_target(spec(token="hec-token", auth={"type": "header", "scheme": "Splunk"}))
    assert target.headers == {"Authorization": "Splunk hec-token"}


def test_header_without_scheme_sends_the_bare_token() -> None:
    """auth.type header with another header name gives Datadog's DD-API-KEY: <token>."""
    target = request_target(spec(token="dd-key", auth={"type": "header", "header": "DD-API-KEY"}))
    assert target.headers == {"DD-API-KEY": "dd-key"}


def test_basic_encodes_user_and_password() -> None:
    """auth.type basic sends base64(user:password), UTF-8 encoded, in Authorization: Basic."""
    target = request_target(spec(token="user:pä:ss", auth={"type": "basic"}))
    encoded = base64.b64encode("user:pä:ss".encode()).decode()
    assert target.headers == {"Authorization": f"Basic {encoded}"}


def test_none_sends_no_credentials() -> None:
    """auth.type none sends neither a header nor a query parameter."""
    target = request_target(spec(uri="https://example.com/x?a=1", auth={"type": "none"}))
    assert target.headers == {}
    assert target.url == "https://example.com/x?a=1"


def test_query_token_is_appended_after_existing_params_and_masked() -> None:
    """auth.type query appends the encoded token after the URI's parameters; display masks it."""
    target = request_target(
        spec(
            uri="https://listener.example.com:8071/?type=audit#frag",
            token="a+b/c=&d",
            auth={"type": "query", "param": "key"},
        )
    )
    assert target.url == "https://listener.example.com:8071/?type=audit&key=a%2Bb%2Fc%3D%26d#frag"
    assert target.display_url == "https://listener.example.com:8071/?type=audit&key=***#frag"
    assert target.headers == {}


async def test_query_token_reaches_the_receiver_intact() -> None:
    """A token with reserved and non-ASCII characters arrives decoded exactly, other params kept."""
    token = "a+b/c=&d é%"
    received = await send("/ingest?type=audit", token=token, auth={"type": "query"})
    assert received.query == {"type": "audit", "token": token}
    assert "Authorization" not in received.headers


@pytest.mark.parametrize(
    ("options", "header", "value"),
    [
        ({"token": "t0k"}, "Authorization", "Bearer t0k"),
        (
            {"token": "t0k", "auth": {"type": "header", "scheme": "Splunk"}},
            "Authorization",
            "Splunk t0k",
        ),
        ({"token": "t0k", "auth": {"type": "header", "header": "DD-API-KEY"}}, "DD-API-KEY", "t0k"),
        ({"token": "u:p", "auth": {"type": "basic"}}, "Authorization", "Basic dTpw"),
    ],
)
async def test_auth_headers_reach_the_receiver(
    options: dict[str, Any], header: str, value: str
) -> None:
    """Each header-based auth type arrives at a real receiver exactly as configured."""
    received = await send("/", **options)
    assert received.headers[header] == value


def test_token_in_the_uri_is_masked_in_display_url() -> None:
    """Logz.io's ?token= given in the URI itself is used as is and masked in the display URL."""
    logzio = spec(
        uri="https://listener.logz.io:8071/?token=abc123&type=audit", auth={"type": "query"}
    )
    assert check_token(logzio) is None
    target = request_target(logzio)
    assert target.url == "https://listener.logz.io:8071/?token=abc123&type=audit"
    assert target.display_url == "https://listener.logz.io:8071/?token=***&type=audit"


def test_display_url_masks_userinfo_and_well_known_secret_params() -> None:
    """A password in user:password@, an api_key and a sig are masked whatever auth.type is."""
    target = request_target(spec(uri="https://bob:hunter2@h.example.com/p?api_key=k1&SIG=s2&n=1"))
    assert target.display_url == "https://bob:***@h.example.com/p?api_key=***&SIG=***&n=1"


def test_mask_url_masks_known_secrets_anywhere() -> None:
    """mask_url hides a secret in the path (Slack-style), as given or percent-encoded."""
    assert (
        mask_url("https://hooks.example.com/services/T00/B00/xXsecretXx", ["xXsecretXx"])
        == "https://hooks.example.com/services/T00/B00/***"
    )
    assert mask_url("https://h.example.com/a%2Fb/c", ["a/b"]) == "https://h.example.com/***/c"
    assert mask_url("https://h.example.com/x", [""]) == "https://h.example.com/x"


def test_mask_url_masks_a_secret_in_any_mix_of_escapes() -> None:
    """A path secret with some characters escaped and others not (yarl's way) is masked."""
    masked = mask_url("https://h.example.com/hook/a/b%2Bc%3dd/x", ["a/b+c=d"])
    assert masked == "https://h.example.com/hook/***/x"


def test_forwarder_secrets_include_what_is_not_a_secret_field() -> None:
    """Besides token and signing secret: a Basic password alone, URI credentials, key headers."""
    basic = spec(token="svc:pa/ss", auth={"type": "basic"}, signingSecret="whsec_c2VjcmV0")
    assert forwarder_secrets(basic) == ["svc:pa/ss", "pa/ss", "whsec_c2VjcmV0"]
    in_uri = spec(
        uri="https://bob:hun%2Fter2@h.example.com/p?api_key=k+1&n=1&code=c9",
        headers={"X-API-Key": "hdr-key", "X-Trace": "not-secret"},
        auth={"type": "query", "param": "code"},
    )
    assert forwarder_secrets(in_uri) == ["hun/ter2", "k+1", "k 1", "c9", "hdr-key"]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"token": "t"}, None),
        ({}, None),
        ({"token": ""}, "the token is empty"),
        ({"token": "t", "auth": {"type": "none"}}, "auth.type none sends no credentials"),
        ({"auth": {"type": "none"}}, None),
        ({"auth": {"type": "header", "header": "DD-API-KEY"}}, "auth.type header needs a token"),
        ({"auth": {"type": "basic"}}, "auth.type basic needs a token"),
        ({"token": "nocolon", "auth": {"type": "basic"}}, '"user:password"'),
        ({"token": ":pw", "auth": {"type": "basic"}}, '"user:password"'),
        ({"token": "u:", "auth": {"type": "basic"}}, None),
        ({"auth": {"type": "query"}}, "auth.type query needs a token"),
        ({"token": "t", "auth": {"type": "query"}}, None),
        ({"token": "a\nb"}, "printable ASCII"),
        ({"token": "tökén"}, "printable ASCII"),
        ({"token": "t", "auth": {"type": "header", "scheme": "Spl\runk"}}, "auth.scheme"),
        ({"tokenFile": "/run/secrets/token", "auth": {"type": "basic"}}, None),
    ],
)
def test_check_token(options: dict[str, Any], problem: str | None) -> None:
    """check_token accepts workable token setups and names the problem of each broken one."""
    found = check_token(spec(**options))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_check_token_refuses_query_token_in_both_places() -> None:
    """A query token both in the URI and in token is ambiguous: check_token reports it."""
    both = spec(uri="https://h.example.com/?token=a", token="b", auth={"type": "query"})
    assert (
        check_token(both)
        == "the uri already has ?token=; set the token there or in token, not both"
    )


async def test_check_token_refuses_uri_credentials_with_authorization(
    receiver: ScriptedReceiver,
) -> None:
    """user@ in the URI plus an Authorization header is reported: aiohttp refuses to send it."""
    uri = f"http://user:pw@127.0.0.1:{receiver.port}/"
    conflicting = spec(uri=uri, token="t")
    assert check_token(conflicting) is not None
    assert "credentials" in str(check_token(conflicting))
    target = request_target(conflicting)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="Cannot combine AUTHORIZATION"):
            await session.post(target.url, headers=target.headers)
    assert receiver.attempts == []
    # A header other than Authorization does not conflict.
    assert check_token(spec(uri=uri, token="t", auth={"type": "header", "header": "X-Key"})) is None
