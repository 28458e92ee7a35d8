"""networkPolicy: who may reach ingest and metrics, egress open unless restricted."""

from __future__ import annotations

from typing import Any

import helm_python as helm

from tests.deploy.chart_support import (
    CHAINLOOP,
    Manifests,
    hooks,
    kinds,
    notes,
    of_kind,
    one,
    render,
    validate_manifests,
)

INGEST_PEERS = [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chainloop"}}},
    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "controlplane"}}},
]


def rules_by_port(policy: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The ingress peers of a NetworkPolicy, by the (named) port they are admitted to."""
    peers: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        [port] = rule["ports"]
        assert port["protocol"] == "TCP"
        peers[port["port"]] = rule["from"]
    return peers


def admits_test_pod(peers: list[dict[str, Any]], objects: Manifests) -> bool:
    """Whether one of ``peers`` selects the `helm test` pod by its labels."""
    [pod] = hooks(objects)
    labels = pod["metadata"]["labels"].items()
    return any(
        peer.keys() == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= labels
        for peer in peers
    )


def test_policy_admits_ingest_from_the_given_peers_and_metrics_from_monitoring(
    chart: helm.Chart,
) -> None:
    """Standalone: ingest from ingestFrom, metrics from the monitoring namespace; egress open."""
    values = {**CHAINLOOP, "networkPolicy": {"enabled": True, "ingestFrom": INGEST_PEERS}}
    objects = render(chart, values)
    validate_manifests(objects)
    policy = one(objects, "NetworkPolicy")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in policy["spec"]
    peers = rules_by_port(policy)
    assert set(peers) == {"ingest", "metrics"}
    assert peers["ingest"][:2] == INGEST_PEERS
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert peers["metrics"][0] == monitoring
    # The helm test pod reaches both, and only it beyond the configured peers.
    for port in ("ingest", "metrics"):
        assert admits_test_pod(peers[port], objects)
    assert len(peers["ingest"]) == 3
    assert len(peers["metrics"]) == 2
    # The named ports exist on the pods the policy selects.
    [forwarder] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert set(peers) <= {p["name"] for p in forwarder["ports"]}


def test_empty_ingest_from_means_the_release_namespace(chart: helm.Chart) -> None:
    """Without ingestFrom, ingest is open to the pods of the release's namespace only."""
    metrics_from = {
        "metricsNamespaceSelector": {"matchLabels": {"team": "observability"}},
        "metricsPodSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        "extraIngress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}],
    }
    objects = render(chart, {**CHAINLOOP, "networkPolicy": {"enabled": True, **metrics_from}})
    validate_manifests(objects)
    policy = one(objects, "NetworkPolicy")
    ingest_rule, metrics_rule, extra = policy["spec"]["ingress"]
    assert ingest_rule["from"][0] == {"podSelector": {}}
    assert metrics_rule["from"][0] == {
        "namespaceSelector": {"matchLabels": {"team": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert extra == {"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}


def test_metrics_namespace_by_name_or_every_namespace(chart: helm.Chart) -> None:
    """metricsNamespace names the scrapers' namespace; empty (and no selector) admits every one."""

    def metrics_peer(namespace: str) -> dict[str, Any]:
        values = {"enabled": True, "metricsNamespace": namespace}
        objects = render(chart, {**CHAINLOOP, "networkPolicy": values})
        validate_manifests(objects)
        peer: dict[str, Any] = rules_by_port(one(objects, "NetworkPolicy"))["metrics"][0]
        return peer

    by_name = {"matchLabels": {"kubernetes.io/metadata.name": "prometheus"}}
    assert metrics_peer("prometheus") == {"namespaceSelector": by_name}
    assert metrics_peer("") == {"namespaceSelector": {}}


def test_restricted_egress_allows_dns_and_the_given_rules(chart: helm.Chart) -> None:
    """egress.restrict adds an Egress policy: DNS plus egress.rules (the receivers)."""
    receivers = [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]
    egress = {"restrict": True, "rules": receivers}
    objects = render(chart, {**CHAINLOOP, "networkPolicy": {"enabled": True, "egress": egress}})
    validate_manifests(objects)
    spec = one(objects, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, receiver = spec["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert receiver == receivers[0]
    no_dns = {**egress, "allowDns": False}
    objects = render(chart, {**CHAINLOOP, "networkPolicy": {"enabled": True, "egress": no_dns}})
    assert one(objects, "NetworkPolicy")["spec"]["egress"] == receivers


def test_daemonset_policy_covers_metrics_only(chart: helm.Chart) -> None:
    """Daemonset mode: ingest is the node's Unix socket, so only the metrics port is admitted."""
    values = {**CHAINLOOP, "mode": "daemonset", "networkPolicy": {"enabled": True}}
    objects = render(chart, values)
    validate_manifests(objects)
    peers = rules_by_port(one(objects, "NetworkPolicy"))
    assert set(peers) == {"metrics"}
    assert admits_test_pod(peers["metrics"], objects)


def test_no_policy_by_default_or_in_sidecar_mode(chart: helm.Chart) -> None:
    """Off by default; in sidecar mode the pods are the application's, so none is rendered."""
    assert of_kind(render(chart, CHAINLOOP), "NetworkPolicy") == []
    sidecar = {**CHAINLOOP, "mode": "sidecar", "networkPolicy": {"enabled": True}}
    assert kinds(render(chart, sidecar)) == ["ConfigMap", "Secret"]


def test_policy_without_the_test_pod_admits_only_the_configured_peers(chart: helm.Chart) -> None:
    """helmTest.enabled=false leaves no test-pod peer in the policy."""
    values = {
        **CHAINLOOP,
        "helmTest": {"enabled": False},
        "networkPolicy": {"enabled": True, "ingestFrom": INGEST_PEERS},
    }
    peers = rules_by_port(one(render(chart, values), "NetworkPolicy"))
    assert peers["ingest"] == INGEST_PEERS
    assert len(peers["metrics"]) == 1


def test_notes_say_who_can_send_without_a_token(chart: helm.Chart) -> None:
    """Without an ingest token NOTES warn; with a policy they name who it admits instead."""
    assert "WARNING: config.ingest.token is not set" in notes(chart, CHAINLOOP)
    with_policy = notes(chart, {**CHAINLOOP, "networkPolicy": {"enabled": True}})
    assert "WARNING" not in with_policy
    assert "admits (every pod of namespace audit)" in with_policy
    with_token = {**CHAINLOOP, "config": {"ingest": {"token": "t"}}}
    assert "config.ingest.token is not set" not in notes(chart, with_token)
