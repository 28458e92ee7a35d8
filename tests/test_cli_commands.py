"""The command line's other commands: usage and JSON errors, the debug receiver, light imports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli_support import GOOD, run_cli, write


def daemonless_config(tmp_path: Path) -> Path:
    """A valid configuration whose daemon is not running (socket missing, no TCP port)."""
    return write(
        tmp_path,
        f"""\
        ingest: {{port: null, unixSocket: {tmp_path / "ingest.sock"}}}
        buffer: {{path: {tmp_path / "buffer.db"}}}
        auditLogForwarders: [{{kind: webhook, uri: https://x, name: siem}}]
        """,
    )


HEAVY_MODULES = (
    "aiohttp.web",
    "forwarder.app",
    "forwarder.ingest.api",
    "forwarder.ingest.listeners",
    "forwarder.delivery.process",
)


@pytest.mark.parametrize("status", ["99", "600", "abc"])
def test_receiver_refuses_a_status_that_is_not_http(tmp_path: Path, status: str) -> None:
    """--status outside 100-599 is a usage error (exit 2), before anything listens."""
    result = run_cli("receiver", "--port", "0", "--status", status, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"audit-forwarder receiver: error: argument --status: {status!r} is not an HTTP status"
        " (100-599)"
    )
    assert result.stdout == ""


def test_receiver_on_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A port another process listens on: one line naming it, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli("receiver", "--port", str(port), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"audit-forwarder: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_receiver_help_describes_every_flag(tmp_path: Path) -> None:
    """Every receiver option has a help text with its default."""
    result = run_cli("receiver", "--help", cwd=tmp_path)

    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--host HOST address to listen on (default: 127.0.0.1)" in help_text
    assert "--port PORT port to listen on (default: 9000)" in help_text
    assert "--status STATUS HTTP status to answer every request with, 100-599 (default: 200)" in (
        help_text
    )


# --- light commands -------------------------------------------------------------------------


def test_help_version_check_config_and_render_import_neither_daemon_nor_server(
    tmp_path: Path,
) -> None:
    """--help, --version, check-config and render run without the daemon or aiohttp.web."""
    path = write(tmp_path, GOOD)
    script = textwrap.dedent(
        f"""\
        import contextlib, io, sys
        from forwarder.cli import main
        for argv in (["--help"], ["--version"], ["check-config", "-c", {str(path)!r}],
                     ["render", "archive", "-c", {str(path)!r}]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as stop:  # --help and --version exit from argparse
                    code = stop.code
            assert code in (0, None), (argv, code)
        print(sorted(m for m in sys.modules if m.startswith({HEAVY_MODULES!r})))
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            "say which dead letters to purge: --forwarder NAME, --id EVENT_ID (repeatable),"
            " or --all",
        ),
        (
            ["--all", "--id", "e-1"],
            "--all purges every dead letter: do not combine it with --forwarder or --id",
        ),
    ],
    ids=["no-selector", "all-and-id"],
)
def test_purge_selection_errors_name_the_flags(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A purge that says nothing, or two things, is a usage error in flag terms, before sending."""
    path = daemonless_config(tmp_path)

    text = run_cli("dead-letters", "purge", "--config", str(path), *args, cwd=tmp_path)
    as_json = run_cli("dead-letters", "purge", "--config", str(path), *args, "--json", cwd=tmp_path)

    assert (text.returncode, text.stdout, text.stderr) == (2, "", f"audit-forwarder: {message}\n")
    assert (as_json.returncode, as_json.stderr) == (2, "")
    assert json.loads(as_json.stdout) == {"error": "usage", "message": message}


def test_json_errors_are_one_document_on_stdout(tmp_path: Path) -> None:
    """An invalid configuration and an unreachable daemon: JSON on stdout, exit codes as text."""
    bad = write(tmp_path, "auditLogForwarders: [{kind: webhook, uri: ftp://x}]\n", name="bad.yaml")
    path = daemonless_config(tmp_path)

    invalid = run_cli("status", "--config", str(bad), "--json", cwd=tmp_path)
    down = run_cli("status", "--config", str(path), "--json", cwd=tmp_path)

    assert (invalid.returncode, invalid.stderr) == (2, "")
    assert json.loads(invalid.stdout) == {
        "error": "invalid_configuration",
        "message": f"invalid configuration {bad}",
        "problems": [
            {
                "path": "auditLogForwarders[0].uri",
                "message": "must be an absolute http:// or https:// URL",
            }
        ],
    }
    assert (down.returncode, down.stderr) == (1, "")
    error = json.loads(down.stdout)
    assert error["error"] == "daemon_unreachable"
    assert error["message"] == (
        f"cannot reach the daemon at unix:{tmp_path / 'ingest.sock'} (is it running?):"
        " No such file or directory"
    )


# --- the debug receiver ---------------------------------------------------------------------


def test_buffer_errors_are_json_with_json(tmp_path: Path) -> None:
    """``buffer salvage --json`` with no buffer file: a JSON error on stdout, exit 1."""
    path = daemonless_config(tmp_path)

    result = run_cli("buffer", "salvage", "--config", str(path), "--json", cwd=tmp_path)

    assert (result.returncode, result.stderr) == (1, "")
    error = json.loads(result.stdout)
    assert (error["error"], error["kind"]) == ("buffer_unusable", "missing")
    assert error["message"].startswith(f"buffer {tmp_path / 'buffer.db'} does not exist")


@pytest.mark.parametrize(
    "args", [["deliveries", "siem", "--limit", "0"], ["dead-letters", "list", "--limit", "1001"]]
)
def test_a_limit_outside_1_to_1000_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """--limit is checked where it is typed (exit 2), not relayed from the admin API."""
    path = daemonless_config(tmp_path)

    result = run_cli(*args, "--config", str(path), cwd=tmp_path)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1].endswith(
        f"error: argument --limit: {args[-1]!r} is not a number of rows (1-1000)"
    )
