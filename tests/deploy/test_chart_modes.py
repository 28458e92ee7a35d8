"""Deployment modes: standalone, persistence, DaemonSet node agent, and sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm

from tests.deploy.chart_support import (
    CHAINLOOP,
    IMAGE,
    check_config,
    container,
    daemon_accepts,
    daemon_config,
    kinds,
    mount_pod_files,
    of_kind,
    one,
    pod_spec,
    render,
    validate_manifests,
)


def test_standalone_is_one_recreated_pod_behind_a_service(chart: helm.Chart) -> None:
    """Standalone: 1 replica, Recreate, ingest on 0.0.0.0 behind the Service, probes, hardening."""
    values = {**CHAINLOOP, "config": {"shutdownGraceSeconds": 42.5}}
    objects = render(chart, values)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    config = daemon_config(objects)
    assert config["ingest"]["host"] == "0.0.0.0"
    assert config["ingest"]["port"] == 8686
    assert config["metrics"] == {"host": "0.0.0.0", "port": 9464}
    assert config["buffer"]["path"] == "/var/lib/audit-forwarder/buffer.db"
    service_ports = {p["name"]: p for p in one(objects, "Service")["spec"]["ports"]}
    assert service_ports["ingest"]["port"] == 8686
    assert service_ports["metrics"]["port"] == 9464
    spec = pod_spec(objects)
    forwarder = container(spec)
    assert {p["name"]: p["containerPort"] for p in forwarder["ports"]} == {
        "ingest": 8686,
        "metrics": 9464,
    }
    assert forwarder["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert forwarder["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "startupProbe" not in forwarder
    assert forwarder["args"] == ["run", "--config", "/etc/audit-forwarder/config/config.yaml"]
    assert forwarder["image"] == f"{IMAGE}:1.0.0"
    hardened = forwarder["securityContext"]
    assert hardened["runAsNonRoot"] is True
    assert hardened["runAsUser"] == 10001
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert hardened["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == 10001
    assert spec["terminationGracePeriodSeconds"] == 58
    assert spec["enableServiceLinks"] is False


def test_persistence_creates_a_claim_that_outlives_the_release(chart: helm.Chart) -> None:
    """By default the buffer is on a PVC the chart creates and helm uninstall keeps."""
    values = {**CHAINLOOP, "persistence": {"size": "5Gi", "storageClass": "fast"}}
    objects = render(chart, values)
    validate_manifests(objects)
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    buffer = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-buffer")
    assert buffer["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}


def test_persistence_uses_an_existing_claim(chart: helm.Chart) -> None:
    """persistence.existingClaim mounts that claim and creates none."""
    objects = render(chart, {**CHAINLOOP, "persistence": {"existingClaim": "audit-buffer"}})
    validate_manifests(objects)
    assert of_kind(objects, "PersistentVolumeClaim") == []
    buffer = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-buffer")
    assert buffer["persistentVolumeClaim"] == {"claimName": "audit-buffer"}


def test_persistence_off_uses_an_empty_dir(chart: helm.Chart, tmp_path: Path) -> None:
    """persistence.enabled=false puts the buffer on a size-limited emptyDir."""
    objects = render(chart, {**CHAINLOOP, "persistence": {"enabled": False}})
    validate_manifests(objects)
    assert of_kind(objects, "PersistentVolumeClaim") == []
    buffer = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-buffer")
    assert buffer == {"name": "audit-forwarder-buffer", "emptyDir": {"sizeLimit": "1Gi"}}
    daemon_accepts(objects, tmp_path)


def test_daemonset_mode_is_a_node_agent_on_host_paths(chart: helm.Chart, tmp_path: Path) -> None:
    """mode=daemonset: a DaemonSet with the socket and the buffer on hostPaths, no PVC."""
    objects = render(
        chart,
        {**CHAINLOOP, "mode": "daemonset", "metrics": {"serviceMonitor": {"enabled": True}}},
    )
    validate_manifests(objects)
    assert kinds(objects) == [
        "ConfigMap",
        "DaemonSet",
        "Pod",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    config = daemon_config(objects)
    assert config["ingest"]["unixSocket"] == "/var/run/audit-forwarder/ingest.sock"
    assert config["ingest"]["host"] == "127.0.0.1"
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["audit-forwarder-socket"]["hostPath"] == {
        "path": "/var/run/audit-forwarder",
        "type": "DirectoryOrCreate",
    }
    assert volumes["audit-forwarder-buffer"]["hostPath"]["path"] == "/var/lib/audit-forwarder"
    mounts = {m["name"]: m["mountPath"] for m in container(spec)["volumeMounts"]}
    assert mounts["audit-forwarder-socket"] == "/var/run/audit-forwarder"
    chown = container(spec, "volume-permissions")
    assert chown["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert [p["name"] for p in one(objects, "Service")["spec"]["ports"]] == ["metrics"]
    strategy = one(objects, "DaemonSet")["spec"]["updateStrategy"]
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1}
    daemon_accepts(objects, tmp_path)


def test_sidecar_mode_renders_only_config_and_secret(chart: helm.Chart) -> None:
    """mode=sidecar on its own: the ConfigMap and Secret the application's pod mounts."""
    objects = render(chart, {**CHAINLOOP, "mode": "sidecar"})
    validate_manifests(objects)
    assert kinds(objects) == ["ConfigMap", "Secret"]


def test_sidecar_example_shares_the_socket_with_the_app(
    sidecar_app: helm.Chart, tmp_path: Path
) -> None:
    """The example app chart renders one Deployment: app + forwarder sharing the socket emptyDir."""
    objects = render(sidecar_app, {})
    validate_manifests(objects)
    assert kinds(objects) == ["ConfigMap", "Deployment", "Secret"]
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "audit-forwarder"]
    socket = daemon_config(objects)["ingest"]["unixSocket"]
    assert socket == "/var/run/audit-forwarder/ingest.sock"
    for name in ("app", "audit-forwarder"):
        mounts = {m["name"]: m["mountPath"] for m in container(spec, name)["volumeMounts"]}
        assert mounts["audit-forwarder-socket"] == str(Path(socket).parent)
    assert socket in container(spec, "app")["args"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["audit-forwarder-socket"] == {"name": "audit-forwarder-socket", "emptyDir": {}}
    assert spec["securityContext"]["fsGroup"] == 10001
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {
        "checksum/audit-forwarder-config",
        "checksum/audit-forwarder-secret",
    }
    assert daemon_config(objects)["ingest"]["host"] == "127.0.0.1"
    check_config(mount_pod_files(objects, spec, tmp_path / "pod"))


def test_sidecar_example_as_a_native_sidecar(sidecar_app: helm.Chart) -> None:
    """sidecar.native=true: the forwarder is an init container with restartPolicy Always."""
    objects = render(sidecar_app, {"audit-forwarder": {"sidecar": {"native": True}}})
    validate_manifests(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    [forwarder] = spec["initContainers"]
    assert forwarder["name"] == "audit-forwarder"
    assert forwarder["restartPolicy"] == "Always"


def test_sidecar_example_checksum_follows_the_forwarder_config(sidecar_app: helm.Chart) -> None:
    """Changing the subchart's values changes the application pod's checksum annotation."""

    def checksum(values: dict[str, Any]) -> str:
        deployment = one(render(sidecar_app, values), "Deployment")
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"][
                "checksum/audit-forwarder-config"
            ]
        )

    level = {"audit-forwarder": {"config": {"logging": {"level": "debug"}}}}
    assert checksum(level) != checksum({})
