"""``kind: nats`` configuration: subjects, servers, auth rules, and the YAML paths of problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from forwarder.config.loading import parse_config
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.nats.subjects import SubjectTemplate
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.errors import ConfigError


def problems(*forwarders: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    """What check-config says about a configuration holding ``forwarders``."""
    try:
        parse_config({"auditLogForwarders": list(forwarders)}, base_dir)
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    return []


def nats(**options: Any) -> dict[str, Any]:
    """A valid nats forwarder entry with ``options`` on top."""
    return {"kind": "nats", "servers": ["nats://127.0.0.1:4222"], **options}


def test_a_nats_entry_beside_a_webhook_entry_loads_with_its_defaults() -> None:
    """kind: nats selects the NATS model; an entry without kind is still judged as a webhook."""
    settings = parse_config(
        {"auditLogForwarders": [{"kind": "webhook", "uri": "http://x.example/"}, nats()]}
    )
    webhook, bus = settings.audit_log_forwarders
    assert isinstance(webhook, WebhookForwarderConfig)
    assert isinstance(bus, NatsForwarderConfig)
    assert (bus.name, bus.subject, bus.subject_fallback) == (
        "nats-1",
        "audit.{event_type}",
        "audit.unknown",
    )
    assert bus.timeout_seconds == 5.0
    assert problems({"uri": "http://x.example/"}) == ["auditLogForwarders[0].kind: is required"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"servers": ["http://x:4222"]}, "servers: 'http://x:4222' must start with nats://"),
        ({"servers": []}, "servers: list should have at least 1 item"),
        ({"servers": "nats://x"}, "servers: input should be a valid list"),
        ({"servers": ["nats://u:p@x:4222"]}, "servers: credentials do not belong in a server"),
        ({"subject": "audit.*.{event_type}"}, "subject: a subject token must not hold"),
        ({"subject": "audit..{event_type}"}, "subject: a subject must not have empty tokens"),
        ({"subject": "$JS.API.{event_type}"}, "subject: a subject must not start with a '$'"),
        ({"subject": "audit.{type}"}, "subject: the only placeholder a subject may hold is"),
        ({"subjectFallback": "audit.>"}, "subjectFallback: a subject token must not hold"),
        ({"stream": "a.b"}, "stream: a stream name is 1-255 characters without whitespace"),
        ({"timeoutSeconds": "soon"}, "timeoutSeconds: input should be a valid number"),
        ({"token": "a", "tokenFile": "/t"}, ": set token or tokenFile, not both"),
        ({"username": "u"}, ": username needs password or passwordFile"),
        ({"token": "a", "nkeySeedFile": "/s"}, ": authenticate one way: token, nkeySeedFile"),
        ({"tls": {"keyFile": "/k"}}, "tls: keyFile needs certFile"),
        ({"subjet": "a"}, "subjet: unknown key (did you mean subject?)"),
        ({"uri": "http://x/"}, "uri: unknown key"),
    ],
)
def test_malformed_options_are_problems_at_their_yaml_path(
    options: dict[str, Any], expected: str
) -> None:
    """Wrong types, hostile subjects and conflicting auth each fail check-config at their path."""
    found = problems(nats(**options))
    where = "auditLogForwarders[0]" + ("" if expected.startswith(":") else ".")
    assert any(problem.startswith(where + expected) for problem in found), found


def test_secret_files_are_read_and_a_bad_seed_file_is_a_problem(tmp_path: Path) -> None:
    """tokenFile is read into the token and the masker's list; a seed file that is no seed fails."""
    (tmp_path / "token").write_text("file-token-123\n")
    (tmp_path / "seed").write_text("not a seed\n")
    settings = parse_config({"auditLogForwarders": [nats(tokenFile="token")]}, tmp_path)
    spec = settings.audit_log_forwarders[0]
    assert isinstance(spec, NatsForwarderConfig)
    assert spec.token is not None
    assert spec.token.get_secret_value() == "file-token-123"
    assert "file-token-123" in settings.secrets()
    assert problems(nats(nkeySeedFile="seed"), base_dir=tmp_path) == [
        "auditLogForwarders[0].nkeySeedFile: the file does not hold an NKey seed"
        " (one line of 58 characters starting with S)"
    ]
    assert problems(nats(passwordFile="missing", username="u"), base_dir=tmp_path)[0].startswith(
        "auditLogForwarders[0].passwordFile: cannot read"
    )


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("user.login", "audit.user.login"),
        (None, "audit.unknown"),
        ("", "audit.unknown"),
        ("has space", "audit.unknown"),
        ("wild.*", "audit.unknown"),
        ("tail.>", "audit.unknown"),
        ("double..dot", "audit.unknown"),
        (".leading", "audit.unknown"),
        ("ctl\x00char", "audit.unknown"),
        ("new\nline", "audit.unknown"),
        ("x" * 2000, "audit.unknown"),
        ("ünïcode", "audit.ünïcode"),
    ],
)
def test_subjects_come_from_the_event_type_or_the_fallback(
    event_type: str | None, subject: str
) -> None:
    """An event type that would make an unsafe subject (or none) goes to subjectFallback."""
    assert SubjectTemplate("audit.{event_type}", "audit.unknown").subject(event_type) == subject


def test_a_template_made_of_the_event_type_alone_cannot_reach_reserved_subjects() -> None:
    """subject: "{event_type}" never publishes to $JS.API or _INBOX subjects."""
    template = SubjectTemplate("{event_type}", "audit.unknown")
    assert template.subject("$JS.API.STREAM.DELETE.AUDIT") == "audit.unknown"
    assert template.subject("_INBOX.abc") == "audit.unknown"
    assert template.subject("user.login") == "user.login"
    assert SubjectTemplate("audit.all", "audit.unknown").subject("anything") == "audit.all"
