"""Integrity chain keys in the chart: an existing Secret mounted in every mode, never values.

A forwarder's ``integrity.signingKeyFile`` names an Ed25519 key that
``integrity.signingKeys`` mounts read-only from the operator's Secret; the
inline ``signingKey`` is accepted but goes to the chart's Secret like a token,
and the NOTES steer away from it. Each rendered pod is run through the real
``check-config`` with a real key.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart_support import (
    SECRETS_DIR,
    check_config,
    container,
    daemon_accepts,
    daemon_config,
    mount_pod_files,
    notes,
    one,
    pod_spec,
    render,
    render_error,
    schema_error,
    signing_key_pem,
    validate_manifests,
    with_forwarder,
)

SIGNING_DIR = "/etc/audit-forwarder/signing"
KEY_FILE = f"{SIGNING_DIR}/siem.key"
CHAIN = {
    "mode": "chain",
    "signingKeyFile": KEY_FILE,
    "checkpointEvery": 500,
    "checkpointIntervalSeconds": 30,
}


def chained(**integrity: Any) -> dict[str, Any]:
    """Values with one chained webhook forwarder and the signing keys' Secret mounted."""
    values = with_forwarder(name="siem", integrity={**CHAIN, **integrity})
    values["integrity"] = {"signingKeys": {"existingSecret": "audit-signing"}}
    return values


