"""The ``audit-forwarder`` console script, run for real in a subprocess.

These tests prove what an operator sees: exit codes, what goes to stdout and
stderr (and, with ``--json``, that errors are JSON on stdout), that a bad
configuration never produces a traceback, and that a secret token never
appears in the output of ``check-config``. Commands that need a running daemon
are in ``tests/ops/test_commands.py``; ``render`` in ``tests/ops/test_render.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder import __version__
from forwarder.config.loading import MAX_VALUES
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
BAD = f"""\
ingest:
  tokne: {SECRET}
auditLogForwarders:
  - {{kind: webhook, uri: https://a.example, token: {SECRET}}}
  - {{kind: kafka, uri: https://b.example, method: GET, token: {SECRET}}}
"""
BAD_PROBLEMS = [
    "  ingest.tokne: unknown key (did you mean token?)",
    "  auditLogForwarders[1].kind: unsupported kind 'kafka': the only kind is webhook",
    "  auditLogForwarders[1].method: must be one of POST, PUT, PATCH",
]


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


def test_check_config_accepts_a_good_file_and_names_its_forwarders(tmp_path: Path) -> None:
    """check-config on a valid file exits 0 and prints OK with the forwarder names."""
    path = write(tmp_path, GOOD)

    result = run_cli(
        "check-config",
        "--config",
        str(path),
        cwd=tmp_path,
        env={"FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: OK (2 forwarder(s): webhook-0, archive)\n"
    assert result.stderr == ""
    assert SECRET not in result.stdout + result.stderr
    assert "ENV-TOK" not in result.stdout + result.stderr


def test_check_config_short_option_and_config_from_environment(tmp_path: Path) -> None:
    """``-c FILE`` and $AUDIT_FORWARDER_CONFIG_FILE both choose the file to check."""
    path = write(tmp_path, "auditLogForwarders: [{kind: webhook, uri: https://x, name: only}]\n")

    short = run_cli("check-config", "-c", str(path), cwd=tmp_path)
    from_env = run_cli("check-config", cwd=tmp_path, env={"AUDIT_FORWARDER_CONFIG_FILE": str(path)})

    assert (short.returncode, short.stdout) == (0, f"{path}: OK (1 forwarder(s): only)\n")
    assert (from_env.returncode, from_env.stdout) == (0, f"{path}: OK (1 forwarder(s): only)\n")


def test_check_config_defaults_to_config_yaml_in_the_working_directory(tmp_path: Path) -> None:
    """Without --config, check-config reads ./config.yaml."""
    write(tmp_path, "auditLogForwarders: [{kind: webhook, uri: https://x}]\n")

    result = run_cli("check-config", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "config.yaml: OK (1 forwarder(s): webhook-0)\n"


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_2_with_every_problem_on_stderr(tmp_path: Path, command: str) -> None:
    """check-config and run both exit 2 listing every problem with its YAML path, no traceback."""
    path = write(tmp_path, BAD)

    result = run_cli(command, "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"audit-forwarder: invalid configuration {path}:",
        *BAD_PROBLEMS,
    ]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_token_typed_without_a_space_is_not_printed(tmp_path: Path) -> None:
    """A flow-style ``token:SECRET`` typo is reported without printing the secret."""
    path = write(
        tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: https://x, token:{SECRET}}}]\n"
    )

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert "auditLogForwarders[0].token:...: unknown key" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_run_with_bad_config_starts_nothing(tmp_path: Path) -> None:
    """``run`` refuses a bad configuration before it creates the buffer or binds a socket."""
    buffer_path = tmp_path / "buffer" / "buffer.db"
    socket_path = tmp_path / "ingest.sock"
    path = write(
        tmp_path,
        f"""\
        ingest: {{port: null, unixSocket: {socket_path}}}
        buffer: {{path: {buffer_path}}}
        auditLogForwarders: [{{kind: webhook, uri: https://x, method: GET}}]
        """,
    )

    result = run_cli("run", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert "auditLogForwarders[0].method: must be one of POST, PUT, PATCH" in result.stderr
    assert not buffer_path.parent.exists()
    assert not socket_path.exists()


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_missing_config_file_exits_2(tmp_path: Path, command: str) -> None:
    """A configuration path that does not exist is a one-line problem and exit code 2."""
    missing = tmp_path / "missing.yaml"

    result = run_cli(command, "--config", str(missing), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"audit-forwarder: invalid configuration {missing}:",
        f"  cannot read {missing}: No such file or directory",
    ]


BILLION_LAUGHS = "\n".join(
    [
        'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)),
        "auditLogForwarders: [{kind: webhook, uri: https://x}]",
        "",
    ]
)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(
            BILLION_LAUGHS.encode(),
            f"the configuration has more than {MAX_VALUES} values",
            id="billion-laughs",
        ),
        pytest.param(
            b"ingest: &a {x: *a}\n", "the configuration is nested more than", id="alias-cycle"
        ),
        pytest.param(b"x: " + b"[" * 5000 + b"]" * 5000, "is nested too deeply", id="deep"),
        pytest.param(
            b"x: !!python/object/apply:os.system ['touch MARKER']\n",
            "could not determine a constructor for the tag",
            id="python-tag",
        ),
        pytest.param(b"1: x\n", "1: keys should be strings", id="int-key"),
        pytest.param(b"- a\n- b\n", "the configuration must be a YAML mapping", id="list"),
        pytest.param(b"caf\xe9: 1\n", "'utf-8' codec can't decode", id="latin-1"),
        pytest.param(b"a: [\n", "is not valid YAML at line 2", id="syntax"),
    ],
)
@pytest.mark.timeout(60)
def test_hostile_config_exits_2_without_a_traceback(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Alias bombs, cycles, deep nesting, object tags and bad encodings exit 2 with a message."""
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content.replace(b"MARKER", str(marker).encode()))

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert problem in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK", "AUDIT_FORWARDER_INGEST__PORT": "http"},
            "  ingest.port (from AUDIT_FORWARDER_INGEST__PORT): input should be a valid integer",
        ),
        (
            {"FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK", "AUDIT_FORWARDER_INGEST": "{not json"},
            '  environment override: error parsing value for field "ingest"',
        ),
        ({}, "  auditLogForwarders[1].token: environment variable FWD_TEST_ARCHIVE_TOKEN"),
    ],
    ids=["bad-override", "override-not-json", "unset-variable"],
)
def test_bad_environment_exits_2_without_a_traceback(
    tmp_path: Path, env: dict[str, str], problem: str
) -> None:
    """A bad override or a missing ${VAR} is reported like a problem in the file."""
    path = write(tmp_path, GOOD)

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path, env=env)

    assert result.returncode == 2
    assert any(line.startswith(problem) for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "ENV-TOK" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["version"], ["--version"], ["-V"]])
def test_version_prints_the_package_version(tmp_path: Path, args: list[str]) -> None:
    """``version``, ``--version`` and ``-V`` print forwarder.__version__ and exit 0."""
    result = run_cli(*args, cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == f"audit-forwarder {__version__}\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args", [[], ["frobnicate"], ["check-config", "--bogus"]], ids=["none", "unknown", "option"]
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    """A missing or unknown command or option is a usage error: exit 2 with usage on stderr."""
    result = run_cli(*args, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("usage: audit-forwarder")
    assert "Traceback" not in result.stderr


# --- check-config: every problem, JSON ------------------------------------------------------

EVERY_KIND = """\
ingest: {prot: 8686}
auditLogForwarders:
  - {kind: webhook, uri: "https://a.example", format: template, template: '{"a": {{x}'}
  - {kind: webhook, uri: "https://b.example", headers: {Authorization: x}}
  - {kind: webhook, uri: "https://c.example", signingSecret: whsec_c2hvcnQ=}
"""
EVERY_KIND_PROBLEMS = [
    "ingest.prot: unknown key (did you mean port?)",
    "auditLogForwarders[0].template: unbalanced braces: '{{' without a matching '}}' on line 1",
    "auditLogForwarders[1].headers: authorization is reserved: the forwarder sets it",
    "auditLogForwarders[2].signingSecret: the signing secret is 5 bytes; use at least 16"
    " (e.g. whsec_ + base64 of 32 random bytes)",
]


def test_check_config_lists_every_kind_of_problem_in_one_run(tmp_path: Path) -> None:
    """A template, a reserved header, a short secret and an unknown key: all four, exit 2."""
    path = write(tmp_path, EVERY_KIND)

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"audit-forwarder: invalid configuration {path}:",
        *(f"  {problem}" for problem in EVERY_KIND_PROBLEMS),
    ]


def test_check_config_json_reports_success_and_every_problem(tmp_path: Path) -> None:
    """--json: the forwarders on success; on failure the problems as JSON on stdout, exit 2."""
    good = write(tmp_path, "auditLogForwarders: [{kind: webhook, uri: https://x, name: a}]\n")
    bad = write(tmp_path, EVERY_KIND, name="bad.yaml")

    accepted = run_cli("check-config", "--config", str(good), "--json", cwd=tmp_path)
    refused = run_cli("check-config", "--config", str(bad), "--json", cwd=tmp_path)

    assert accepted.returncode == 0
    assert json.loads(accepted.stdout) == {"config": str(good), "ok": True, "forwarders": ["a"]}
    assert refused.returncode == 2
    assert refused.stderr == ""
    assert json.loads(refused.stdout) == {
        "error": "invalid_configuration",
        "message": f"invalid configuration {bad}",
        "problems": [
            {"path": path, "message": message}
            for path, _, message in (p.partition(": ") for p in EVERY_KIND_PROBLEMS)
        ],
    }


def test_relative_paths_are_checked_beside_the_configuration(tmp_path: Path) -> None:
    """A relative tokenFile is read from the config's directory, whatever the working directory."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "token").write_text("from-file\n")
    path = write(
        config_dir, "auditLogForwarders: [{kind: webhook, uri: https://x, tokenFile: token}]\n"
    )

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stderr


# --- operator commands without a daemon: usage and JSON errors ------------------------------


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

HEAVY_MODULES = (
    "aiohttp.web",
    "forwarder.app",
    "forwarder.ingest.api",
    "forwarder.ingest.listeners",
    "forwarder.delivery.process",
)


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
