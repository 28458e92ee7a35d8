"""``audit-forwarder render NAME``: the request a forwarder would send, shown offline.

The command runs as a real subprocess on a real configuration file; one test
compares what it shows with what a real daemon then sends to a real receiver
for the same event.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.destinations.webhook.requests import GZIP_LEVEL
from tests.conftest import ReceiverFactory
from tests.support import (
    DaemonProcess,
    daemon_config,
    forwarder_config,
    post_events,
    run_cli,
    wait_for,
)

TOKEN = "RENDER-SECRET-TOKEN"
SIGNING = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
TEMPLATE = '{"who": "{{ data.requester.email }}", "what": "{{ event_type }}"}'
EVENT = {
    "id": "evt-render-1",
    "event_type": "approval.decided",
    "data": {"requester": {"email": "ops@example.com"}, "decision": "approved"},
}


def write_config(tmp_path: Path, *forwarders: dict[str, Any]) -> str:
    """A configuration file with these forwarders (no daemon is started from it)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(daemon_config(tmp_path, list(forwarders))))
    return str(path)


async def render(config: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``audit-forwarder render`` for real."""
    return await run_cli("render", "--config", config, *args, stdin=stdin)


async def render_json(config: str, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
    """``render --json``, which must succeed."""
    code, out, err = await render(config, *args, "--json", stdin=stdin)
    assert code == 0, out + err
    payload: dict[str, Any] = json.loads(out)
    return payload


async def test_the_sample_event_is_rendered_as_a_terminal_shows_it(tmp_path: Path) -> None:
    """No --event: the built-in sample, the verdict, then method, URL, headers and body."""
    config = write_config(
        tmp_path,
        forwarder_config(
            "https://siem.example/in", name="siem", token=TOKEN, headers={"X-Team": "sec"}
        ),
    )

    code, out, err = await render(config, "siem")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "siem takes this event (type 'approval.created', the built-in sample event)"
    assert lines[2:7] == [
        "POST https://siem.example/in",
        "User-Agent: audit-forwarder/1.0",
        "X-Team: sec",
        "Authorization: Bearer ***",
        "Content-Type: application/json",
    ]
    body = json.loads(lines[8])
    assert body["data"]["requester"]["email"] == "dev@example.com"
    assert TOKEN not in out


async def test_an_event_from_a_file_or_stdin_goes_through_the_template(tmp_path: Path) -> None:
    """--event FILE and --event - give the same rendering, the template filled from the event."""
    config = write_config(
        tmp_path,
        forwarder_config("https://t.example/in", name="tpl", format="template", template=TEMPLATE),
    )
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(EVENT))

    from_file = await render_json(config, "tpl", "--event", str(event_file))
    from_stdin = await render_json(config, "tpl", "--event", "-", stdin=json.dumps(EVENT).encode())

    assert from_file["event_source"] == str(event_file)
    assert from_stdin["event_source"] == "stdin"
    for shown in (from_file, from_stdin):
        assert shown["takes_event"] is True
        assert shown["event_id"] == "evt-render-1"
        assert shown["event_type"] == "approval.decided"
        assert json.loads(shown["request"]["body"]) == {
            "who": "ops@example.com",
            "what": "approval.decided",
        }


async def test_what_render_shows_is_what_the_daemon_sends(
    tmp_path: Path, make_receiver: ReceiverFactory, daemons: Any
) -> None:
    """Same event: render's method, path, headers and body equal what the receiver gets."""
    receiver = await make_receiver()
    options = {
        "name": "siem",
        "format": "cloudevents",
        "cloudevents": {"source": "urn:test", "typePrefix": "com.example"},
        "headers": {"X-Team": "sec"},
        "signingSecret": SIGNING,
        "auth": {"type": "header", "header": "X-Api-Token"},
        "token": TOKEN,
    }
    config = daemon_config(tmp_path, [forwarder_config(f"{receiver.url}in?src=af", **options)])
    daemon: DaemonProcess = await daemons(config).start()
    event = json.dumps(EVENT).encode()
    shown = await render_json(str(daemon.config_path), "siem", "--event", "-", stdin=event)

    assert (await post_events(daemon.ingest_url, event))[0] == 202
    await wait_for(lambda: len(receiver.delivered) == 1)
    assert await daemon.terminate() == 0

    sent = receiver.delivered[0]
    request = shown["request"]
    assert request["method"] == sent.method
    assert request["url"] == f"{receiver.url}in?src=af"
    # Only the time of the attempt (and the signature over it) differ between two builds.
    timed = {"webhook-timestamp", "webhook-signature"}
    wire = {k: v for k, v in sent.headers.items() if k.lower() not in timed | {"host", "accept",
            "accept-encoding", "content-length"}}  # fmt: skip
    rendered = {k: v for k, v in request["headers"].items() if k.lower() not in timed}
    assert rendered == {**wire, "X-Api-Token": "***"}
    assert sent.headers["X-Api-Token"] == TOKEN
    assert request["headers"]["webhook-id"] == sent.headers["webhook-id"]
    body, sent_body = json.loads(request["body"]), json.loads(sent.body)
    # CloudEvents' time falls back to the time of acceptance: the event has no timestamp.
    assert {**body, "time": None} == {**sent_body, "time": None}
    assert body["id"] == "evt-render-1"
    assert TOKEN not in json.dumps(shown)


async def test_a_gzip_body_is_shown_decompressed_with_a_note(tmp_path: Path) -> None:
    """compression: gzip: the JSON body is readable, the note gives its size on the wire."""
    config = write_config(
        tmp_path, forwarder_config("https://z.example/in", name="zipped", compression="gzip")
    )
    event = json.dumps(EVENT).encode()

    shown = await render_json(config, "zipped", "--event", "-", stdin=event)
    code, out, _ = await render(config, "zipped", "--event", "-", stdin=event)

    wire_bytes = len(gzip.compress(event, compresslevel=GZIP_LEVEL, mtime=0))
    assert json.loads(shown["request"]["body"]) == EVENT
    assert shown["request"]["headers"]["Content-Encoding"] == "gzip"
    assert (shown["content_encoding"], shown["wire_bytes"]) == ("gzip", wire_bytes)
    note = f"the body is shown decompressed: it is sent gzip-compressed, {wire_bytes} bytes"
    assert shown["notes"] == [note]
    assert code == 0
    assert f"note: {note}" in out.splitlines()


async def test_a_filtered_out_event_and_a_disabled_forwarder_are_said(tmp_path: Path) -> None:
    """The filter's verdict leads; the request is still shown, with why nothing would be sent."""
    config = write_config(
        tmp_path,
        forwarder_config("https://k.example/in", name="keys", events=["key.*"], enabled=False),
    )

    shown = await render_json(config, "keys")
    code, out, _ = await render(config, "keys")

    assert shown["takes_event"] is False
    assert shown["enabled"] is False
    assert shown["notes"] == [
        "the forwarder is disabled (enabled: false): it sends nothing",
        "its filter does not take this event (events / excludeEvents): nothing would be sent;"
        " below is what it would send if it did",
    ]
    assert code == 0
    assert out.splitlines()[0] == (
        "keys does NOT take this event (type 'approval.created', the built-in sample event)"
    )


async def test_secrets_are_masked_in_the_url_the_headers_and_the_body(tmp_path: Path) -> None:
    """A query token, a Basic password and a secret the event itself carries are all ***."""
    config = write_config(
        tmp_path,
        forwarder_config("https://q.example/in", name="query", token=TOKEN, auth={"type": "query"}),
        forwarder_config("https://b.example/in", name="basic", token=f"svc:{TOKEN}b",
                         auth={"type": "basic"}),
    )  # fmt: skip
    event = json.dumps({"event_type": "leak", "echo": TOKEN}).encode()

    query = await render_json(config, "query", "--event", "-", stdin=event)
    code, basic, _ = await render(config, "basic", "--event", "-", stdin=event)

    assert query["request"]["url"] == "https://q.example/in?token=***"
    assert json.loads(query["request"]["body"]) == {"event_type": "leak", "echo": "***"}
    assert code == 0
    assert "Authorization: Basic ***" in basic.splitlines()
    assert TOKEN not in json.dumps(query) + basic


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (b"{nope", "stdin is not an event: line 1: malformed JSON"),
        (b"[1]", "stdin is not an event: event 0: an event must be a JSON object"),
        (b'"text"', "stdin is not an event: an event must be a JSON object"),
        (b'[{"a": 1}, {"b": 2}]', "stdin holds 2 events: render takes one JSON object"),
        (b'{"a": 1}\n{"b": 2}\n', "stdin holds 2 events: render takes one JSON object"),
        (b"", "stdin holds 0 events: render takes one JSON object"),
        (b'{"id": 5}', "stdin is not an event: id must be a non-empty string"),
    ],
    ids=["not-json", "not-an-object", "scalar", "array-of-two", "ndjson-of-two", "empty", "bad-id"],
)
async def test_malformed_event_input_is_refused_with_exit_2(
    tmp_path: Path, event: bytes, message: str
) -> None:
    """What ingest would refuse, and anything but one event, is a usage error: exit 2."""
    config = write_config(tmp_path, forwarder_config("https://x.example/in", name="siem"))

    code, out, err = await render(config, "siem", "--event", "-", stdin=event)
    json_code, json_out, json_err = await render(
        config, "siem", "--event", "-", "--json", stdin=event
    )

    assert (code, out) == (2, "")
    assert err.startswith(f"audit-forwarder: {message}")
    assert len(err.splitlines()) == 1
    assert (json_code, json_err) == (2, "")
    error = json.loads(json_out)
    assert error["error"] == "malformed_event"
    assert error["message"].startswith(message)


