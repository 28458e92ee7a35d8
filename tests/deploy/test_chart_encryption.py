"""Buffer encryption keys in the chart: an existing Secret mounted, the daemon's key list rendered.

``config.buffer.encryption`` names the Secret and its keys; the chart mounts
exactly those keys read-only and renders ``buffer.encryption: {keys: [{id,
file}], active}`` with the mounted paths. Asking for encryption without a
Secret fails the render with the commands that make one. Each rendered pod is
run through the real ``check-config`` with real key files.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHAINLOOP,
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
    validate_manifests,
)

KEYS_DIR = "/etc/audit-forwarder/buffer-keys"
# The Secret as the cluster holds it: 64 hex characters per key, one the daemon reads.
CLUSTER = {
    "audit-buffer-keys": {
        "k1.key": secrets.token_hex(32),
        "k2.key": secrets.token_hex(32),
        "unused.key": secrets.token_hex(32),
    }
}


def encrypted(**encryption: Any) -> dict[str, Any]:
    """Chainloop's values with config.buffer.encryption set."""
    settings = {"existingSecret": "audit-buffer-keys", **encryption}
    return {**CHAINLOOP, "config": {"buffer": {"encryption": settings}}}


ONE_KEY = encrypted(keys=[{"id": "k1", "secretKey": "k1.key"}])
ROTATING = encrypted(
    keys=[{"id": "k1", "secretKey": "k1.key"}, {"id": "k2", "secretKey": "k2.key"}],
    active="k2",
)


