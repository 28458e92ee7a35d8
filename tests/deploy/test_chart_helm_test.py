"""The `helm test` hook: what the chart renders, and its script run against the real daemon.

The test pod's script is not trusted by inspection: it is taken from the
rendered Pod and run with the venv's Python against the real daemon started on
the chart's own rendered config.yaml and Secret files (only the listener
addresses move to free loopback ports, and the Service URLs in the pod's
environment point at them), with a real receiver behind it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart_support import (
    CHAINLOOP,
    Manifests,
    hooks,
    kinds,
    mount_pod_files,
    of_kind,
    one,
    pod_spec,
    render,
    validate_manifests,
    with_forwarder,
)
from tests.support import DaemonProcess, ScriptedReceiver, wait_for

INGEST_TOKEN = "INGEST-TOKEN-FOR-THE-TEST"


def hook_pod(objects: Manifests) -> dict[str, Any]:
    """The one `helm test` hook pod."""
    [pod] = hooks(objects)
    assert pod["kind"] == "Pod"
    return pod


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    """The test container's environment."""
    [test_container] = pod["spec"]["containers"]
    return {item["name"]: item["value"] for item in test_container["env"]}


def test_standalone_test_pod_posts_through_the_service(chart: helm.Chart) -> None:
    """Standalone: a hook pod in the forwarder's image posts to the Service's ingest port."""
    values = {**CHAINLOOP, "config": {"ingest": {"token": INGEST_TOKEN}}}
    values["image"] = {"pullSecrets": ["regcred"]}
    objects = render(chart, values)
    validate_manifests(objects)
    pod = hook_pod(objects)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["name"] == "rel-audit-forwarder-test"
    [test_container] = pod["spec"]["containers"]
    forwarder = pod_spec(objects)["containers"][0]
    assert test_container["image"] == forwarder["image"]
    assert test_container["command"] == ["python", "-c"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["restartPolicy"] == "Never"
    env = pod_env(pod)
    assert env["INGEST_URL"] == "http://rel-audit-forwarder.audit.svc:8686/v1/events"
    assert env["READYZ_URL"] == "http://rel-audit-forwarder.audit.svc:9464/readyz"
    assert env["EVENT_TYPE"] == "audit_forwarder.helm_test"
    [mount] = test_container["volumeMounts"]
    assert env["INGEST_TOKEN_FILE"] == f"{mount['mountPath']}/ingest-token"
    [volume] = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == one(objects, "Secret")["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "ingest-token", "path": "ingest-token"}]
    # The Service must never route ingest to the test pod.
    selector = one(objects, "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_test_pod_reads_a_token_from_an_existing_secret(chart: helm.Chart) -> None:
    """With config.ingest.tokenSecretRef the test pod mounts that Secret's key."""
    ref = {"name": "ingest-credentials", "key": "bearer"}
    objects = render(chart, {**CHAINLOOP, "config": {"ingest": {"tokenSecretRef": ref}}})
    validate_manifests(objects)
    [volume] = hook_pod(objects)["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "ingest-credentials"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "ingest-token"}]


def test_daemonset_test_pod_checks_readiness_only(chart: helm.Chart) -> None:
    """Daemonset mode has no ingest Service: the test pod only checks /readyz."""
    objects = render(chart, {**CHAINLOOP, "mode": "daemonset"})
    validate_manifests(objects)
    env = pod_env(hook_pod(objects))
    assert env["READYZ_URL"] == "http://rel-audit-forwarder.audit.svc:9464/readyz"
    assert "INGEST_URL" not in env


@pytest.mark.parametrize(
    "values",
    [{**CHAINLOOP, "mode": "sidecar"}, {**CHAINLOOP, "helmTest": {"enabled": False}}],
)
def test_no_test_pod_in_sidecar_mode_or_when_disabled(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    """Sidecar mode (the pods are the application's) and helmTest.enabled=false render no hook."""
    objects = render(chart, values)
    assert hooks(objects) == []
    assert "Pod" not in kinds(objects)


async def run_test_pod(
    objects: Manifests, daemon: DaemonProcess, token_file: Path
) -> tuple[int, str]:
    """Run the test pod's script with its Service URLs pointed at ``daemon``."""
    pod = hook_pod(objects)
    [test_container] = pod["spec"]["containers"]
    env = pod_env(pod)
    for name, actual in (("INGEST_URL", daemon.ingest_url), ("READYZ_URL", daemon.metrics_url)):
        rendered = urlsplit(env[name])
        env[name] = f"{actual}{rendered.path}"
    env["INGEST_TOKEN_FILE"] = str(token_file)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *test_container["command"][1:],
        *test_container["args"],
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return await process.wait(), output.decode()


async def start_chart_daemon(
    chart: helm.Chart,
    receiver: ScriptedReceiver,
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> tuple[Manifests, DaemonProcess]:
    """The daemon on the chart's rendered config and Secret files, listening on free ports."""
    values = with_forwarder(name="siem")
    values["auditLogForwarders"][0]["uri"] = receiver.url
    values["config"] = {"ingest": {"token": INGEST_TOKEN}}
    objects = render(chart, values)
    config_file = mount_pod_files(objects, pod_spec(objects), tmp_path / "pod")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["ingest"].update(host="127.0.0.1", port=0)
    config["metrics"].update(host="127.0.0.1", port=0)
    daemon: DaemonProcess = await daemons(config).start()
    return objects, daemon


async def test_test_script_posts_an_event_the_daemon_delivers(
    chart: helm.Chart,
    receiver: ScriptedReceiver,
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """The rendered script passes against the real daemon and its event reaches the receiver."""
    objects, daemon = await start_chart_daemon(chart, receiver, daemons, tmp_path)
    [secret] = of_kind(objects, "Secret")
    token_file = tmp_path / "test-pod-token"
    token_file.write_bytes(base64.b64decode(secret["data"]["ingest-token"]))
    code, output = await run_test_pod(objects, daemon, token_file)
    assert code == 0, output
    assert "-> 202" in output
    assert "audit-forwarder test passed" in output
    delivered = await wait_for(receiver.events, message="the helm test event delivered")
    assert delivered[0]["event_type"] == "audit_forwarder.helm_test"
    assert delivered[0]["data"] == {"release": "rel", "namespace": "audit"}


async def test_test_script_fails_when_ingest_refuses(
    chart: helm.Chart,
    receiver: ScriptedReceiver,
    daemons: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """With a token the daemon refuses, the rendered script exits non-zero and says why."""
    objects, daemon = await start_chart_daemon(chart, receiver, daemons, tmp_path)
    token_file = tmp_path / "wrong-token"
    token_file.write_text("NOT-THE-INGEST-TOKEN\n", encoding="utf-8")
    code, output = await run_test_pod(objects, daemon, token_file)
    assert code == 1, output
    assert "-> 401" in output
    assert receiver.attempts == []
