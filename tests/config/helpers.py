"""What every configuration test shares: real files in ``tmp_path`` and no ambient overrides.

Every test writes a real file and calls ``load_config`` on it; environment
variables are set with ``monkeypatch.setenv``, which is the real input of the
code under test, not a mock of it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from forwarder.config.loading import load_config
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError, ConfigProblem

REPO = Path(__file__).resolve().parents[2]
SECRET = "THE-SECRET-TOKEN"
CHAINLOOP_EXAMPLE = f"""\
auditLogForwarders:
  - kind: webhook
    uri: https://webhook.site
    token: {SECRET}
    method: POST
"""
ONE_FORWARDER = "auditLogForwarders: [{kind: webhook, uri: 'https://receiver.example'}]\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write ``text`` (dedented) to a file under ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Settings:
    """Load a configuration given as YAML text."""
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems ``load_config`` reports for YAML text, rendered as ``path: message``."""
    return problems_at(write(tmp_path, text))


def problems_at(path: Path) -> list[str]:
    """The problems ``load_config`` reports for the file at ``path``."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems, "a ConfigError must carry at least one problem"
    assert all(isinstance(problem, ConfigProblem) for problem in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]
