"""ServiceMonitor, PodMonitor, PrometheusRule: rendered only where the cluster has the API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHAINLOOP,
    CHART,
    OPERATOR_KINDS,
    kinds,
    notes,
    one,
    render,
    validate_manifests,
)

BOTH = {
    "serviceMonitor": {"enabled": True},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}


def test_monitors_are_skipped_on_a_cluster_without_the_operator(chart: helm.Chart) -> None:
    """Without monitoring.coreos.com/v1 no monitor is rendered and NOTES say why and what to do."""
    values = {**CHAINLOOP, "metrics": BOTH}
    objects = render(chart, values, api_versions=())
    validate_manifests(objects)
    assert not set(kinds(objects)) & OPERATOR_KINDS
    text = notes(chart, values, api_versions=())
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert (
            f"NOTE: no {kind} was rendered: the cluster does not serve monitoring.coreos.com/v1"
            in text
        )
    assert "metrics.monitoringApi=force" in text
    assert "NOTE: no" not in notes(chart, values)


def test_monitors_render_where_the_cluster_serves_them(chart: helm.Chart) -> None:
    """Each kind is gated on its own API: a cluster with only ServiceMonitor gets only that."""
    values = {**CHAINLOOP, "metrics": BOTH}
    assert set(kinds(render(chart, values))) >= OPERATOR_KINDS
    only = ["monitoring.coreos.com/v1/ServiceMonitor"]
    partial = set(kinds(render(chart, values, api_versions=only)))
    assert "ServiceMonitor" in partial
    assert not {"PodMonitor", "PrometheusRule"} & partial


def test_force_renders_monitors_without_the_api(chart: helm.Chart) -> None:
    """metrics.monitoringApi=force renders them anyway (helm template for GitOps)."""
    values = {**CHAINLOOP, "metrics": {**BOTH, "monitoringApi": "force"}}
    objects = render(chart, values, api_versions=())
    validate_manifests(objects)
    assert set(kinds(objects)) >= OPERATOR_KINDS
    assert "NOTE: no" not in notes(chart, values, api_versions=())


@pytest.mark.parametrize(
    ("key", "kind", "endpoints"),
    [
        ("serviceMonitor", "ServiceMonitor", "endpoints"),
        ("podMonitor", "PodMonitor", "podMetricsEndpoints"),
    ],
)
def test_monitor_options_reach_the_object(
    chart: helm.Chart, key: str, kind: str, endpoints: str
) -> None:
    """additionalLabels (and its alias labels), namespace and the endpoint options are rendered."""
    relabelings = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}]
    tls = {"insecureSkipVerify": False, "serverName": "audit-forwarder.audit.svc"}
    monitor: dict[str, Any] = {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack", "team": "new"},
        "labels": {"team": "old", "legacy": "yes"},
        "namespace": "monitoring",
        "interval": "15s",
        "scrapeTimeout": "5s",
        "honorLabels": True,
        "relabelings": relabelings,
        "metricRelabelings": drop,
        "scheme": "https",
        "tlsConfig": tls,
    }
    objects = render(chart, {**CHAINLOOP, "metrics": {key: monitor}})
    validate_manifests(objects)
    rendered = one(objects, kind)
    metadata = rendered["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["release"] == "kube-prometheus-stack"
    assert metadata["labels"]["team"] == "new"
    assert metadata["labels"]["legacy"] == "yes"
    assert metadata["labels"]["app.kubernetes.io/instance"] == "rel"
    # From its own namespace it still selects the release's namespace.
    assert rendered["spec"]["namespaceSelector"] == {"matchNames": ["audit"]}
    [endpoint] = rendered["spec"][endpoints]
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "5s",
        "honorLabels": True,
        "scheme": "https",
        "tlsConfig": tls,
        "relabelings": relabelings,
        "metricRelabelings": drop,
    }


def test_monitor_defaults_are_minimal(chart: helm.Chart) -> None:
    """By default: in the release namespace, an endpoint with port, path, interval and timeout."""
    objects = render(chart, {**CHAINLOOP, "metrics": BOTH})
    for kind, endpoints in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")):
        rendered = one(objects, kind)
        assert rendered["metadata"]["namespace"] == "audit"
        [endpoint] = rendered["spec"][endpoints]
        assert endpoint == {
            "port": "metrics",
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
        }


@pytest.mark.parametrize(
    ("api_versions", "mode", "expected"),
    [
        ((), "auto", ""),
        (("monitoring.coreos.com/v1/PrometheusRule",), "auto", "true"),
        (("monitoring.coreos.com/v1/ServiceMonitor",), "auto", ""),
        ((), "force", "true"),
    ],
)
def test_gate_template_takes_the_kind(
    tmp_path: Path, api_versions: tuple[str, ...], mode: str, expected: str
) -> None:
    """`audit-forwarder.monitoringApiAvailable` answers for any kind, e.g. PrometheusRule."""
    copy = tmp_path / "audit-forwarder"
    shutil.copytree(CHART, copy)
    (copy / "templates" / "gate-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: gate\ndata:\n"
        '  rule: {{ include "audit-forwarder.monitoringApiAvailable"'
        ' (dict "root" $ "kind" "PrometheusRule") | quote }}\n',
        encoding="utf-8",
    )
    with helm.Chart.load(copy) as probe_chart:
        values = {"metrics": {"monitoringApi": mode}}
        gate = one(render(probe_chart, values, api_versions=api_versions), "ConfigMap")
    assert gate["data"]["rule"] == expected
