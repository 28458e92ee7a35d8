"""The ``audit-forwarder`` console script, run for real in a subprocess.

These tests prove what an operator sees: exit codes, what goes to stdout and
stderr (and, with ``--json``, that errors are JSON on stdout), that a bad
configuration never produces a traceback, and that a secret token never
appears in the output of ``check-config``. Commands that need a running daemon
are in ``tests/ops/test_commands.py``; ``render`` in ``tests/ops/test_render.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwarder import __version__
from forwarder.config.loading import MAX_VALUES
from tests.cli_support import GOOD, SECRET, run_cli, write

BAD = f"""\
ingest:
  tokne: {SECRET}
auditLogForwarders:
  - {{kind: webhook, uri: https://a.example, token: {SECRET}}}
  - {{kind: kafka, uri: https://b.example, method: GET, token: {SECRET}}}
"""
BAD_PROBLEMS = [
    "  ingest.tokne: unknown key (did you mean token?)",
    "  auditLogForwarders[1].kind: unsupported kind 'kafka': the kinds are webhook, nats",
    "  auditLogForwarders[1].method: must be one of POST, PUT, PATCH",
]

BILLION_LAUGHS = "\n".join(
    [
        'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)),
        "auditLogForwarders: [{kind: webhook, uri: https://x}]",
        "",
    ]
)


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


HOSTILE = [
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
]


@pytest.mark.parametrize(("content", "problem"), HOSTILE)
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


# Files the operator commands' locator reads (ingest is fine) but the full loader refuses.
NO_DAEMON = "ingest: {port: null, unixSocket: ./nothing.sock}\n"
BROKEN_ELSEWHERE = [
    pytest.param(
        (NO_DAEMON + GOOD).encode(), {}, "auditLogForwarders[1].token", id="unset-variable"
    ),
    pytest.param(
        (
            NO_DAEMON + "auditLogForwarders: [{kind: webhook, uri: https://x, method: GET}]\n"
        ).encode(),
        {},
        "auditLogForwarders[0].method",
        id="bad-forwarder",
    ),
    pytest.param(
        (NO_DAEMON + "auditLogForwarders: [{kind: webhook, uri: https://x}]\n").encode(),
        {"AUDIT_FORWARDER_LOGGING__LEVEL": "loud"},
        "logging.level (from AUDIT_FORWARDER_LOGGING__LEVEL)",
        id="bad-override-elsewhere",
    ),
    pytest.param(
        GOOD.encode(),
        {"FWD_TEST_ARCHIVE_TOKEN": "ENV-TOK", "AUDIT_FORWARDER_INGEST__PORT": "http"},
        "ingest.port (from AUDIT_FORWARDER_INGEST__PORT)",
        id="bad-ingest-override",
    ),
]


@pytest.mark.parametrize(
    ("content", "env", "problem"),
    [pytest.param(p.values[0], {}, p.values[1], id=p.id) for p in HOSTILE] + BROKEN_ELSEWHERE,
)
@pytest.mark.timeout(60)
def test_operator_commands_report_a_bad_file_exactly_as_check_config(
    tmp_path: Path, content: bytes, env: dict[str, str], problem: str
) -> None:
    """status and deliveries on a file that does not load: check-config's report, exit 2."""
    path = tmp_path / "config.yaml"
    path.write_bytes(content.replace(b"MARKER", str(tmp_path / "executed").encode()))
    config = ("--config", str(path))

    check = run_cli("check-config", *config, cwd=tmp_path, env=env)
    status = run_cli("status", *config, cwd=tmp_path, env=env)
    check_json = run_cli("check-config", *config, "--json", cwd=tmp_path, env=env)
    deliveries_json = run_cli("deliveries", "siem", *config, "--json", cwd=tmp_path, env=env)

    assert problem in check.stderr
    assert (status.returncode, status.stdout, status.stderr) == (2, "", check.stderr)
    assert deliveries_json.returncode == check_json.returncode == 2
    assert deliveries_json.stdout == check_json.stdout
    assert not (tmp_path / "executed").exists()


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
