"""What the command-line tests share: the installed console script and a sample configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from forwarder.config.settings import ENV_PREFIX

CLI = str(Path(sys.executable).with_name("audit-forwarder"))
SECRET = "THE-SECRET-TOKEN"
GOOD = f"""\
auditLogForwarders:
  - kind: webhook
    uri: https://webhook.site
    token: {SECRET}
    method: POST
  - name: archive
    kind: webhook
    uri: http://127.0.0.1:9000/archive
    token: ${{FWD_TEST_ARCHIVE_TOKEN}}
"""


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script with a clean AUDIT_FORWARDER_* environment."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write a configuration file under ``tmp_path``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
