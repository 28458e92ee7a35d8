"""The chart's values: metadata, lint, documentation, a schema matching the daemon's models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

import helm_python as helm
import pytest
import yaml
from pydantic import BaseModel

from forwarder import __version__
from forwarder.config.settings import (
    BufferConfig,
    DeliveryConfig,
    IngestConfig,
    LoggingConfig,
    Settings,
)
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from tests.deploy.chart_support import (
    CHAINLOOP,
    CHART,
    CHART_MANAGED,
    IMAGE,
    SECRET,
    aliases,
    render_error,
    resolve,
    schema_error,
    values_schema,
    with_forwarder,
)


def test_chart_metadata_matches_the_package() -> None:
    """Chart.yaml is apiVersion v2, version 0.1.0, appVersion the daemon's version."""
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert metadata["apiVersion"] == "v2"
    assert metadata["version"] == "0.1.0"
    assert metadata["appVersion"] == __version__ == "1.0.0"


@pytest.mark.parametrize("mode", ["standalone", "sidecar", "daemonset"])
def test_lint_is_clean(mode: str) -> None:
    """helm lint --strict for Kubernetes 1.30 reports nothing above info, in every mode."""
    monitors = {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}
    # Every kind of forwarder, and the key mounts of integrity and buffer encryption.
    chained = {"mode": "chain", "signingKeyFile": "/etc/audit-forwarder/signing/siem.key"}
    nats = {"kind": "nats", "servers": ["nats://nats:4222"], "integrity": chained}
    encryption = {"existingSecret": "keys", "keys": [{"id": "k1", "secretKey": "k1.key"}]}
    values = {
        "auditLogForwarders": [*CHAINLOOP["auditLogForwarders"], nats],
        "integrity": {"signingKeys": {"existingSecret": "audit-signing"}},
        "config": {"buffer": {"encryption": encryption}},
        "mode": mode,
        "image": {"repository": IMAGE},
        "networkPolicy": {"enabled": True},
        "metrics": {"monitoringApi": "force", **monitors},
    }
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_values_key_is_documented() -> None:
    """Each key of values.yaml has a `## @param` comment, and every @param names a real key."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    documented = {
        line.split()[2] for line in text.splitlines() if line.lstrip().startswith("## @param ")
    }

    def paths(value: Any, prefix: str = "") -> Iterator[str]:
        for key, item in value.items():
            path = f"{prefix}{key}"
            yield path
            if isinstance(item, dict) and item and path not in documented:
                yield from paths(item, f"{path}.")

    all_paths = set(paths(yaml.safe_load(text)))
    leaves = {p for p in all_paths if not any(other.startswith(f"{p}.") for other in all_paths)}
    assert sorted(leaves - documented) == []
    assert sorted(documented - all_paths) == []


def test_readme_lists_every_value() -> None:
    """The chart README's Parameters tables hold exactly the `## @param` keys of values.yaml."""
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    params = {
        line.split()[2]
        for line in values_text.splitlines()
        if line.lstrip().startswith("## @param ")
    }
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    parameters = readme[readme.index("## Parameters") :]
    rows = {line.split("`")[1] for line in parameters.splitlines() if line.startswith("| `")}
    assert sorted(params - rows) == []
    assert sorted(rows - params) == []


