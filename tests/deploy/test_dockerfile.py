"""The Dockerfile and .dockerignore: linted, and their install steps replayed without Docker.

No Docker daemon is needed: hadolint checks the Dockerfile, and the image's
build is replayed on the host — the build context is what .dockerignore lets
through, the wheel is built from it with the builder stage's ``pip wheel .
--no-deps``, and it is installed into a clean virtualenv as the final stage
installs it. The installed console script then runs as the image would run it
(its ENTRYPOINT and CMD, its environment, its paths moved under ``tmp_path``).
One virtualenv serves the whole module; pip may fetch the dependencies from PyPI.
"""

from __future__ import annotations

import fnmatch
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = str(Path(sys.executable).with_name("hadolint"))
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}
CHAINLOOP_CONFIG = {
    "auditLogForwarders": [
        {
            "kind": "webhook",
            "uri": "https://webhook.site",
            "token": "THE-SECRET-TOKEN",
            "method": "POST",
        }
    ]
}


@dataclass
class Stage:
    """One FROM stage of the Dockerfile: its base and its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of the stage."""
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        """The arguments of the stage's last ``keyword`` instruction (the one that counts)."""
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = words[0]
            for name, value in global_args.items():
                base = base.replace(f"${{{name}}}", value)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif not stages and keyword == "ARG":
            name, _, value = args.partition("=")
            global_args[name] = value
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def env_assignments(stage: Stage) -> dict[str, str]:
    """The ENV variables of a stage (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in args.split():
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def label_assignments(stage: Stage) -> dict[str, str]:
    """The LABELs of a stage, quotes removed, ARG defaults substituted."""
    args = {
        name: value.strip('"') for name, _, value in (a.partition("=") for a in stage.all("ARG"))
    }
    labels: dict[str, str] = {}
    for text in stage.all("LABEL"):
        rest = text
        while rest.strip():
            name, _, rest = rest.strip().partition("=")
            if rest.startswith('"'):
                value, _, rest = rest[1:].partition('"')
            else:
                value, _, rest = rest.partition(" ")
            for arg, default in args.items():
                value = value.replace(f"${{{arg}}}", default)
            labels[name] = value
    return labels


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(is_exception, pattern) for each rule of .dockerignore, in order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        rules.append((exception, line.lstrip("!").rstrip("/")))
    return rules


def in_context(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether Docker sends ``relative`` (a path or a parent of it matches; the last rule wins)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exception, pattern in rules:
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            included = exception
    return included


def build_context(destination: Path) -> list[str]:
    """Copy what .dockerignore lets into the build context to ``destination``; list it."""
    rules = dockerignore_patterns()
    reincluded = [pattern for exception, pattern in rules if exception]
    sent = []
    for directory, subdirectories, files in os.walk(ROOT):
        here = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else f"{here}/"
        # Do not descend where nothing can be sent (.git, .venv, ...).
        subdirectories[:] = [
            name
            for name in subdirectories
            if in_context(prefix + name, rules)
            or any(p.startswith(f"{prefix}{name}/") for p in reincluded)
        ]
        for name in files:
            relative = prefix + name
            if in_context(relative, rules):
                sent.append(relative)
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, destination / relative)
    return sorted(sent)


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output, with a timeout; the caller checks the result."""
    return subprocess.run(
        [str(arg) for arg in argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without AUDIT_FORWARDER_* or virtualenv variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AUDIT_FORWARDER_", "PYTHON", "PIP_")) and key != "VIRTUAL_ENV"
    }


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """The Dockerfile's stages."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[1]


@dataclass
class ImageReplay:
    """The image replayed on the host: its filesystem root and the installed virtualenv."""

    root: Path
    bin: Path
    context_files: list[str]
    final: Stage

    def path(self, image_path: str) -> Path:
        """Where an absolute path of the image lives in the replay."""
        return self.root / image_path.lstrip("/")

    def environment(self) -> dict[str, str]:
        """The final stage's ENV, paths moved into the replay, over a clean environment."""
        env = clean_environment()
        for name, value in env_assignments(self.final).items():
            env[name] = str(self.path(value)) if value.startswith("/") else value
        return env

    def command(self, *args: str) -> list[str]:
        """ENTRYPOINT with ``args`` (CMD when empty), the config path moved into the replay."""
        entrypoint = json.loads(self.final.last("ENTRYPOINT"))
        arguments = list(args) or json.loads(self.final.last("CMD"))
        arguments = [str(self.path(a)) if a.startswith("/") else a for a in arguments]
        return [str(self.bin / entrypoint[0]), *entrypoint[1:], *arguments]

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write config.yaml where the image's CMD reads it."""
        cmd = json.loads(self.final.last("CMD"))
        target = self.path(cmd[cmd.index("--config") + 1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config), encoding="utf-8")
        return target


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> ImageReplay:
    """Build the wheel from the build context and install it into a clean venv, like the image."""
    work = tmp_path_factory.mktemp("image")
    context = work / "context"
    context_files = build_context(context)
    builder, final = stages
    build = builder.last("RUN")
    assert build.startswith("pip wheel . --no-deps")
    wheels = work / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", context, "--no-deps", "-w", wheels)
    assert built.returncode == 0, built.stderr
    venv = work / "venv"
    created = run(sys.executable, "-m", "venv", venv)
    assert created.returncode == 0, created.stderr
    install = final.last("RUN")
    assert "pip install --no-cache-dir /wheels/*.whl" in install
    installed = run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        *sorted(wheels.glob("*.whl")),
        env=clean_environment(),
    )
    assert installed.returncode == 0, installed.stderr
    return ImageReplay(work / "rootfs", venv / "bin", context_files, final)


