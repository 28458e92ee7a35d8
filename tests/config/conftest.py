"""Fixtures of the configuration tests."""

from __future__ import annotations

import os

import pytest

from forwarder.config.settings import ENV_PREFIX


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without AUDIT_FORWARDER_* variables from the outer environment."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
