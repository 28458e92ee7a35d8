"""The Grafana dashboard: a valid dashboard JSON, one file in two places, a ConfigMap in the chart.

Whether its queries return data is proven against a real Prometheus in
tests/e2e/test_dashboard_queries.py; here the JSON's structure (what Grafana
needs to load it) and the ConfigMap the chart renders with Helm's engine.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHAINLOOP,
    CHART,
    IMAGE,
    ROOT,
    Manifests,
    of_kind,
    render,
    validate_manifests,
)

STABLE = ROOT / "dashboards" / "audit-forwarder.json"
IN_CHART = CHART / "dashboards" / "audit-forwarder.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Variables Grafana itself provides.
BUILTIN = {"__rate_interval", "__interval", "__range", "__range_s"}
CONSTANTS = ("max_bytes", "buffer_alert_ratio", "oldest_pending_alert_seconds")


def stable_dashboard() -> dict[str, Any]:
    """The dashboard at its stable path."""
    loaded: dict[str, Any] = json.loads(STABLE.read_text(encoding="utf-8"))
    return loaded


def dashboard_config_maps(objects: Manifests) -> Manifests:
    """The rendered ConfigMaps that hold a dashboard."""
    return [m for m in of_kind(objects, "ConfigMap") if "audit-forwarder.json" in m["data"]]


def rendered_dashboard(chart: helm.Chart, values: dict[str, Any]) -> dict[str, Any]:
    """The dashboard JSON of the one dashboard ConfigMap ``values`` render."""
    (config_map,) = dashboard_config_maps(render(chart, values))
    loaded: dict[str, Any] = json.loads(config_map["data"]["audit-forwarder.json"])
    return loaded


def constants(board: dict[str, Any]) -> dict[str, str]:
    """The constant variables' values (query, current and the one option agree)."""
    found = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "constant":
            value = variable["query"]
            assert variable["current"]["value"] == variable["current"]["text"] == value
            assert [o["value"] for o in variable["options"]] == [value]
            found[variable["name"]] = value
    return found


def enabled(**values: Any) -> dict[str, Any]:
    """Chainloop's values with the dashboard enabled, plus ``values``."""
    dashboards = {"enabled": True, **values.pop("dashboards", {})}
    return {**CHAINLOOP, **values, "dashboards": dashboards}


