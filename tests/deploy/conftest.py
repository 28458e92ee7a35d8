"""Fixtures of the deployment tests: the charts, packaged once per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import helm_python as helm
import pytest

from tests.deploy.chart_support import CHART, EXAMPLE


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
