"""What the chart renders for the daemon: a config check-config accepts, secrets only in Secrets."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import helm_python as helm
import trustme
import yaml

from forwarder.destinations.webhook.options import WebhookForwarderConfig
from tests.deploy.chart_support import (
    CHAINLOOP,
    SECRET,
    SECRETS_DIR,
    SIGNING_SECRET,
    aliases,
    container,
    daemon_accepts,
    daemon_config,
    kinds,
    of_kind,
    one,
    pod_spec,
    render,
    validate_manifests,
    with_forwarder,
)


def test_chainloop_example_installs_as_is(chart: helm.Chart, tmp_path: Path) -> None:
    """Chainloop's kind/uri/token/method example renders valid manifests the daemon accepts."""
    objects = render(chart, CHAINLOOP)
    validate_manifests(objects)
    assert kinds(objects) == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Pod",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    forwarder = daemon_config(objects)["auditLogForwarders"][0]
    assert forwarder == {
        "kind": "webhook",
        "uri": "https://webhook.site",
        "method": "POST",
        "tokenFile": f"{SECRETS_DIR}/forwarder-0-token",
    }
    assert "OK (1 forwarder(s): webhook-0)" in daemon_accepts(objects, tmp_path)


def test_every_forwarder_option_reaches_the_daemon(chart: helm.Chart, tmp_path: Path) -> None:
    """A forwarder using every option renders into a config check-config accepts unchanged."""
    ca = trustme.CA()
    options = {
        "name": "siem",
        "token": SECRET,
        "method": "put",
        "timeoutSeconds": 2.5,
        "retry": {
            "initialBackoffSeconds": 0.5,
            "maxBackoffSeconds": 60,
            "maxAttempts": 10,
            "maxAgeSeconds": 86400,
        },
        "enabled": True,
        "events": ["key.created", "key.deleted"],
        "excludeEvents": ["key.deleted"],
        "batch": {"maxEvents": 100, "maxBytes": 65536, "maxWaitMs": 500},
        "format": "template",
        "cloudevents": {"source": "audit", "typePrefix": "com.example."},
        "splunkHec": {"host": "h", "source": "s", "sourcetype": "_json", "index": "audit"},
        "template": '{"who": {{ data.actor }}, "what": "{{ event_type }}"}',
        "headers": {"X-Team": "platform"},
        "auth": {"type": "header", "header": "X-Api-Key", "scheme": None, "param": "token"},
        "signingSecret": SIGNING_SECRET,
        "compression": "gzip",
        "tls": {"caFile": "/etc/receiver-ca/ca.crt", "insecureSkipVerify": False},
        "responseValidators": [{"jsonPath": "$.status", "expected": ["ok"]}],
        "denyPrivateNetworks": True,
        "proxy": {"url": "http://proxy.corp:3128", "noProxy": ["internal.example"]},
        "statusPolicy": {"success": [409], "retry": ["4xx"], "deadLetter": [410]},
        "ordering": "relaxed",
        "maxInFlight": 8,
        "concurrency": "adaptive",
        "rateLimit": {"eventsPerSecond": 500, "requestsPerSecond": 20},
    }
    values = with_forwarder(**options)
    values["extraVolumes"] = [{"name": "receiver-ca", "secret": {"secretName": "receiver-ca"}}]
    values["extraVolumeMounts"] = [
        {"name": "receiver-ca", "mountPath": "/etc/receiver-ca", "readOnly": True}
    ]
    # integrity refuses format template (a receiver could not check the hash):
    # tests/deploy/test_chart_integrity.py renders it through to check-config.
    assert set(options) | {"kind", "uri", "integrity"} == aliases(WebhookForwarderConfig) - {
        "tokenFile",
        "signingSecretFile",
    }
    objects = render(chart, values)
    validate_manifests(objects)
    rendered = daemon_config(objects)["auditLogForwarders"][0]
    passed_through = {k: v for k, v in options.items() if k not in ("token", "signingSecret")}
    assert passed_through.items() <= rendered.items()
    assert rendered["signingSecretFile"] == f"{SECRETS_DIR}/forwarder-0-signing-secret"
    cluster = {"receiver-ca": {"ca.crt": ca.cert_pem.bytes().decode()}}
    assert "OK (1 forwarder(s): siem)" in daemon_accepts(objects, tmp_path, cluster)


