"""``kind: nats`` forwarders in the chart: the schema the daemon's model has, secrets in Secrets.

The values schema picks the forwarder's shape by ``kind`` (webhook keys are
refused on a NATS forwarder and the other way round); an inline token or
password goes to the chart's Secret and reaches the daemon as a ``*File``
key, as webhook tokens do. The rendered pod is run through the real
``check-config``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import helm_python as helm
import pytest
import yaml
from pydantic import BaseModel

from forwarder.config.settings import Settings
from tests.deploy.chart_support import (
    SECRETS_DIR,
    aliases,
    daemon_accepts,
    daemon_config,
    notes,
    of_kind,
    one,
    pod_spec,
    render,
    render_error,
    resolve,
    schema_error,
    validate_manifests,
    values_schema,
)

SERVERS = ["nats://nats-0.nats:4222", "nats://nats-1.nats:4222"]
TOKEN = "nats-token-0123456789"
PASSWORD = "nats-password-0123456789"
# The chart writes the *File keys; an existing Secret is named by *SecretRef instead.
CHART_MANAGED = ({"tokenFile", "passwordFile"}, {"tokenSecretRef", "passwordSecretRef"})


def nats(**options: Any) -> dict[str, Any]:
    """Values with one NATS forwarder carrying ``options``."""
    forwarder = {"kind": "nats", "name": "jetstream", "servers": SERVERS, **options}
    return {"auditLogForwarders": [forwarder]}


def nats_model() -> type[BaseModel]:
    """The daemon's model of a ``kind: nats`` entry, found in the Settings' forwarder union."""
    pending: list[Any] = [Settings.model_fields["audit_log_forwarders"].annotation]
    while pending:
        candidate = pending.pop()
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            kind = candidate.model_fields.get("kind")
            literal = kind is not None and get_origin(kind.annotation) is Literal
            if literal and kind is not None and "nats" in get_args(kind.annotation):
                return candidate
            continue
        pending += get_args(candidate)
    pytest.fail("the daemon's Settings have no kind: nats forwarder model")


def test_schema_has_exactly_the_daemon_nats_keys() -> None:
    """The natsForwarder schema lists the model's keys (nested ones too), chart-managed aside."""
    schema = values_schema()
    node = schema["definitions"]["natsForwarder"]
    model = nats_model()
    managed, added = CHART_MANAGED
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == aliases(model) - managed | added
    for name, field in model.model_fields.items():
        nested, *_ = get_args(field.annotation) or (field.annotation,)
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            sub = resolve(schema, node["properties"][field.alias or name])
            assert sub["additionalProperties"] is False
            assert set(sub["properties"]) == aliases(nested), name


def test_inline_token_and_password_go_to_the_secret(chart: helm.Chart, tmp_path: Path) -> None:
    """token and password become Secret files named by tokenFile / passwordFile, not values."""
    values = nats(
        subject="audit.{event_type}",
        subjectFallback="audit.unknown",
        stream="AUDIT",
        username="audit",
        password=PASSWORD,
        timeoutSeconds=3,
        batch={"maxEvents": 50},
    )
    objects = render(chart, values)
    validate_manifests(objects)
    config_map_text = yaml.safe_dump(one(objects, "ConfigMap"))
    assert PASSWORD not in config_map_text
    assert base64.b64encode(PASSWORD.encode()).decode() not in config_map_text
    data = one(objects, "Secret")["data"]
    assert base64.b64decode(data["forwarder-0-password"]).decode() == PASSWORD
    assert daemon_config(objects)["auditLogForwarders"] == [
        {
            "kind": "nats",
            "name": "jetstream",
            "servers": SERVERS,
            "subject": "audit.{event_type}",
            "subjectFallback": "audit.unknown",
            "stream": "AUDIT",
            "username": "audit",
            "passwordFile": f"{SECRETS_DIR}/forwarder-0-password",
            "timeoutSeconds": 3,
            "batch": {"maxEvents": 50},
        }
    ]
    assert "OK (1 forwarder(s): jetstream)" in daemon_accepts(objects, tmp_path)
    token_objects = render(chart, nats(token=TOKEN))
    assert base64.b64decode(one(token_objects, "Secret")["data"]["forwarder-0-token"]) == (
        TOKEN.encode()
    )
    assert daemon_config(token_objects)["auditLogForwarders"][0]["tokenFile"] == (
        f"{SECRETS_DIR}/forwarder-0-token"
    )
    daemon_accepts(token_objects, tmp_path / "token")