def test_schema_covers_every_daemon_option() -> None:
    """values.schema.json knows exactly the daemon's keys, minus those the chart manages."""
    schema = values_schema()
    forwarder = schema["definitions"]["webhookForwarder"]
    config = schema["properties"]["config"]["properties"]

    def keys(node: dict[str, Any]) -> set[str]:
        node = resolve(schema, node)
        assert node["additionalProperties"] is False
        return set(node["properties"])

    def expected(model: type[BaseModel], section: str) -> set[str]:
        managed, added = CHART_MANAGED.get(section, (set(), set()))
        return aliases(model) - managed | added

    assert keys(forwarder) == expected(WebhookForwarderConfig, "forwarder")
    for name, field in WebhookForwarderConfig.model_fields.items():
        node = resolve(schema, forwarder["properties"].get(field.alias or name, {}))
        nested, *_ = get_args(field.annotation) or (field.annotation,)
        if node.get("type") == "array":
            node = node["items"]
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            assert keys(node) == aliases(nested), field.alias
    assert keys(config["ingest"]) == expected(IngestConfig, "ingest")
    assert keys(config["buffer"]) == expected(BufferConfig, "buffer")
    assert keys(config["logging"]) == aliases(LoggingConfig)
    assert keys(config["delivery"]) == aliases(DeliveryConfig)
    # metrics is the chart's `metrics.port`; the forwarders are top-level values.
    assert set(config) | {"metrics", "auditLogForwarders"} == aliases(Settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            with_forwarder(token=SECRET, tokenSecretRef={"name": "s", "key": "k"}),
            "auditLogForwarders[0]: set token or tokenSecretRef, not both",
        ),
        (
            {
                **CHAINLOOP,
                "config": {"ingest": {"token": "t", "tokenSecretRef": {"name": "s", "key": "k"}}},
            },
            "config.ingest: set token or tokenSecretRef, not both",
        ),
        (
            {
                **CHAINLOOP,
                "config": {"shutdownGraceSeconds": 30},
                "terminationGracePeriodSeconds": 30,
            },
            "terminationGracePeriodSeconds must be greater than config.shutdownGraceSeconds",
        ),
        (
            {**CHAINLOOP, "config": {"ingest": {"port": None}}},
            "standalone mode serves ingest through its Service",
        ),
        (
            {**CHAINLOOP, "service": {"nodePorts": {"ingest": 30686}}},
            "service.nodePorts: a ClusterIP Service has no node ports",
        ),
        (
            {**CHAINLOOP, "networkPolicy": {"enabled": True, "egress": {"restrict": True}}},
            "networkPolicy.egress.restrict: with no networkPolicy.egress.rules",
        ),
        (
            {**CHAINLOOP, "backend": CHAINLOOP},
            "auditLogForwarders and backend.auditLogForwarders are both set",
        ),
    ],
)
def test_contradictory_values_fail_at_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """Values that cannot work fail at render time with a message naming the keys."""
    assert message in render_error(chart, values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({**CHAINLOOP, "persistance": {"enabled": False}}, "'persistance' not allowed"),
        (with_forwarder(urii="https://x.example"), "'urii' not allowed"),
        ({**CHAINLOOP, "config": {"ingest": {"tokne": "x"}}}, "'tokne' not allowed"),
        (with_forwarder(retry={"maxBackofSeconds": 5}), "'maxBackofSeconds' not allowed"),
        (with_forwarder(tokenFile="/etc/token"), "'tokenFile' not allowed"),
        ({**CHAINLOOP, "metrics": {"serviceMonitr": {}}}, "'serviceMonitr' not allowed"),
        ({**CHAINLOOP, "livenessProbe": {"periodSecond": 5}}, "'periodSecond' not allowed"),
        ({**CHAINLOOP, "networkPolicy": {"ingestFrom": [{"podSelectr": {}}]}}, "'podSelectr'"),
        ({**CHAINLOOP, "backend": {**CHAINLOOP, "controlplane": {}}}, "'controlplane'"),
        (
            {**CHAINLOOP, "metrics": {"serviceMonitor": {"relabeling": []}}},
            "'relabeling' not allowed",
        ),
    ],
)
def test_schema_rejects_typos(chart: helm.Chart, values: dict[str, Any], complaint: str) -> None:
    """An unknown key anywhere in the values is a schema error naming the key."""
    assert complaint in schema_error(chart, values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({**CHAINLOOP, "persistence": {"enabled": "yes"}}, "/persistence/enabled"),
        (with_forwarder(timeoutSeconds="5s"), "/auditLogForwarders/0/timeoutSeconds"),
        (with_forwarder(method="GET"), "/auditLogForwarders/0/method"),
        ({"auditLogForwarders": [{"kind": "kafka", "uri": "https://x.example"}]}, "/kind"),
        ({"auditLogForwarders": [{"kind": "webhook"}]}, "missing property 'uri'"),
        ({**CHAINLOOP, "config": {"ingest": {"port": "8686"}}}, "/config/ingest/port"),
        ({**CHAINLOOP, "mode": "sidecars"}, "/mode"),
        (with_forwarder(tokenSecretRef={"name": "s"}), "missing property 'key'"),
        (
            with_forwarder(tokenSecretRef={"name": "s\n  optional: true", "key": "k"}),
            "/auditLogForwarders/0/tokenSecretRef/name",
        ),
        (
            {**CHAINLOOP, "config": {"ingest": {"tokenSecretRef": {"name": "s", "key": "../k"}}}},
            "/config/ingest/tokenSecretRef/key",
        ),
        ({**CHAINLOOP, "service": {"nodePorts": {"ingest": 8686}}}, "/service/nodePorts/ingest"),
        ({**CHAINLOOP, "metrics": {"monitoringApi": "always"}}, "/metrics/monitoringApi"),
        ({**CHAINLOOP, "image": {"pullSecrets": [{"nam": "x"}]}}, "/image/pullSecrets/0"),
        ({"backend": {"auditLogForwarders": [{"kind": "webhook"}]}}, "missing property 'uri'"),
    ],
)
def test_schema_rejects_wrong_types(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    """A value of the wrong type or outside its allowed set is a schema error naming its path."""
    assert where in schema_error(chart, values)