async def test_an_unknown_forwarder_or_a_missing_file_exits_1(tmp_path: Path) -> None:
    """A name not in the configuration lists the known ones; an unreadable --event is named."""
    config = write_config(
        tmp_path,
        forwarder_config("https://a.example/in", name="siem"),
        forwarder_config("https://b.example/in", name="archive"),
    )
    missing = tmp_path / "missing.json"

    unknown = await render(config, "nope")
    unknown_json = await render(config, "nope", "--json")
    unreadable = await render(config, "siem", "--event", str(missing))

    assert unknown == (
        1,
        "",
        "audit-forwarder: no forwarder named 'nope'; known forwarders: siem, archive\n",
    )
    assert unknown_json[0] == 1
    assert json.loads(unknown_json[1]) == {
        "error": "unknown_forwarder",
        "message": "no forwarder named 'nope'; known forwarders: siem, archive",
        "known_forwarders": ["siem", "archive"],
    }
    assert unreadable == (
        1,
        "",
        f"audit-forwarder: cannot read {missing}: No such file or directory\n",
    )


async def test_an_oauth2_forwarder_shows_its_authorization_masked_with_a_note(
    tmp_path: Path,
) -> None:
    """auth.type oauth2: no token is fetched; the header is shown as sent, masked, and said."""
    auth = {
        "type": "oauth2",
        "tokenUrl": "https://login.example/token",
        "clientId": "me",
        "clientSecret": TOKEN,
    }
    config = write_config(tmp_path, forwarder_config("https://o.example/in", name="o", auth=auth))

    shown = await render_json(config, "o")

    assert shown["request"]["headers"]["Authorization"] == "Bearer ***"
    assert shown["notes"] == [
        "Authorization carries an access token fetched from auth.tokenUrl when sent"
    ]
    assert TOKEN not in json.dumps(shown)