def test_secrets_live_in_the_secret_never_in_the_configmap(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """Tokens and signing secrets go to a read-only mounted Secret; config.yaml names the files."""
    values = with_forwarder(token=SECRET, signingSecret=SIGNING_SECRET)
    values["config"] = {"ingest": {"token": "INGEST-TOKEN"}}
    objects = render(chart, values)
    validate_manifests(objects)
    config_map_text = yaml.safe_dump(one(objects, "ConfigMap"))
    for secret in (SECRET, SIGNING_SECRET, "INGEST-TOKEN"):
        assert secret not in config_map_text
        assert base64.b64encode(secret.encode()).decode() not in config_map_text
    data = one(objects, "Secret")["data"]
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == {
        "ingest-token": "INGEST-TOKEN",
        "forwarder-0-token": SECRET,
        "forwarder-0-signing-secret": SIGNING_SECRET,
    }
    config = daemon_config(objects)
    assert config["ingest"]["tokenFile"] == f"{SECRETS_DIR}/ingest-token"
    assert config["auditLogForwarders"][0]["tokenFile"] == f"{SECRETS_DIR}/forwarder-0-token"
    spec = pod_spec(objects)
    mount = next(m for m in container(spec)["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
    assert mount["readOnly"] is True
    daemon_accepts(objects, tmp_path)


def test_secret_refs_use_the_existing_secret(chart: helm.Chart, tmp_path: Path) -> None:
    """tokenSecretRef and signingSecretRef project existing Secrets' keys; no Secret is created."""
    values = with_forwarder(
        tokenSecretRef={"name": "siem-credentials", "key": "token"},
        signingSecretRef={"name": "siem-credentials", "key": "signing"},
    )
    values["config"] = {"ingest": {"tokenSecretRef": {"name": "ingest", "key": "bearer"}}}
    objects = render(chart, values)
    validate_manifests(objects)
    assert of_kind(objects, "Secret") == []
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-secrets")
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "ingest", "items": [{"key": "bearer", "path": "ingest-token"}]}},
        {
            "secret": {
                "name": "siem-credentials",
                "items": [{"key": "token", "path": "forwarder-0-token"}],
            }
        },
        {
            "secret": {
                "name": "siem-credentials",
                "items": [{"key": "signing", "path": "forwarder-0-signing-secret"}],
            }
        },
    ]
    cluster = {
        "siem-credentials": {"token": "from-the-cluster", "signing": SIGNING_SECRET},
        "ingest": {"bearer": "ingest-from-the-cluster"},
    }
    daemon_accepts(objects, tmp_path, cluster)


def test_checksums_roll_the_pods_when_config_or_secrets_change(chart: helm.Chart) -> None:
    """checksum/config follows config.yaml, checksum/secret follows the Secret's data."""

    def checksums(values: dict[str, Any]) -> dict[str, str]:
        deployment = one(render(chart, values), "Deployment")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations

    base = checksums(CHAINLOOP)
    debug = checksums({**CHAINLOOP, "config": {"logging": {"level": "debug"}}})
    assert debug["checksum/config"] != base["checksum/config"]
    assert debug["checksum/secret"] == base["checksum/secret"]
    rotated = checksums(with_forwarder(token="ROTATED", method="POST"))
    assert rotated["checksum/config"] == base["checksum/config"]
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert checksums(CHAINLOOP) == base


def test_config_is_a_directory_mount_so_updates_reach_the_pod(chart: helm.Chart) -> None:
    """The ConfigMap is mounted as a directory (no subPath), so the daemon can reload it live."""
    objects = render(chart, CHAINLOOP)
    mounts = container(pod_spec(objects))["volumeMounts"]
    (config_mount,) = [m for m in mounts if m["name"] == "audit-forwarder-config"]
    assert config_mount["mountPath"] == "/etc/audit-forwarder/config"
    assert "subPath" not in config_mount
    assert config_mount["readOnly"] is True
    assert container(pod_spec(objects))["args"][-1].startswith(config_mount["mountPath"] + "/")


def test_roll_on_config_change_can_be_left_to_live_reload(chart: helm.Chart) -> None:
    """rollOnConfigChange=false drops the checksum annotations; the default keeps them."""
    objects = render(chart, {**CHAINLOOP, "rollOnConfigChange": False})
    validate_manifests(objects)
    deployment = one(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [name for name in annotations if name.startswith("checksum/")]
    default = one(render(chart, CHAINLOOP), "Deployment")
    assert "checksum/config" in default["spec"]["template"]["metadata"]["annotations"]


def test_delivery_process_is_passed_on_only_when_set(chart: helm.Chart, tmp_path: Path) -> None:
    """config.delivery.process reaches config.yaml when set; unset, the daemon's default holds."""
    assert "delivery" not in daemon_config(render(chart, CHAINLOOP))
    objects = render(chart, {**CHAINLOOP, "config": {"delivery": {"process": "separate"}}})
    assert daemon_config(objects)["delivery"] == {"process": "separate"}
    daemon_accepts(objects, tmp_path)
