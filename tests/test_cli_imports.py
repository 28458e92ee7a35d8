"""What each light command imports: the guard of the command line's start-up time.

``--help``, ``check-config`` and ``status`` must each finish in 150 ms (issue
15, measured by ``python -m bench.cli_startup``); what decides that is which
packages they import, so that is what is asserted here, not a time (a timed
assertion fails on a loaded machine and passes on a fast one). Each command
runs through ``forwarder.cli.main`` in a fresh interpreter, ``status``
against the real daemon; the interpreter then lists the modules it loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.cli_support import GOOD, write
from tests.support import DaemonProcess, daemon_config, forwarder_config

# The daemon's stack: none of it is needed to print help, check a file or ask the daemon.
DAEMON_STACK = (
    "aiohttp",
    "aiosqlite",
    "prometheus_client",
    "structlog",
    "cryptography",
    "nats",
    "uvloop",
    "forwarder.app",
    "forwarder.buffer.store",
    "forwarder.delivery",
    "forwarder.ingest",
)
# What only a configuration needs: --help and --version load none of it.
CONFIG_STACK = ("pydantic", "pydantic_settings", "yaml", "forwarder.config")
# What validating a configuration needs: the operator commands find the daemon without it.
VALIDATION = ("pydantic", "pydantic_settings", "forwarder.config")


async def imported(argv: list[str], cwd: Path, watched: tuple[str, ...]) -> list[str]:
    """The ``watched`` modules (or their submodules) loaded by running ``main(argv)``."""
    script = textwrap.dedent(
        f"""\
        import contextlib, io, json, sys
        from forwarder.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main({argv!r})
            except SystemExit as stop:  # --help and --version exit from argparse
                code = stop.code
        assert code in (0, None), code
        watched = {watched!r}
        print(json.dumps(sorted(
            m for m in sys.modules if any(m == w or m.startswith(w + ".") for w in watched)
        )))
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=cwd,
        env={**os.environ, "FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    found: list[str] = json.loads(out)
    return found


async def test_help_and_version_load_no_configuration_or_daemon_package(tmp_path: Path) -> None:
    """--help and --version import neither pydantic, YAML, nor anything of the daemon."""
    for argv in (["--help"], ["--version"], ["status", "--help"]):
        assert await imported(argv, tmp_path, DAEMON_STACK + CONFIG_STACK) == [], argv


async def test_check_config_loads_the_configuration_but_not_the_daemon(tmp_path: Path) -> None:
    """check-config needs pydantic and YAML, and no HTTP, logging, metrics or SQLite package."""
    path = write(tmp_path, GOOD)

    assert await imported(["check-config", "-c", str(path)], tmp_path, DAEMON_STACK) == []


async def test_status_asks_the_daemon_without_loading_its_stack(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """status gets its answer from a real daemon over the standard library's HTTP client."""
    config = daemon_config(tmp_path, [forwarder_config("http://127.0.0.1:9/in", name="siem")])
    daemon = await daemons(config).start()
    argv = ["status", "-c", str(daemon.config_path)]

    assert await imported(argv, tmp_path, DAEMON_STACK) == []
    assert await daemon.terminate() == 0


async def test_operator_commands_find_the_daemon_without_validating_the_file(
    tmp_path: Path, daemons: Callable[..., DaemonProcess]
) -> None:
    """status, deliveries, dead-letters and send load neither pydantic nor the config models."""
    config = daemon_config(
        tmp_path,
        [forwarder_config("http://127.0.0.1:9/in", name="siem")],
        ingest={"token": "${FWD_TEST_ARCHIVE_TOKEN}", "unixSocket": "ingest.sock"},
    )
    daemon = await daemons(config, {"FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK"}).start()
    events = write(tmp_path, '{"type": "login"}\n', name="events.ndjson")
    config_flag = ["-c", str(daemon.config_path)]

    for argv in (
        ["status", *config_flag],
        ["deliveries", "siem", *config_flag],
        ["dead-letters", "list", *config_flag],
        ["dead-letters", "replay", "--forwarder", "siem", *config_flag],
        ["send", str(events), *config_flag],
    ):
        assert await imported(argv, tmp_path, VALIDATION) == [], argv
    assert await daemon.terminate() == 0
