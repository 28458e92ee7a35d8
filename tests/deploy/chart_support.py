"""How the chart tests render charts/audit-forwarder with Helm's real engine and check it.

Charts are rendered the way ``helm template --kube-version 1.30 --api-versions
...`` would, through Helm's own engine: helm-python's ``Chart.render`` does not
expose the Capabilities options, so ``render_files`` passes them to the same
``helm_render`` call of its C library (``api_versions`` and ``kube_version``
are options of that call). By default the cluster serves the Prometheus
Operator's kinds, as the monitoring tests expect; the capability tests pass
``api_versions=()`` for a cluster without them.

Every rendered manifest is validated against the Kubernetes 1.30 OpenAPI
schemas (strict: unknown fields are errors); the Prometheus Operator kinds,
which those schemas do not cover, are checked by structure and their rules by
``promtool``. The configuration the chart renders is then run through the real
``audit-forwarder check-config``: the pod's files (the ConfigMap's config.yaml,
the projected Secret files, the buffer and socket directories) are recreated
under ``tmp_path`` the way the kubelet would mount them, so the chart and the
daemon cannot drift apart. The values schema is compared with the daemon's
pydantic models for the same reason.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from helm_python import _native
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "audit-forwarder"
EXAMPLE = ROOT / "charts" / "examples" / "sidecar-app"
CLI = str(Path(sys.executable).with_name("audit-forwarder"))
KUBERNETES_VERSION = "1.30"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# `--api-versions` of a cluster running the Prometheus Operator.
OPERATOR_APIS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in sorted(OPERATOR_KINDS))
# The chart has no default image (none is published): every release names its build.
IMAGE = "registry.example.com/audit-forwarder"
SECRETS_DIR = "/etc/audit-forwarder/secrets"
SECRET = "THE-SECRET-TOKEN"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
# Chainloop's example from its Helm chart documentation, verbatim.
CHAINLOOP = {
    "auditLogForwarders": [
        {"kind": "webhook", "uri": "https://webhook.site", "token": SECRET, "method": "POST"}
    ]
}
# Keys the chart sets itself (paths, listener addresses) or replaces (*File by *SecretRef).
CHART_MANAGED = {
    "forwarder": ({"tokenFile", "signingSecretFile"}, {"tokenSecretRef", "signingSecretRef"}),
    "ingest": ({"host", "tokenFile"}, {"tokenSecretRef"}),
    "buffer": ({"path"}, set()),
}

Manifests = list[dict[str, Any]]
ClusterSecrets = dict[str, dict[str, str]]


def render_files(
    chart: helm.Chart,
    values: dict[str, Any],
    *,
    api_versions: Sequence[str] = OPERATOR_APIS,
    name: str = "rel",
) -> dict[str, str]:
    """Rendered files by path, as `helm template <name> -n audit --kube-version 1.30 -a ...`.

    For the audit-forwarder chart, ``image.repository`` is IMAGE unless
    ``values`` sets it (an operator's values always name their build).
    """
    if chart.name == "audit-forwarder":
        values = {**values, "image": {"repository": IMAGE, **values.get("image", {})}}
    options = {
        "name": name,
        "namespace": "audit",
        "kube_version": f"v{KUBERNETES_VERSION}.0",
        "api_versions": list(api_versions),
    }
    rendered = _native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
    )
    files: dict[str, str] = json.loads(rendered)
    return files


def render(
    chart: helm.Chart,
    values: dict[str, Any],
    *,
    api_versions: Sequence[str] = OPERATOR_APIS,
    name: str = "rel",
) -> Manifests:
    """Render as `helm template` would (see render_files); return the Kubernetes objects."""
    objects: Manifests = []
    files = render_files(chart, values, api_versions=api_versions, name=name)
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(chart: helm.Chart, values: dict[str, Any], **options: Any) -> str:
    """The NOTES.txt `helm install` would print."""
    files = render_files(chart, values, **options)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def of_kind(objects: Manifests, kind: str) -> Manifests:
    """The rendered objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Manifests, kind: str) -> dict[str, Any]:
    """The single rendered object of ``kind``."""
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(objects: Manifests) -> list[str]:
    """The kinds rendered, sorted."""
    return sorted(obj["kind"] for obj in objects)


def hooks(objects: Manifests) -> Manifests:
    """The Helm hook objects (`helm test` pods) among the rendered objects."""
    return [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]


def pod_spec(objects: Manifests) -> dict[str, Any]:
    """The pod spec of the one Deployment or DaemonSet."""
    workloads = of_kind(objects, "Deployment") + of_kind(objects, "DaemonSet")
    assert len(workloads) == 1
    spec: dict[str, Any] = workloads[0]["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str = "audit-forwarder") -> dict[str, Any]:
    """A container of a pod spec, by name (native sidecars included)."""
    every = spec["containers"] + spec.get("initContainers", [])
    found: dict[str, Any] = next(c for c in every if c["name"] == name)
    return found


def daemon_config(objects: Manifests) -> dict[str, Any]:
    """The config.yaml of the rendered ConfigMap, parsed."""
    config: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])
    return config