def test_secret_refs_project_existing_secrets(chart: helm.Chart, tmp_path: Path) -> None:
    """passwordSecretRef projects the existing Secret's key; the chart renders no Secret."""
    values = nats(username="audit", passwordSecretRef={"name": "audit-nats", "key": "password"})
    objects = render(chart, values)
    validate_manifests(objects)
    assert of_kind(objects, "Secret") == []
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-secrets")
    assert volume["projected"]["sources"] == [
        {
            "secret": {
                "name": "audit-nats",
                "items": [{"key": "password", "path": "forwarder-0-password"}],
            }
        }
    ]
    assert daemon_config(objects)["auditLogForwarders"][0]["passwordFile"] == (
        f"{SECRETS_DIR}/forwarder-0-password"
    )
    daemon_accepts(objects, tmp_path, {"audit-nats": {"password": PASSWORD}})


def test_notes_list_a_nats_forwarder(chart: helm.Chart) -> None:
    """NOTES name a NATS forwarder by its servers and subject, not an HTTP method and URI."""
    text = notes(chart, nats(subject="audit.{event_type}"))
    assert f"  - jetstream: NATS {','.join(SERVERS)} subject audit.{{event_type}}" in text


def test_password_and_its_ref_together_fail_at_render(chart: helm.Chart) -> None:
    """password and passwordSecretRef at once fail naming both keys."""
    values = nats(username="u", password="p", passwordSecretRef={"name": "s", "key": "k"})
    assert "auditLogForwarders[0]: set password or passwordSecretRef, not both" in render_error(
        chart, values
    )


DROP = object()


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"uri": "https://x.example"}, "'uri' not allowed"),
        ({"format": "cloudevents"}, "'format' not allowed"),
        ({"passwordFile": "/etc/password"}, "'passwordFile' not allowed"),
        ({"tokenFile": "/etc/token"}, "'tokenFile' not allowed"),
        ({"servers": DROP}, "missing property 'servers'"),
        ({"servers": []}, "/auditLogForwarders/0/servers"),
        ({"servers": "nats://one:4222"}, "/auditLogForwarders/0/servers"),
        ({"servers": ["http://nats:4222"]}, "/auditLogForwarders/0/servers/0"),
        ({"servers": ["nats://user:pw@nats:4222"]}, "/auditLogForwarders/0/servers/0"),
        ({"subject": "audit events"}, "/auditLogForwarders/0/subject"),
        ({"stream": "AUDIT.v1"}, "/auditLogForwarders/0/stream"),
        ({"timeoutSeconds": "5s"}, "/auditLogForwarders/0/timeoutSeconds"),
        ({"tls": {"insecureSkipVerify": True}}, "'insecureSkipVerify' not allowed"),
        ({"tokenSecretRef": {"name": "s"}}, "missing property 'key'"),
    ],
)
def test_schema_rejects_bad_nats_values(
    chart: helm.Chart, changes: dict[str, Any], complaint: str
) -> None:
    """A valid NATS forwarder with one webhook, chart-managed or malformed key is refused."""
    valid = nats(
        subject="audit.{event_type}", stream="AUDIT", tokenSecretRef={"name": "s", "key": "k"}
    )
    assert daemon_config(render(chart, valid))["auditLogForwarders"][0]["kind"] == "nats"
    forwarder = {**valid["auditLogForwarders"][0], **changes}
    bad = {k: v for k, v in forwarder.items() if v is not DROP}
    assert complaint in schema_error(chart, {"auditLogForwarders": [bad]})


def test_schema_keeps_nats_keys_off_webhook_forwarders(chart: helm.Chart) -> None:
    """A webhook forwarder with a NATS key is refused: each kind has its own keys."""
    webhook = {"kind": "webhook", "uri": "https://x.example", "servers": SERVERS}
    assert "'servers' not allowed" in schema_error(chart, {"auditLogForwarders": [webhook]})