def test_the_dashboard_has_what_grafana_needs_to_load_it() -> None:
    """Title, uid, schemaVersion, templating, panels with id/type/gridPos/datasource/targets."""
    board = stable_dashboard()
    assert board["title"] == "audit-forwarder"
    assert board["uid"] == "audit-forwarder"
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36  # datasource references as objects
    assert "id" not in board or board["id"] is None  # Grafana assigns it on import
    panels = board["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert isinstance(panel["id"], int)
        assert panel["type"] in {"row", "timeseries", "stat"}, panel["type"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            assert panel["gridPos"]["w"] == 24
            continue
        assert panel["title"]
        assert panel["description"]
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip()
            assert "legendFormat" in target


def test_panels_fit_the_grid_and_never_overlap() -> None:
    """Every panel lies within Grafana's 24 columns and no two gridPos rectangles overlap."""
    placed = [(panel["title"], panel["gridPos"]) for panel in stable_dashboard()["panels"]]
    for title, grid in placed:
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, title
    for (first, a), (second, b) in itertools.combinations(placed, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, f"{first!r} overlaps {second!r}"


def test_the_variables_are_the_usual_ones_and_every_reference_is_defined() -> None:
    """datasource, namespace, pod, instance, forwarder (multi, All = .*); no undefined $name."""
    board = stable_dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "instance", "forwarder"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["query"].startswith("label_values(")
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"
    assert set(constants(board)) == set(CONSTANTS)
    texts = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    texts += [v["query"] for v in variables.values() if v["type"] == "query"]
    for text in texts:
        for name in re.findall(r"\$\{?(\w+)", text):
            assert name in variables or name in BUILTIN, f"${name} is not defined: {text}"


def test_every_query_of_a_per_forwarder_metric_follows_the_forwarder_variable() -> None:
    """A metric labelled forwarder is always read with forwarder=~"$forwarder"."""
    labelled = re.compile(
        r"audit_forwarder_(pending_events|oldest_pending_age_seconds|events_delivered_total"
        r"|events_dead_lettered_total|delivery_attempts_total|delivery_duration_seconds_bucket"
        r"|last_success_timestamp_seconds|ingest_to_delivery_seconds_bucket)\{([^}]*)\}"
    )
    reads = 0
    for panel in stable_dashboard()["panels"]:
        for target in panel.get("targets", []):
            for metric, matchers in labelled.findall(target["expr"]):
                reads += 1
                assert 'forwarder=~"$forwarder"' in matchers, f"{panel['title']}: {metric}"
    assert reads >= 8


def test_the_chart_copy_is_the_file_at_the_stable_path() -> None:
    """charts/audit-forwarder/dashboards/ and dashboards/ hold byte-identical JSON."""
    assert IN_CHART.read_bytes() == STABLE.read_bytes(), (
        "the two copies differ: edit one and copy it over the other"
        " (cp charts/audit-forwarder/dashboards/audit-forwarder.json dashboards/)"
    )


@pytest.mark.parametrize("mode", ["standalone", "sidecar", "daemonset"])
def test_the_configmap_is_rendered_for_the_grafana_sidecar(chart: helm.Chart, mode: str) -> None:
    """dashboards.enabled renders a valid ConfigMap labelled grafana_dashboard "1" in each mode."""
    objects = render(chart, enabled(mode=mode))
    validate_manifests(objects)
    (config_map,) = dashboard_config_maps(objects)
    metadata = config_map["metadata"]
    assert metadata["name"] == "rel-audit-forwarder-dashboard"
    assert metadata["namespace"] == "audit"
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["labels"]["app.kubernetes.io/instance"] == "rel"
    assert "annotations" not in metadata
    board = json.loads(config_map["data"]["audit-forwarder.json"])
    stable = stable_dashboard()
    # With the default values, only maxBytes (unset) is drawn differently: not at all.
    assert board == stable
    assert constants(board)["max_bytes"] == "0"


def test_the_lines_drawn_follow_the_chart_values(chart: helm.Chart) -> None:
    """maxBytes, bufferUsageRatio and oldestPendingAgeSeconds set the dashboard's constants."""
    board = rendered_dashboard(
        chart,
        enabled(
            config={"buffer": {"maxBytes": 10 * 1024**3}},
            metrics={"prometheusRule": {"bufferUsageRatio": 0.9, "oldestPendingAgeSeconds": 120}},
        ),
    )
    assert constants(board) == {
        "max_bytes": str(10 * 1024**3),
        "buffer_alert_ratio": "0.9",
        "oldest_pending_alert_seconds": "120",
    }
    stable = stable_dashboard()
    assert board["panels"] == stable["panels"]
    assert {k: v for k, v in board.items() if k != "templating"} == {
        k: v for k, v in stable.items() if k != "templating"
    }


def test_labels_annotations_and_namespace_are_values(chart: helm.Chart) -> None:
    """Labels merge over the sidecar's default (null drops it); annotations; another namespace."""
    values = enabled(
        dashboards={
            "labels": {"grafana_dashboard": None, "dashboards": "audit"},
            "annotations": {"grafana_folder": "Audit"},
            "namespace": "monitoring",
        }
    )
    objects = render(chart, values)
    validate_manifests(objects)
    (config_map,) = dashboard_config_maps(objects)
    metadata = config_map["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["dashboards"] == "audit"
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["annotations"] == {"grafana_folder": "Audit"}


def test_no_dashboard_unless_enabled_and_configured(chart: helm.Chart) -> None:
    """Off by default; with no forwarder the chart renders nothing, the dashboard included."""
    assert dashboard_config_maps(render(chart, CHAINLOOP)) == []
    assert dashboard_config_maps(render(chart, {"dashboards": {"enabled": True}})) == []


def test_lint_is_clean_with_the_dashboard() -> None:
    """helm lint --strict reports nothing above info with the dashboard enabled."""
    values = {**enabled(), "image": {"repository": IMAGE}}
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_unknown_dashboard_keys_are_refused(chart: helm.Chart) -> None:
    """values.schema.json rejects a typo under dashboards."""
    with pytest.raises(helm.HelmValuesError, match="enable"):
        render(chart, enabled(dashboards={"enable": True}))