def signing_volume(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod's signing-keys volume."""
    found: dict[str, Any] = next(
        v for v in spec["volumes"] if v["name"] == "audit-forwarder-signing-keys"
    )
    return found


@pytest.mark.parametrize("mode", ["standalone", "daemonset"])
def test_signing_keys_are_mounted_read_only(chart: helm.Chart, tmp_path: Path, mode: str) -> None:
    """signingKeys.existingSecret is mounted 0440 read-only; the daemon reads the key from it."""
    objects = render(chart, {**chained(), "mode": mode})
    validate_manifests(objects)
    spec = pod_spec(objects)
    assert signing_volume(spec)["secret"] == {"secretName": "audit-signing", "defaultMode": 0o440}
    mounts = [m for m in container(spec)["volumeMounts"] if m["name"].endswith("signing-keys")]
    assert mounts == [
        {"name": "audit-forwarder-signing-keys", "mountPath": SIGNING_DIR, "readOnly": True}
    ]
    assert daemon_config(objects)["auditLogForwarders"][0]["integrity"] == CHAIN
    daemon_accepts(objects, tmp_path, {"audit-signing": {"siem.key": signing_key_pem()}})


def test_signing_keys_reach_the_sidecar_only(sidecar_app: helm.Chart, tmp_path: Path) -> None:
    """In sidecar mode the forwarder container mounts the keys; the application does not."""
    objects = render(sidecar_app, {"audit-forwarder": chained()})
    validate_manifests(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert signing_volume(spec)["secret"]["secretName"] == "audit-signing"
    forwarder_mounts = {m["name"]: m for m in container(spec)["volumeMounts"]}
    assert forwarder_mounts["audit-forwarder-signing-keys"]["readOnly"] is True
    app_mounts = {m["name"] for m in container(spec, "app")["volumeMounts"]}
    assert "audit-forwarder-signing-keys" not in app_mounts
    secrets = {"audit-signing": {"siem.key": signing_key_pem()}}
    check_config(mount_pod_files(objects, spec, tmp_path / "pod", secrets))


def test_mount_path_is_configurable(chart: helm.Chart) -> None:
    """signingKeys.mountPath moves the mount; no Secret named means no signing volume at all."""
    values = chained(signingKeyFile="/keys/siem.key")
    values["integrity"]["signingKeys"]["mountPath"] = "/keys"
    mounts = container(pod_spec(render(chart, values)))["volumeMounts"]
    assert {"name": "audit-forwarder-signing-keys", "mountPath": "/keys", "readOnly": True} in (
        mounts
    )
    plain = pod_spec(render(chart, with_forwarder()))
    assert "audit-forwarder-signing-keys" not in {v["name"] for v in plain["volumes"]}


def test_inline_signing_key_goes_to_the_chart_secret(chart: helm.Chart, tmp_path: Path) -> None:
    """An inline signingKey is stored in the chart's Secret, named by file, and warned about."""
    pem = signing_key_pem()
    integrity = {"mode": "chain", "signingKey": pem}
    values = with_forwarder(name="siem", integrity=integrity)
    objects = render(chart, values)
    validate_manifests(objects)
    config_map_text = yaml.safe_dump(one(objects, "ConfigMap"))
    assert "PRIVATE KEY" not in config_map_text
    assert base64.b64encode(pem.encode()).decode() not in config_map_text
    data = one(objects, "Secret")["data"]
    assert base64.b64decode(data["forwarder-0-integrity-signing-key"]).decode() == pem
    assert daemon_config(objects)["auditLogForwarders"][0]["integrity"] == {
        "mode": "chain",
        "signingKeyFile": f"{SECRETS_DIR}/forwarder-0-integrity-signing-key",
    }
    assert "WARNING: auditLogForwarders[0].integrity.signingKey is inline" in notes(chart, values)
    assert "WARNING" not in notes(chart, chained()).split("Send events")[0]
    daemon_accepts(objects, tmp_path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            chained(signingKey="-----BEGIN PRIVATE KEY-----"),
            "auditLogForwarders[0].integrity: set signingKeyFile or signingKey, not both",
        ),
        (
            with_forwarder(integrity={"mode": "chain"}),
            "auditLogForwarders[0].integrity: checkpoints are signed: set signingKeyFile",
        ),
        (
            with_forwarder(integrity=CHAIN),
            "integrity.signingKeys.existingSecret is not set, so nothing is mounted there",
        ),
        (
            {
                **chained(signingKeyFile="/etc/audit-forwarder/secrets/siem.key"),
                "integrity": {
                    "signingKeys": {
                        "existingSecret": "audit-signing",
                        "mountPath": "/etc/audit-forwarder/secrets",
                    }
                },
            },
            "integrity.signingKeys.mountPath (/etc/audit-forwarder/secrets) overlaps"
            " the secrets directory",
        ),
        (
            {
                **chained(signingKeyFile="/var/lib/siem.key"),
                "integrity": {"signingKeys": {"existingSecret": "s", "mountPath": "/var/lib"}},
            },
            "integrity.signingKeys.mountPath (/var/lib) overlaps the buffer directory",
        ),
    ],
)
def test_unusable_integrity_values_fail_at_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """A chain without exactly one key, or a key mount that cannot work, fails naming the keys."""
    assert message in render_error(chart, values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (with_forwarder(integrity={**CHAIN, "mode": "merkle"}), "/auditLogForwarders/0/integrity"),
        (with_forwarder(integrity={**CHAIN, "checkpointEvery": 0}), "/integrity/checkpointEvery"),
        (
            with_forwarder(integrity={**CHAIN, "checkpointEvery": "1000"}),
            "/integrity/checkpointEvery",
        ),
        (
            with_forwarder(integrity={**CHAIN, "checkpointIntervalSeconds": -1}),
            "/integrity/checkpointIntervalSeconds",
        ),
        (with_forwarder(integrity={"signingKeyFile": KEY_FILE}), "missing property 'mode'"),
        (with_forwarder(integrity={**CHAIN, "keyFile": KEY_FILE}), "'keyFile' not allowed"),
        (with_forwarder(integrity={**CHAIN, "signingKeyFile": "siem.key"}), "/signingKeyFile"),
        (
            {**chained(), "integrity": {"signingKeys": {"existingSecret": "x\n  hostPath: /"}}},
            "/integrity/signingKeys/existingSecret",
        ),
        (
            {**chained(), "integrity": {"signingKeys": {"mountPath": "/etc/keys:rw"}}},
            "/integrity/signingKeys/mountPath",
        ),
        (
            {**chained(), "integrity": {"signingKeys": {"mountPath": "signing"}}},
            "/integrity/signingKeys/mountPath",
        ),
        (
            {
                **chained(),
                "integrity": {"signingKeys": {"mountPath": "/k\n      privileged: true"}},
            },
            "/integrity/signingKeys/mountPath",
        ),
        ({**chained(), "integrity": {"signingKey": "PEM"}}, "'signingKey' not allowed"),
    ],
)
def test_schema_rejects_bad_integrity_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    """Wrong types, unknown keys and injection attempts in integrity values are schema errors."""
    assert complaint in schema_error(chart, values)