def validate_manifests(objects: Manifests) -> None:
    """Every object against the Kubernetes schemas; operator kinds by their structure."""
    assert objects
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            check_operator_object(obj, objects)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def check_operator_object(obj: dict[str, Any], objects: Manifests) -> None:
    """A ServiceMonitor, PodMonitor or PrometheusRule has the fields the operator needs."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    if obj["kind"] == "PrometheusRule":
        assert spec["groups"]
        for group in spec["groups"]:
            assert group["name"]
            assert all(rule["alert"] and rule["expr"] for rule in group["rules"])
        return
    selected = spec["selector"]["matchLabels"]
    assert spec["namespaceSelector"]["matchNames"] == ["audit"]
    if obj["kind"] == "ServiceMonitor":
        service = one(objects, "Service")
        assert selected.items() <= service["metadata"]["labels"].items()
        port_names = {port["name"] for port in service["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} <= port_names
    else:
        workloads = of_kind(objects, "Deployment") + of_kind(objects, "DaemonSet")
        labels = workloads[0]["spec"]["template"]["metadata"]["labels"]
        assert selected.items() <= labels.items()
        ports = container(pod_spec(objects))["ports"]
        assert {e["port"] for e in spec["podMetricsEndpoints"]} <= {p["name"] for p in ports}
    assert all(e["path"] == "/metrics" for e in spec.get("endpoints", []))


def mount_pod_files(
    objects: Manifests,
    spec: dict[str, Any],
    root: Path,
    cluster_secrets: ClusterSecrets | None = None,
) -> Path:
    """Recreate the forwarder container's mounts under ``root``; return its config file.

    What the kubelet would do: the ConfigMap's key at the subPath mount, every
    source of a projected or secret volume as files (the chart's Secret from
    its rendered data, existing Secrets from ``cluster_secrets``; only the
    listed ``items`` when there are some) with the volume's ``defaultMode``,
    and empty directories for the rest. Paths in config.yaml are rewritten
    into ``root``.
    """
    cluster_secrets = dict(cluster_secrets or {})
    for secret in of_kind(objects, "Secret"):
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        cluster_secrets[secret["metadata"]["name"]] = decoded
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    config_file: Path | None = None
    for mount in container(spec)["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            config_map = one(objects, "ConfigMap")
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            config_file = target
            continue
        target.mkdir(parents=True, exist_ok=True)
        sources = volume.get("projected", {}).get("sources", [])
        mode = volume.get("projected", {}).get("defaultMode")
        if "secret" in volume:
            secret = volume["secret"]
            sources = [{"secret": {"name": secret["secretName"], "items": secret.get("items")}}]
            mode = secret.get("defaultMode")
        for source in sources:
            data = cluster_secrets[source["secret"]["name"]]
            items = source["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                file = target / item["path"]
                file.write_text(data[item["key"]], encoding="utf-8")
                if mode is not None:
                    file.chmod(mode)
    assert config_file is not None, "config.yaml is not mounted"
    config = rewrite_paths(daemon_config(objects), root)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config_file


PATH_KEYS = {
    "path",
    "unixSocket",
    "tokenFile",
    "signingSecretFile",
    "clientSecretFile",
    "passwordFile",
    "caFile",
    "certFile",
    "keyFile",
    "signingKeyFile",
    "file",
    "nkeySeedFile",
    "credentialsFile",
}


def rewrite_paths(value: Any, root: Path) -> Any:
    """Move every absolute path of a config tree under ``root``."""
    if isinstance(value, dict):
        return {
            key: str(root / item.lstrip("/"))
            if key in PATH_KEYS and isinstance(item, str) and item.startswith("/")
            else rewrite_paths(item, root)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [rewrite_paths(item, root) for item in value]
    return value


def check_config(config_file: Path) -> str:
    """Run the real ``audit-forwarder check-config``; return its output, asserting exit 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_FORWARDER_")}
    result = subprocess.run(
        [CLI, "check-config", "--config", str(config_file)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def daemon_accepts(
    objects: Manifests, tmp_path: Path, secrets: ClusterSecrets | None = None
) -> str:
    """Mount the rendered pod's files under tmp_path and run check-config on them."""
    return check_config(mount_pod_files(objects, pod_spec(objects), tmp_path / "pod", secrets))


def with_forwarder(**options: Any) -> dict[str, Any]:
    """Values with one webhook forwarder carrying ``options``."""
    return {"auditLogForwarders": [{"kind": "webhook", "uri": "https://webhook.site", **options}]}


def schema_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The message of the schema failure ``values`` must cause."""
    with pytest.raises(helm.HelmValuesError) as failure:
        render_files(chart, values)
    return str(failure.value)


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The message of the render-time `fail` ``values`` must cause."""
    with pytest.raises(helm.HelmRenderError) as failure:
        render_files(chart, values)
    return str(failure.value)


def aliases(model: type[BaseModel]) -> set[str]:
    """The YAML keys of a pydantic model."""
    return {field.alias or name for name, field in model.model_fields.items()}


def values_schema() -> dict[str, Any]:
    """The chart's values.schema.json, parsed."""
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text("utf-8"))
    return schema


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A node of the values schema with its local ``$ref`` (``#/definitions/...``) followed."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def signing_key_pem() -> str:
    """A fresh Ed25519 private key in PEM (PKCS#8), the form `audit-forwarder keygen` writes."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return pem.decode()


def example_values(name: str) -> dict[str, Any]:
    """A values file of charts/audit-forwarder/examples/, parsed."""
    values: dict[str, Any] = yaml.safe_load((CHART / "examples" / name).read_text("utf-8"))
    return values
