"""Installing the chart: default values, the image, resource names, labels, Chainloop's layout."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHAINLOOP,
    CHART,
    daemon_accepts,
    daemon_config,
    hooks,
    notes,
    of_kind,
    one,
    render,
    render_files,
    validate_manifests,
)


def test_defaults_render_only_notes_asking_for_forwarders(chart: helm.Chart) -> None:
    """With the default values nothing is deployed and NOTES say what to add and build."""
    rendered = chart.render({}, name="rel", namespace="audit")
    manifests = {path: text for path, text in rendered.items() if not path.endswith("NOTES.txt")}
    assert all(not text.strip() for text in manifests.values()), manifests
    [text] = [text for path, text in rendered.items() if path.endswith("NOTES.txt")]
    assert "NOTHING WAS DEPLOYED. auditLogForwarders is empty" in text
    assert "    - kind: webhook\n      uri: https://webhook.site" in text
    assert "docker build -t REGISTRY/audit-forwarder:1.0.0 ." in text
    assert "docker push REGISTRY/audit-forwarder:1.0.0" in text


@pytest.mark.parametrize("mode", ["standalone", "sidecar", "daemonset"])
def test_lint_passes_with_default_values(mode: str) -> None:
    """helm lint --strict (what chart-testing runs) is clean with the defaults, in every mode."""
    report = helm.lint(CHART, {"mode": mode}, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_missing_image_fails_with_build_instructions(chart: helm.Chart) -> None:
    """With forwarders but no image.repository the render fails and says how to build one."""
    with pytest.raises(helm.HelmRenderError) as failure:
        chart.render(CHAINLOOP, name="rel", namespace="audit")
    message = str(failure.value)
    assert "image.repository is not set: no public audit-forwarder image is published" in message
    assert "docker build -t REGISTRY/audit-forwarder:1.0.0 ." in message
    assert "docker push REGISTRY/audit-forwarder:1.0.0" in message
    assert "set image.repository=REGISTRY/audit-forwarder" in message


def test_image_reference_from_registry_repository_tag_and_digest(chart: helm.Chart) -> None:
    """registry/repository:tag, and @digest in place of the tag when one is given."""
    image = {"registry": "registry.example.com", "repository": "sec/audit-forwarder"}
    objects = render(chart, {**CHAINLOOP, "image": {**image, "tag": "1.0.0-rc1"}})
    [forwarder] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert forwarder["image"] == "registry.example.com/sec/audit-forwarder:1.0.0-rc1"
    digest = "sha256:" + "a" * 64
    objects = render(chart, {**CHAINLOOP, "image": {**image, "digest": digest}})
    [forwarder] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert forwarder["image"] == f"registry.example.com/sec/audit-forwarder@{digest}"


@pytest.mark.parametrize(
    ("release", "overrides", "expected"),
    [
        ("audit", {}, "audit"),
        ("audit-forwarder", {}, "audit-forwarder"),
        ("prod-audit-forwarder", {}, "prod-audit-forwarder"),
        ("auditing", {}, "auditing-audit-forwarder"),
        ("rel", {}, "rel-audit-forwarder"),
        ("audit", {"fullnameOverride": "siem-relay"}, "siem-relay"),
        ("siem", {"nameOverride": "siem-relay"}, "siem"),
    ],
)
def test_resource_names_follow_the_release_name(
    chart: helm.Chart, release: str, overrides: dict[str, Any], expected: str
) -> None:
    """`helm install audit` names everything `audit`; fullnameOverride wins; else release-chart."""
    objects = render(chart, {**CHAINLOOP, **overrides}, name=release)
    validate_manifests(objects)
    for obj in objects:
        if obj in hooks(objects):
            assert obj["metadata"]["name"] == f"{expected}-test"
        else:
            assert obj["metadata"]["name"] == expected, obj["kind"]
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    ]
    assert claims == [expected]


@pytest.mark.parametrize(
    ("mode", "workload", "component"),
    [("standalone", "Deployment", "forwarder"), ("daemonset", "DaemonSet", "node-agent")],
)
def test_component_label_names_the_role_and_selectors_stay(
    chart: helm.Chart, mode: str, workload: str, component: str
) -> None:
    """app.kubernetes.io/component is the role; the selector is still name + instance only."""
    objects = render(chart, {**CHAINLOOP, "mode": mode, "commonLabels": {"team": "security"}})
    for obj in objects:
        if obj not in hooks(objects):
            assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == component
            assert obj["metadata"]["labels"]["team"] == "security"
    spec = one(objects, workload)["spec"]
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "audit-forwarder",
        "app.kubernetes.io/instance": "rel",
    }
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    sidecar = render(chart, {**CHAINLOOP, "mode": "sidecar"})
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in sidecar} == {"sidecar"}


def test_labels_cannot_break_the_selector(chart: helm.Chart) -> None:
    """podLabels and commonLabels that name a selector label cannot change it."""
    hijack = {"app.kubernetes.io/name": "other", "app.kubernetes.io/instance": "other"}
    values = {**CHAINLOOP, "podLabels": {**hijack, "tier": "audit"}, "commonLabels": hijack}
    objects = render(chart, values)
    validate_manifests(objects)
    deployment = one(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert labels["tier"] == "audit"
    assert one(objects, "Service")["spec"]["selector"] == selector


def test_chainloop_backend_nesting_is_accepted(chart: helm.Chart, tmp_path: Path) -> None:
    """Chainloop's `backend.auditLogForwarders` renders exactly like the top-level list."""
    nested = render(chart, {"backend": CHAINLOOP})
    validate_manifests(nested)
    top_level = render(chart, CHAINLOOP)
    assert daemon_config(nested) == daemon_config(top_level)
    assert one(nested, "Secret") == one(top_level, "Secret")
    assert "OK (1 forwarder(s): webhook-0)" in daemon_accepts(nested, tmp_path)
    assert "webhook-0: POST https://webhook.site" in notes(chart, {"backend": CHAINLOOP})


def test_packaged_chart_ships_the_test_hook_but_not_the_rule_tests(tmp_path: Path) -> None:
    """`helm package` keeps templates/tests/ (the helm test pod) and drops the promtool tests."""
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as packaged:
        names = set(packaged.getnames())
    assert "audit-forwarder/templates/tests/ingest-test.yaml" in names
    assert "audit-forwarder/tests/rules-test.yaml" not in names
    with helm.Chart.load(archive) as loaded:
        assert hooks(render(loaded, CHAINLOOP))


def test_extra_objects_render_with_tpl_in_every_case(chart: helm.Chart) -> None:
    """extraObjects (objects or strings) go through tpl, with or without forwarders."""
    values: dict[str, Any] = {
        "extraObjects": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": '{{ include "audit-forwarder.fullname" . }}-extra'},
                "data": {"namespace": "{{ .Release.Namespace }}"},
            },
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-ca\n"
            "stringData:\n  ca.crt: '-----BEGIN CERTIFICATE-----'\n",
        ]
    }
    for extra in (values, {**CHAINLOOP, **values}, {**CHAINLOOP, **values, "mode": "sidecar"}):
        objects = render(chart, extra)
        validate_manifests(objects)
        config_maps = {o["metadata"]["name"]: o for o in of_kind(objects, "ConfigMap")}
        assert config_maps["rel-audit-forwarder-extra"]["data"] == {"namespace": "audit"}
        assert "rel-ca" in {o["metadata"]["name"] for o in of_kind(objects, "Secret")}
    files = render_files(chart, values)
    assert [path for path, text in files.items() if text.strip() and "NOTES" not in path] == [
        "audit-forwarder/templates/extra-objects.yaml"
    ]