def keys_volume(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod's buffer-keys volume."""
    found: dict[str, Any] = next(
        v for v in spec["volumes"] if v["name"] == "audit-forwarder-buffer-keys"
    )
    return found


@pytest.mark.parametrize("mode", ["standalone", "daemonset"])
def test_listed_keys_are_mounted_and_rendered(chart: helm.Chart, tmp_path: Path, mode: str) -> None:
    """Only the listed keys are mounted (0440, read-only), named in config.yaml, and opened."""
    objects = render(chart, {**ROTATING, "mode": mode})
    validate_manifests(objects)
    spec = pod_spec(objects)
    assert keys_volume(spec)["secret"] == {
        "secretName": "audit-buffer-keys",
        "defaultMode": 0o440,
        "items": [{"key": "k1.key", "path": "k1.key"}, {"key": "k2.key", "path": "k2.key"}],
    }
    mounts = [m for m in container(spec)["volumeMounts"] if m["name"].endswith("buffer-keys")]
    assert mounts == [
        {"name": "audit-forwarder-buffer-keys", "mountPath": KEYS_DIR, "readOnly": True}
    ]
    assert daemon_config(objects)["buffer"]["encryption"] == {
        "keys": [
            {"id": "k1", "file": f"{KEYS_DIR}/k1.key"},
            {"id": "k2", "file": f"{KEYS_DIR}/k2.key"},
        ],
        "active": "k2",
    }
    daemon_accepts(objects, tmp_path, CLUSTER)


def test_a_single_key_is_the_active_one(chart: helm.Chart, tmp_path: Path) -> None:
    """With one key and no active, that key is active; NOTES name it and the Secret."""
    objects = render(chart, ONE_KEY)
    assert daemon_config(objects)["buffer"]["encryption"] == {
        "keys": [{"id": "k1", "file": f"{KEYS_DIR}/k1.key"}],
        "active": "k1",
    }
    assert "Buffer encryption: AES-256-GCM, active key k1, keys from Secret audit-buffer-keys" in (
        notes(chart, ONE_KEY)
    )
    daemon_accepts(objects, tmp_path, CLUSTER)


def test_keys_reach_the_sidecar_only(sidecar_app: helm.Chart, tmp_path: Path) -> None:
    """In sidecar mode the forwarder container mounts the keys; the application does not."""
    objects = render(sidecar_app, {"audit-forwarder": ONE_KEY})
    validate_manifests(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert keys_volume(spec)["secret"]["items"] == [{"key": "k1.key", "path": "k1.key"}]
    forwarder_mounts = {m["name"]: m for m in container(spec)["volumeMounts"]}
    assert forwarder_mounts["audit-forwarder-buffer-keys"]["mountPath"] == KEYS_DIR
    app_mounts = {m["name"] for m in container(spec, "app")["volumeMounts"]}
    assert "audit-forwarder-buffer-keys" not in app_mounts
    check_config(mount_pod_files(objects, spec, tmp_path / "pod", CLUSTER))


def test_no_keys_means_a_clear_buffer_and_no_volume(chart: helm.Chart) -> None:
    """By default nothing is encrypted: no encryption key in config.yaml, no keys volume."""
    objects = render(chart, CHAINLOOP)
    assert "encryption" not in daemon_config(objects)["buffer"]
    assert "audit-forwarder-buffer-keys" not in {v["name"] for v in pod_spec(objects)["volumes"]}


def test_a_moved_mount_path_moves_the_files(chart: helm.Chart, tmp_path: Path) -> None:
    """encryption.mountPath is where the keys are mounted and what config.yaml names."""
    values = encrypted(keys=[{"id": "k1", "secretKey": "k1.key"}], mountPath="/keys/buffer")
    objects = render(chart, values)
    assert daemon_config(objects)["buffer"]["encryption"]["keys"][0]["file"] == (
        "/keys/buffer/k1.key"
    )
    daemon_accepts(objects, tmp_path, CLUSTER)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                **CHAINLOOP,
                "config": {"buffer": {"encryption": {"keys": [{"id": "k1", "secretKey": "k"}]}}},
            },
            "config.buffer.encryption.keys are listed but config.buffer.encryption.existingSecret"
            " is not set",
        ),
        (
            encrypted(),
            "config.buffer.encryption: existingSecret or active is set but keys is empty",
        ),
        (
            encrypted(keys=[{"id": "k1", "secretKey": "k1.key"}], active="k9"),
            "config.buffer.encryption.active: k9 is not the id of a key",
        ),
        (
            encrypted(keys=[{"id": "k1", "secretKey": "a"}, {"id": "k2", "secretKey": "b"}]),
            "config.buffer.encryption.active: with several keys (k1, k2), name the one",
        ),
        (
            encrypted(
                keys=[{"id": "k1", "secretKey": "a"}, {"id": "k1", "secretKey": "b"}], active="k1"
            ),
            "config.buffer.encryption.keys: the id k1 is listed twice",
        ),
        (
            encrypted(
                keys=[{"id": "k1", "secretKey": "a"}, {"id": "k2", "secretKey": "a"}], active="k1"
            ),
            "config.buffer.encryption.keys: the secretKey a is listed twice",
        ),
        (
            encrypted(keys=[{"id": "k1", "secretKey": "a"}], mountPath="/var/lib/audit-forwarder"),
            "config.buffer.encryption.mountPath (/var/lib/audit-forwarder) overlaps the buffer",
        ),
        (
            encrypted(keys=[{"id": "k1", "secretKey": "a"}], mountPath="/etc/audit-forwarder"),
            "config.buffer.encryption.mountPath (/etc/audit-forwarder) overlaps the",
        ),
    ],
)
def test_unusable_encryption_values_fail_at_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """Encryption asked for without a Secret, or with inconsistent keys, fails naming the keys."""
    assert message in render_error(chart, values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (encrypted(keys=[{"id": "k1"}]), "missing property 'secretKey'"),
        (encrypted(keys=[{"id": "k1", "secretKey": "../../etc/shadow"}]), "/keys/0/secretKey"),
        (encrypted(keys=[{"id": "k 1", "secretKey": "k1.key"}]), "/keys/0/id"),
        (encrypted(keys=[{"id": "k1", "file": "/etc/k1.key"}]), "'file' not allowed"),
        (encrypted(keyFile="/etc/k1.key"), "'keyFile' not allowed"),
        (encrypted(keys={"id": "k1", "secretKey": "k1.key"}), "/encryption/keys"),
        (encrypted(existingSecret="Audit_Keys"), "/encryption/existingSecret"),
        (encrypted(mountPath="/etc/keys:ro"), "/encryption/mountPath"),
        (encrypted(mountPath="/k\n  hostPath: {path: /}"), "/encryption/mountPath"),
        (encrypted(active="k1\n"), "/encryption/active"),
    ],
)
def test_schema_rejects_bad_encryption_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    """The daemon's own form, path tricks and wrong types in encryption values are schema errors."""
    assert complaint in schema_error(chart, values)
