"""The values files of charts/audit-forwarder/examples/: each installs, and the relay pair agrees.

Each example is rendered as `helm install <release> -n audit -f <file>`
would, linted strictly, validated against the Kubernetes schemas, and its
config.yaml (with the Secrets it names, as the cluster would hold them) is
run through the real ``check-config``. The two relay files are also checked
against each other: the node agents must reach the central release's Service
with the token its ingest expects.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHART,
    Manifests,
    daemon_accepts,
    daemon_config,
    example_values,
    kinds,
    of_kind,
    one,
    render,
    validate_manifests,
)

# Release names the files' comments install them as, and the Secrets they read.
EXAMPLES = {
    "nats.yaml": (
        "audit",
        {"audit-nats": {"password": "nats-password"}, "audit-ingest": {"token": "ingest"}},
    ),
    "relay-central.yaml": (
        "audit-central",
        {"audit-central-ingest": {"token": "relay-token"}, "siem-credentials": {"token": "siem"}},
    ),
    "relay-node.yaml": ("audit-node", {"audit-central-ingest": {"token": "relay-token"}}),
}


def test_every_example_file_is_tested() -> None:
    """Each values file in examples/ is in EXAMPLES, so none escapes the checks below."""
    assert sorted(p.name for p in (CHART / "examples").glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_installs_and_the_daemon_accepts_it(
    chart: helm.Chart, tmp_path: Path, name: str
) -> None:
    """The example lints clean, renders valid manifests, and check-config accepts its config."""
    release, cluster_secrets = EXAMPLES[name]
    values = example_values(name)
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    objects = render(chart, values, name=release)
    validate_manifests(objects)
    daemon_accepts(objects, tmp_path, cluster_secrets)


def test_nats_example_publishes_to_a_jetstream_stream(chart: helm.Chart) -> None:
    """nats.yaml: one kind nats forwarder, stream checked, password from an existing Secret."""
    objects = render(chart, example_values("nats.yaml"), name="audit")
    assert of_kind(objects, "Secret") == []
    [forwarder] = daemon_config(objects)["auditLogForwarders"]
    assert forwarder["kind"] == "nats"
    assert forwarder["stream"] == "AUDIT"
    assert forwarder["subject"] == "audit.{event_type}"
    assert forwarder["passwordFile"] == "/etc/audit-forwarder/secrets/forwarder-0-password"
    assert all(urlsplit(server).scheme == "nats" for server in forwarder["servers"])


def central_and_node(chart: helm.Chart) -> tuple[Manifests, Manifests]:
    """The central and the node releases, rendered under the names their files install them as."""
    central = render(chart, example_values("relay-central.yaml"), name="audit-central")
    return central, render(chart, example_values("relay-node.yaml"), name="audit-node")


def test_relay_node_reaches_the_central_service_with_its_token(chart: helm.Chart) -> None:
    """relay-node.yaml's forwarder targets relay-central's Service and ingest token Secret."""
    central, node = central_and_node(chart)
    assert "DaemonSet" in kinds(node)
    assert "Deployment" in kinds(central)
    [relay] = daemon_config(node)["auditLogForwarders"]
    target = urlsplit(relay["uri"])
    service = one(central, "Service")
    ingest_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "ingest")
    assert target.hostname == f"{service['metadata']['name']}.audit.svc.cluster.local"
    assert target.port == ingest_port
    assert target.path == "/v1/events"
    central_values = example_values("relay-central.yaml")
    [node_forwarder] = example_values("relay-node.yaml")["auditLogForwarders"]
    assert node_forwarder["tokenSecretRef"] == central_values["config"]["ingest"]["tokenSecretRef"]
    assert daemon_config(central)["ingest"]["tokenFile"].endswith("/ingest-token")
    assert relay["format"] == "cloudevents"
    assert relay["batch"]["maxEvents"] > 1


def test_relay_central_admits_ingest_from_the_node_agents_only(chart: helm.Chart) -> None:
    """relay-central's NetworkPolicy ingest peers select the node release's pods."""
    central, node = central_and_node(chart)
    node_labels = one(node, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    policy = one(central, "NetworkPolicy")
    ingest_rules = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(port.get("port") in ("ingest", 8686) for port in rule.get("ports", []))
    ]
    assert ingest_rules
    peers = [peer for rule in ingest_rules for peer in rule["from"]]
    selected = [
        peer
        for peer in peers
        if "podSelector" in peer
        and peer["podSelector"]["matchLabels"].items() <= node_labels.items()
    ]
    assert selected, peers
