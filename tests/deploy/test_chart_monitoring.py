"""Monitoring objects: ServiceMonitor, PodMonitor and alert rules checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import yaml

from tests.deploy.chart_support import (
    CHAINLOOP,
    CHART,
    OPERATOR_KINDS,
    one,
    render,
    validate_manifests,
)


def test_monitoring_objects_and_alert_rules(chart: helm.Chart, tmp_path: Path) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule render; promtool checks and tests the rules."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (make test-tools installs it)"
    values = {
        **CHAINLOOP,
        "config": {"buffer": {"maxBytes": 1073741824}},
        "metrics": {
            "podAnnotations": {"enabled": True},
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
    }
    objects = render(chart, values)
    validate_manifests(objects)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    assert annotations["prometheus.io/path"] == "/metrics"
    rules = one(objects, "PrometheusRule")["spec"]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts == {
        "AuditForwarderEventsDelayed",
        "AuditForwarderEventsDeadLettered",
        "AuditForwarderFailing",
        "AuditForwarderIngestRefused",
        "AuditForwarderBufferNearLimit",
        "AuditForwarderDown",
    }
    assert not [r for g in rules["groups"] for r in g["rules"] if "runbook_url" in r["annotations"]]
    (tmp_path / "audit-forwarder-rules.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    shutil.copy(CHART / "tests" / "rules-test.yaml", tmp_path / "rules-test.yaml")
    for command in (
        ["check", "rules", "audit-forwarder-rules.yaml"],
        ["test", "rules", "rules-test.yaml"],
    ):
        result = subprocess.run(
            [promtool, *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_is_off_by_default(chart: helm.Chart) -> None:
    """By default the chart needs no Prometheus Operator CRDs and adds no scrape annotations."""
    objects = render(chart, CHAINLOOP)
    assert not {obj["kind"] for obj in objects} & OPERATOR_KINDS
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"checksum/config", "checksum/secret"}


def test_every_alert_links_its_runbook_when_a_runbook_url_is_set(chart: helm.Chart) -> None:
    """metrics.prometheusRule.runbookUrl gives every alert a runbook_url with its own anchor."""
    rule = {"enabled": True, "runbookUrl": "https://runbooks.example/audit-forwarder"}
    objects = render(chart, {**CHAINLOOP, "metrics": {"prometheusRule": rule}})
    rules = [r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert len(rules) >= 5
    for alert in rules:
        expected = f"https://runbooks.example/audit-forwarder#{alert['alert'].lower()}"
        assert alert["annotations"]["runbook_url"] == expected


def test_the_down_alert_follows_the_release_or_the_given_selector(chart: helm.Chart) -> None:
    """AuditForwarderDown watches the release's job by default, or upSelector when given."""

    def down_expr(rule: dict[str, object]) -> str:
        objects = render(chart, {**CHAINLOOP, "metrics": {"prometheusRule": rule}})
        rules = [r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
        return str(next(r["expr"] for r in rules if r["alert"] == "AuditForwarderDown"))

    assert down_expr({"enabled": True}).strip() == 'absent(up{job="rel-audit-forwarder"} == 1)'
    custom = {"enabled": True, "upSelector": 'job="audit/pods"', "selector": 'namespace="audit"'}
    assert down_expr(custom).strip() == 'absent(up{job="audit/pods",namespace="audit"} == 1)'