def test_hadolint_is_clean() -> None:
    """hadolint reports nothing, not even style or info findings."""
    result = run(HADOLINT, "--no-color", "--failure-threshold", "style", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_dockerfile_builds_a_wheel_then_installs_only_that(stages: list[Stage]) -> None:
    """Two stages on a pinned slim Python: a wheel builder, and a final stage without compilers."""
    global_args, _ = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert fnmatch.fnmatchcase(global_args["PYTHON_IMAGE"], "python:3.11.*-slim-bookworm")
    assert len(global_args["PYTHON_IMAGE"].split(":")[1].split("-")[0].split(".")) == 3
    builder, final = stages
    assert builder.name == "builder"
    assert builder.base == final.base == global_args["PYTHON_IMAGE"]
    final_text = " ".join(args for _, args in final.instructions)
    for forbidden in ("apt-get", "gcc", "build-essential", "COPY . "):
        assert forbidden not in final_text
    assert "from=builder,source=/wheels" in final.last("RUN")


def test_image_runs_the_daemon_as_an_unprivileged_user(stages: list[Stage]) -> None:
    """Numeric non-root user, entrypoint/cmd, ports, volume, stop signal and buffer path."""
    final = stages[-1]
    assert final.last("USER") == "10001:10001"
    assert json.loads(final.last("ENTRYPOINT")) == ["audit-forwarder"]
    assert json.loads(final.last("CMD")) == ["run", "--config", "/etc/audit-forwarder/config.yaml"]
    assert final.last("EXPOSE").split() == ["8686", "9464"]
    assert json.loads(final.last("VOLUME")) == ["/var/lib/audit-forwarder"]
    assert final.last("STOPSIGNAL") == "SIGTERM"
    # No AUDIT_FORWARDER_* defaults: they would override a user's config file.
    assert not [name for name in env_assignments(final) if name.startswith("AUDIT_FORWARDER_")]
    # The default buffer.path, ./data/buffer.db, lands on the volume.
    assert final.last("WORKDIR") == "/var/lib/audit-forwarder"


def test_oci_labels_carry_the_package_version(stages: list[Stage]) -> None:
    """The OCI labels are all set, and the version label is the package's version."""
    labels = label_assignments(stages[-1])
    assert set(labels) >= OCI_LABELS
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == "audit-forwarder"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_build_context_holds_only_the_package_sources(image: ImageReplay) -> None:
    """.dockerignore sends pyproject, README and the package; no venv, VCS, data or tests."""
    sent = image.context_files
    assert {"pyproject.toml", "README.md", "forwarder/__init__.py", "forwarder/cli.py"} <= set(sent)
    assert all(path.startswith("forwarder/") for path in sent if "/" in path)
    assert not [p for p in sent if "__pycache__" in p or p.endswith((".pyc", ".db"))]
    rules = dockerignore_patterns()
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/buffer.db",
        "tests/test_cli.py",
        "bench/results/run.json",
        "charts/audit-forwarder/values.yaml",
        ".pytest_cache/README.md",
        "forwarder/__pycache__/cli.cpython-311.pyc",
        "Dockerfile",
    ):
        assert not in_context(kept_out, rules), kept_out


def test_installed_wheel_prints_the_version(image: ImageReplay) -> None:
    """The wheel installed as in the image reports the package version, 1.0.0."""
    result = run(*image.command("version"), env=image.environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"audit-forwarder {__version__}" == "audit-forwarder 1.0.0"


def test_installed_wheel_checks_the_config_at_the_image_path(image: ImageReplay) -> None:
    """check-config accepts Chainloop's example at /etc/audit-forwarder/config.yaml."""
    image.write_config(CHAINLOOP_CONFIG)
    run_command = json.loads(image.final.last("CMD"))
    assert run_command[0] == "run"
    result = run(*image.command("check-config", *run_command[1:]), env=image.environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK (1 forwarder(s): webhook-0)" in result.stdout


def test_installed_wheel_runs_and_drains_on_the_stop_signal(image: ImageReplay) -> None:
    """ENTRYPOINT + CMD start the daemon with the buffer at the image's path; STOPSIGNAL exits 0."""
    image.write_config(
        {
            **CHAINLOOP_CONFIG,
            "ingest": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    workdir = image.path(image.final.last("WORKDIR"))
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = subprocess.Popen(
        image.command(),
        env=image.environment(),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        started = read_log_event(daemon, "daemon_started", timeout=30)
        assert started["buffer"] == str(image.path("/var/lib/audit-forwarder/data/buffer.db"))
        metrics_port = str(started["metrics"][0]).rpartition(":")[2]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as ready:
            assert ready.status == 200
        daemon.send_signal(signal.Signals[image.final.last("STOPSIGNAL")])
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        if daemon.stdout is not None:
            daemon.stdout.close()
    assert image.path("/var/lib/audit-forwarder/data/buffer.db").exists()


def read_log_event(daemon: subprocess.Popen[bytes], event: str, timeout: float) -> dict[str, Any]:
    """Read the daemon's JSON log lines until ``event``; fail at the deadline or on exit."""
    assert daemon.stdout is not None
    descriptor = daemon.stdout.fileno()
    deadline = time.monotonic() + timeout
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            chunk = os.read(descriptor, 65536)
            if not chunk:
                break
            output += chunk
            for line in output.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("event") == event:
                    return record
    pytest.fail(f"no {event} log line; the daemon wrote:\n{output.decode(errors='replace')}")
