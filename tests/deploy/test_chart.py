"""The Helm chart in charts/audit-forwarder, rendered by Helm's real engine.

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
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import trustme
import yaml
from pydantic import BaseModel

from forwarder import __version__
from forwarder.config.settings import BufferConfig, IngestConfig, LoggingConfig, Settings
from forwarder.destinations.webhook.options import WebhookForwarderConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "audit-forwarder"
EXAMPLE = ROOT / "charts" / "examples" / "sidecar-app"
CLI = str(Path(sys.executable).with_name("audit-forwarder"))
KUBERNETES_VERSION = "1.30"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
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


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once by Helm's engine."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def sidecar_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helm.Chart]:
    """The sidecar example chart with its file:// dependency built, in a copy of charts/."""
    charts = tmp_path_factory.mktemp("charts")
    shutil.copytree(CHART, charts / "audit-forwarder")
    shutil.copytree(EXAMPLE, charts / "examples" / "sidecar-app")
    helm.dependency_build(charts / "examples" / "sidecar-app")
    with helm.Chart.load(charts / "examples" / "sidecar-app") as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> Manifests:
    """Render as `helm template rel --namespace audit` would; return the Kubernetes objects."""
    rendered = chart.render(values, name="rel", namespace="audit")
    objects: Manifests = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


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
    its rendered data, existing Secrets from ``cluster_secrets``), and empty
    directories for the rest. Paths in config.yaml are rewritten into ``root``.
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
        if "secret" in volume:
            sources = [{"secret": {"name": volume["secret"]["secretName"]}}]
        for source in sources:
            data = cluster_secrets[source["secret"]["name"]]
            items = source["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (target / item["path"]).write_text(data[item["key"]], encoding="utf-8")
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
    "caFile",
    "certFile",
    "keyFile",
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
        chart.render(values, name="rel", namespace="audit")
    return str(failure.value)


def aliases(model: type[BaseModel]) -> set[str]:
    """The YAML keys of a pydantic model."""
    return {field.alias or name for name, field in model.model_fields.items()}


def test_chart_metadata_matches_the_package() -> None:
    """Chart.yaml is apiVersion v2, version 0.1.0, appVersion the daemon's version."""
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert metadata["apiVersion"] == "v2"
    assert metadata["version"] == "0.1.0"
    assert metadata["appVersion"] == __version__ == "1.0.0"


@pytest.mark.parametrize("mode", ["standalone", "sidecar", "daemonset"])
def test_lint_is_clean(mode: str) -> None:
    """helm lint --strict for Kubernetes 1.30 reports nothing above info, in every mode."""
    report = helm.lint(CHART, {**CHAINLOOP, "mode": mode}, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_fail_with_a_clear_message(chart: helm.Chart) -> None:
    """With the default empty auditLogForwarders the chart refuses to render and says why."""
    with pytest.raises(helm.HelmRenderError) as failure:
        chart.render({}, name="rel", namespace="audit")
    message = str(failure.value)
    assert "auditLogForwarders is empty: the daemon needs at least one forwarder" in message
    assert "kind: webhook" in message


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


def test_schema_covers_every_daemon_option() -> None:
    """values.schema.json knows exactly the daemon's keys, minus those the chart manages."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    forwarder = schema["properties"]["auditLogForwarders"]["items"]
    config = schema["properties"]["config"]["properties"]

    def keys(node: dict[str, Any]) -> set[str]:
        assert node["additionalProperties"] is False
        return set(node["properties"])

    def expected(model: type[BaseModel], section: str) -> set[str]:
        managed, added = CHART_MANAGED.get(section, (set(), set()))
        return aliases(model) - managed | added

    assert keys(forwarder) == expected(WebhookForwarderConfig, "forwarder")
    for name, field in WebhookForwarderConfig.model_fields.items():
        node = forwarder["properties"].get(field.alias or name, {})
        nested, *_ = get_args(field.annotation) or (field.annotation,)
        if node.get("type") == "array":
            node = node["items"]
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            assert keys(node) == aliases(nested), field.alias
    assert keys(config["ingest"]) == expected(IngestConfig, "ingest")
    assert keys(config["buffer"]) == expected(BufferConfig, "buffer")
    assert keys(config["logging"]) == aliases(LoggingConfig)
    # metrics is the chart's `metrics.port`; the forwarders are top-level values.
    assert set(config) | {"metrics", "auditLogForwarders"} == aliases(Settings)


def test_chainloop_example_installs_as_is(chart: helm.Chart, tmp_path: Path) -> None:
    """Chainloop's kind/uri/token/method example renders valid manifests the daemon accepts."""
    objects = render(chart, CHAINLOOP)
    validate_manifests(objects)
    assert kinds(objects) == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    forwarder = daemon_config(objects)["auditLogForwarders"][0]
    assert forwarder == {
        "kind": "webhook",
        "uri": "https://webhook.site",
        "method": "POST",
        "tokenFile": f"{SECRETS_DIR}/forwarder-0-token",
    }
    assert "OK (1 forwarder(s): webhook-0)" in daemon_accepts(objects, tmp_path)


def test_every_forwarder_option_reaches_the_daemon(chart: helm.Chart, tmp_path: Path) -> None:
    """A forwarder using every option renders into a config check-config accepts unchanged."""
    ca = trustme.CA()
    options = {
        "name": "siem",
        "token": SECRET,
        "method": "put",
        "timeoutSeconds": 2.5,
        "retry": {
            "initialBackoffSeconds": 0.5,
            "maxBackoffSeconds": 60,
            "maxAttempts": 10,
            "maxAgeSeconds": 86400,
        },
        "enabled": True,
        "events": ["key.created", "key.deleted"],
        "excludeEvents": ["key.deleted"],
        "batch": {"maxEvents": 100, "maxBytes": 65536, "maxWaitMs": 500},
        "format": "template",
        "cloudevents": {"source": "audit", "typePrefix": "com.example."},
        "splunkHec": {"host": "h", "source": "s", "sourcetype": "_json", "index": "audit"},
        "template": '{"who": {{ data.actor }}, "what": "{{ event_type }}"}',
        "headers": {"X-Team": "platform"},
        "auth": {"type": "header", "header": "X-Api-Key", "scheme": None, "param": "token"},
        "signingSecret": SIGNING_SECRET,
        "compression": "gzip",
        "tls": {"caFile": "/etc/receiver-ca/ca.crt", "insecureSkipVerify": False},
        "responseValidators": [{"jsonPath": "$.status", "expected": ["ok"]}],
        "denyPrivateNetworks": True,
    }
    values = with_forwarder(**options)
    values["extraVolumes"] = [{"name": "receiver-ca", "secret": {"secretName": "receiver-ca"}}]
    values["extraVolumeMounts"] = [
        {"name": "receiver-ca", "mountPath": "/etc/receiver-ca", "readOnly": True}
    ]
    assert set(options) | {"kind", "uri"} == aliases(WebhookForwarderConfig) - {
        "tokenFile",
        "signingSecretFile",
    }
    objects = render(chart, values)
    validate_manifests(objects)
    rendered = daemon_config(objects)["auditLogForwarders"][0]
    passed_through = {k: v for k, v in options.items() if k not in ("token", "signingSecret")}
    assert passed_through.items() <= rendered.items()
    assert rendered["signingSecretFile"] == f"{SECRETS_DIR}/forwarder-0-signing-secret"
    cluster = {"receiver-ca": {"ca.crt": ca.cert_pem.bytes().decode()}}
    assert "OK (1 forwarder(s): siem)" in daemon_accepts(objects, tmp_path, cluster)


def test_secrets_live_in_the_secret_never_in_the_configmap(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """Tokens and signing secrets go to a read-only mounted Secret; config.yaml names the files."""
    values = with_forwarder(token=SECRET, signingSecret=SIGNING_SECRET)
    values["config"] = {"ingest": {"token": "INGEST-TOKEN"}}
    objects = render(chart, values)
    validate_manifests(objects)
    config_map_text = yaml.safe_dump(one(objects, "ConfigMap"))
    for secret in (SECRET, SIGNING_SECRET, "INGEST-TOKEN"):
        assert secret not in config_map_text
        assert base64.b64encode(secret.encode()).decode() not in config_map_text
    data = one(objects, "Secret")["data"]
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == {
        "ingest-token": "INGEST-TOKEN",
        "forwarder-0-token": SECRET,
        "forwarder-0-signing-secret": SIGNING_SECRET,
    }
    config = daemon_config(objects)
    assert config["ingest"]["tokenFile"] == f"{SECRETS_DIR}/ingest-token"
    assert config["auditLogForwarders"][0]["tokenFile"] == f"{SECRETS_DIR}/forwarder-0-token"
    spec = pod_spec(objects)
    mount = next(m for m in container(spec)["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
    assert mount["readOnly"] is True
    daemon_accepts(objects, tmp_path)


def test_secret_refs_use_the_existing_secret(chart: helm.Chart, tmp_path: Path) -> None:
    """tokenSecretRef and signingSecretRef project existing Secrets' keys; no Secret is created."""
    values = with_forwarder(
        tokenSecretRef={"name": "siem-credentials", "key": "token"},
        signingSecretRef={"name": "siem-credentials", "key": "signing"},
    )
    values["config"] = {"ingest": {"tokenSecretRef": {"name": "ingest", "key": "bearer"}}}
    objects = render(chart, values)
    validate_manifests(objects)
    assert of_kind(objects, "Secret") == []
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "audit-forwarder-secrets")
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "ingest", "items": [{"key": "bearer", "path": "ingest-token"}]}},
        {
            "secret": {
                "name": "siem-credentials",
                "items": [{"key": "token", "path": "forwarder-0-token"}],
            }
        },
        {
            "secret": {
                "name": "siem-credentials",
                "items": [{"key": "signing", "path": "forwarder-0-signing-secret"}],
            }
        },
    ]
    cluster = {
        "siem-credentials": {"token": "from-the-cluster", "signing": SIGNING_SECRET},
        "ingest": {"bearer": "ingest-from-the-cluster"},
    }
    daemon_accepts(objects, tmp_path, cluster)


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
    ],
)
def test_contradictory_values_fail_at_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """Values that cannot work fail at render time with a message naming the keys."""
    with pytest.raises(helm.HelmRenderError) as failure:
        chart.render(values, name="rel", namespace="audit")
    assert message in str(failure.value)


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
    assert forwarder["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9464}
    assert forwarder["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9464}
    assert forwarder["args"] == ["run", "--config", "/etc/audit-forwarder/config/config.yaml"]
    assert forwarder["image"] == "audit-forwarder:1.0.0"
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
    }
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


def test_checksums_roll_the_pods_when_config_or_secrets_change(chart: helm.Chart) -> None:
    """checksum/config follows config.yaml, checksum/secret follows the Secret's data."""

    def checksums(values: dict[str, Any]) -> dict[str, str]:
        deployment = one(render(chart, values), "Deployment")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations

    base = checksums(CHAINLOOP)
    debug = checksums({**CHAINLOOP, "config": {"logging": {"level": "debug"}}})
    assert debug["checksum/config"] != base["checksum/config"]
    assert debug["checksum/secret"] == base["checksum/secret"]
    rotated = checksums(with_forwarder(token="ROTATED", method="POST"))
    assert rotated["checksum/config"] == base["checksum/config"]
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert checksums(CHAINLOOP) == base


def test_config_is_a_directory_mount_so_updates_reach_the_pod(chart: helm.Chart) -> None:
    """The ConfigMap is mounted as a directory (no subPath), so the daemon can reload it live."""
    objects = render(chart, CHAINLOOP)
    mounts = container(pod_spec(objects))["volumeMounts"]
    (config_mount,) = [m for m in mounts if m["name"] == "audit-forwarder-config"]
    assert config_mount["mountPath"] == "/etc/audit-forwarder/config"
    assert "subPath" not in config_mount
    assert config_mount["readOnly"] is True
    assert container(pod_spec(objects))["args"][-1].startswith(config_mount["mountPath"] + "/")


def test_roll_on_config_change_can_be_left_to_live_reload(chart: helm.Chart) -> None:
    """rollOnConfigChange=false drops the checksum annotations; the default keeps them."""
    objects = render(chart, {**CHAINLOOP, "rollOnConfigChange": False})
    validate_manifests(objects)
    deployment = one(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [name for name in annotations if name.startswith("checksum/")]
    default = one(render(chart, CHAINLOOP), "Deployment")
    assert "checksum/config" in default["spec"]["template"]["metadata"]["annotations"]


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


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({**CHAINLOOP, "persistance": {"enabled": False}}, "'persistance' not allowed"),
        (with_forwarder(urii="https://x.example"), "'urii' not allowed"),
        ({**CHAINLOOP, "config": {"ingest": {"tokne": "x"}}}, "'tokne' not allowed"),
        (with_forwarder(retry={"maxBackofSeconds": 5}), "'maxBackofSeconds' not allowed"),
        (with_forwarder(tokenFile="/etc/token"), "'tokenFile' not allowed"),
        ({**CHAINLOOP, "metrics": {"serviceMonitr": {}}}, "'serviceMonitr' not allowed"),
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
    ],
)
def test_schema_rejects_wrong_types(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    """A value of the wrong type or outside its allowed set is a schema error naming its path."""
    assert where in schema_error(chart, values)
