"""Values operators pass through to the pod and the Service, in every mode where they apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_support import (
    CHAINLOOP,
    container,
    daemon_accepts,
    notes,
    one,
    pod_spec,
    render,
    validate_manifests,
)

PROXY_ENV = [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}]
ENV_FROM = [{"secretRef": {"name": "proxy-settings"}}, {"configMapRef": {"name": "tuning"}}]
LIFECYCLE = {"preStop": {"sleep": {"seconds": 5}}}


@pytest.mark.parametrize(
    ("mode", "workload"), [("standalone", "Deployment"), ("daemonset", "DaemonSet")]
)
def test_pass_through_values_reach_the_pod(
    chart: helm.Chart, tmp_path: Path, mode: str, workload: str
) -> None:
    """env, envFrom, lifecycle, spread, priority, pod labels/annotations and pull secrets apply."""
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "{{ .Release.Name }}"}},
        }
    ]
    values: dict[str, Any] = {
        **CHAINLOOP,
        "mode": mode,
        "extraEnv": PROXY_ENV,
        "envFrom": ENV_FROM,
        "lifecycle": LIFECYCLE,
        "topologySpreadConstraints": spread,
        "priorityClassName": "system-node-critical",
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "podLabels": {"tier": "audit"},
        "image": {"pullSecrets": ["regcred", {"name": "mirror"}]},
        "imagePullSecrets": [{"name": "regcred"}, {"name": "legacy"}],
    }
    objects = render(chart, values)
    validate_manifests(objects)
    template = one(objects, workload)["spec"]["template"]
    spec = pod_spec(objects)
    forwarder = container(spec)
    assert forwarder["env"] == PROXY_ENV
    assert forwarder["envFrom"] == ENV_FROM
    assert forwarder["lifecycle"] == LIFECYCLE
    [constraint] = spec["topologySpreadConstraints"]
    assert constraint["labelSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "rel"}}
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}, {"name": "legacy"}]
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert "checksum/config" in template["metadata"]["annotations"]
    assert template["metadata"]["labels"]["tier"] == "audit"
    daemon_accepts(objects, tmp_path)


def test_sidecar_container_gets_the_container_values(sidecar_app: helm.Chart) -> None:
    """In an application chart the sidecar carries env, envFrom, lifecycle, probes, pull secrets."""
    forwarder_values = {
        "extraEnv": PROXY_ENV,
        "envFrom": ENV_FROM,
        "lifecycle": LIFECYCLE,
        "startupProbe": {"enabled": True},
        "image": {"pullSecrets": ["regcred"]},
    }
    objects = render(sidecar_app, {"audit-forwarder": forwarder_values})
    validate_manifests(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    forwarder = container(spec)
    assert forwarder["env"] == PROXY_ENV
    assert forwarder["envFrom"] == ENV_FROM
    assert forwarder["lifecycle"] == LIFECYCLE
    assert [p["name"] for p in forwarder["ports"]] == ["fwd-metrics"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert forwarder[probe]["httpGet"] == {"path": path, "port": "fwd-metrics"}
    assert forwarder["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "fwd-metrics"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_probes_are_full_objects_on_the_named_port(chart: helm.Chart) -> None:
    """Probe values take any Probe field; the default handler uses the port name, not the number."""
    values = {
        **CHAINLOOP,
        "metrics": {"port": 9500},
        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 30},
        "readinessProbe": {"httpGet": {"path": "/readyz", "scheme": "HTTP"}, "successThreshold": 2},
        "startupProbe": {"enabled": True, "failureThreshold": 90},
    }
    objects = render(chart, values)
    validate_manifests(objects)
    forwarder = container(pod_spec(objects))
    assert {p["name"]: p["containerPort"] for p in forwarder["ports"]}["metrics"] == 9500
    liveness = forwarder["livenessProbe"]
    assert liveness["exec"] == {"command": ["true"]}
    assert "httpGet" not in liveness
    assert liveness["periodSeconds"] == 30
    assert liveness["failureThreshold"] == 6
    readiness = forwarder["readinessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert readiness["successThreshold"] == 2
    startup = forwarder["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert startup["failureThreshold"] == 90
    assert startup["periodSeconds"] == 2
    assert "enabled" not in liveness.keys() | readiness.keys() | startup.keys()


def test_probes_can_be_disabled(chart: helm.Chart) -> None:
    """enabled=false drops a probe; the startup probe is off by default."""
    values = {
        **CHAINLOOP,
        "livenessProbe": {"enabled": False},
        "readinessProbe": {"enabled": False},
    }
    forwarder = container(pod_spec(render(chart, values)))
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & forwarder.keys()


def test_legacy_probes_values_still_apply(chart: helm.Chart) -> None:
    """The former probes.liveness / probes.readiness keys still work; NOTES say where they go."""
    legacy = {"probes": {"liveness": {"periodSeconds": 20}, "readiness": {"enabled": False}}}
    objects = render(chart, {**CHAINLOOP, **legacy})
    validate_manifests(objects)
    forwarder = container(pod_spec(objects))
    assert forwarder["livenessProbe"]["periodSeconds"] == 20
    assert forwarder["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in forwarder
    text = notes(chart, {**CHAINLOOP, **legacy})
    assert "DEPRECATED: probes.liveness / probes.readiness are read as livenessProbe" in text
    assert "DEPRECATED" not in notes(chart, CHAINLOOP)


@pytest.mark.parametrize("service_type", ["NodePort", "LoadBalancer"])
def test_node_ports_are_set_on_the_service(chart: helm.Chart, service_type: str) -> None:
    """service.nodePorts pins the node ports of a NodePort or LoadBalancer Service."""
    service_values = {"type": service_type, "nodePorts": {"ingest": 30686, "metrics": 30464}}
    objects = render(chart, {**CHAINLOOP, "service": service_values})
    validate_manifests(objects)
    service = one(objects, "Service")
    assert service["spec"]["type"] == service_type
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["ingest"]["nodePort"] == 30686
    assert ports["metrics"]["nodePort"] == 30464
    unpinned = one(render(chart, {**CHAINLOOP, "service": {"type": service_type}}), "Service")
    assert not any("nodePort" in port for port in unpinned["spec"]["ports"])


def test_daemonset_service_pins_only_the_metrics_node_port(chart: helm.Chart) -> None:
    """In daemonset mode the Service has only the metrics port, and its node port."""
    service_values = {"type": "NodePort", "nodePorts": {"metrics": 30464}}
    objects = render(chart, {**CHAINLOOP, "mode": "daemonset", "service": service_values})
    validate_manifests(objects)
    [port] = one(objects, "Service")["spec"]["ports"]
    assert (port["name"], port["nodePort"]) == ("metrics", 30464)
