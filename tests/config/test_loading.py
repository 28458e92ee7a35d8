"""Loading: ${VAR} expansion, AUDIT_FORWARDER_* overrides, and files that cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config.loading import load_config
from forwarder.config.settings import ENV_PREFIX
from tests.config.helpers import (
    ONE_FORWARDER,
    load,
    problems,
    problems_at,
    write,
)

# --- ${VAR} expansion -----------------------------------------------------------------------


def test_env_variables_in_string_values_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """${VAR} takes the variable even if empty; ${VAR:-default} falls back if unset or empty."""
    monkeypatch.setenv("FWD_TEST_HOST", "siem.example.com")
    monkeypatch.setenv("FWD_TEST_TOKEN", "from-env")
    monkeypatch.setenv("FWD_TEST_EMPTY", "")
    monkeypatch.delenv("FWD_TEST_UNSET", raising=False)

    settings = load(
        tmp_path,
        """\
        buffer: {path: "${FWD_TEST_UNSET:-/var/lib/af}/buffer.db"}
        logging: {level: "${FWD_TEST_EMPTY:-warning}"}
        metrics: {host: "127.0.0.${FWD_TEST_EMPTY}1"}
        auditLogForwarders:
          - kind: webhook
            uri: "https://${FWD_TEST_HOST}:8443/in?src=${FWD_TEST_UNSET:-}"
            token: ${FWD_TEST_TOKEN}
        """,
    )

    forwarder = settings.audit_log_forwarders[0]
    assert forwarder.uri == "https://siem.example.com:8443/in?src="
    assert forwarder.token is not None
    assert forwarder.token.get_secret_value() == "from-env"
    assert settings.buffer.path == Path("/var/lib/af/buffer.db")
    assert settings.logging.level == "warning"
    assert settings.metrics.host == "127.0.0.1"


def test_expanded_values_are_not_expanded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable whose value contains ${...} is inserted literally, not expanded recursively."""
    monkeypatch.setenv("FWD_TEST_TOKEN", "${HOME}")

    settings = load(
        tmp_path,
        "auditLogForwarders: [{kind: webhook, uri: 'https://a', token: '${FWD_TEST_TOKEN}'}]\n",
    )

    token = settings.audit_log_forwarders[0].token
    assert token is not None
    assert token.get_secret_value() == "${HOME}"


def test_double_dollar_escapes_a_literal_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$${VAR}`` writes ``${VAR}`` unexpanded; ``$$`` and ``${VAR}`` beside it work as usual."""
    monkeypatch.setenv("FWD_TEST_TOKEN", "from-env")
    monkeypatch.delenv("FWD_TEST_LITERAL", raising=False)

    settings = load(
        tmp_path,
        """\
        auditLogForwarders:
          - kind: webhook
            uri: "https://a.example/in?cost=$$5"
            token: "$${FWD_TEST_LITERAL}-${FWD_TEST_TOKEN}-$${"
        """,
    )

    forwarder = settings.audit_log_forwarders[0]
    assert forwarder.uri == "https://a.example/in?cost=$$5"
    assert forwarder.token is not None
    assert forwarder.token.get_secret_value() == "${FWD_TEST_LITERAL}-from-env-${"


def test_missing_env_variables_are_problems_at_their_yaml_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every unset ${VAR} without a default is a problem at the path of its value."""
    monkeypatch.delenv("FWD_TEST_MISSING_HOST", raising=False)
    monkeypatch.delenv("FWD_TEST_MISSING_TOKEN", raising=False)

    found = problems(
        tmp_path,
        """\
        auditLogForwarders:
          - {kind: webhook, uri: "https://ok.example"}
          - {kind: webhook, uri: "https://${FWD_TEST_MISSING_HOST}/x"}
          - {kind: webhook, uri: "https://c.example", token: "${FWD_TEST_MISSING_TOKEN}"}
        """,
    )

    assert found == [
        "auditLogForwarders[1].uri: environment variable FWD_TEST_MISSING_HOST is not set",
        "auditLogForwarders[2].token: environment variable FWD_TEST_MISSING_TOKEN is not set",
    ]


# --- AUDIT_FORWARDER_* overrides ------------------------------------------------------------


def test_environment_overrides_win_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUDIT_FORWARDER_<SECTION>__<KEY> replaces that key and keeps the section's other keys."""
    monkeypatch.setenv("AUDIT_FORWARDER_BUFFER__PATH", "/x")
    monkeypatch.setenv("AUDIT_FORWARDER_INGEST__MAX_REQUEST_BYTES", "123")
    monkeypatch.setenv("AUDIT_FORWARDER_INGEST__MAX_EVENT_BYTES", "100")
    monkeypatch.setenv("AUDIT_FORWARDER_INGEST__TOKEN", "ENV-SECRET")
    monkeypatch.setenv("AUDIT_FORWARDER_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("AUDIT_FORWARDER_SHUTDOWN_GRACE_SECONDS", "3")

    settings = load(
        tmp_path,
        f"""\
        ingest: {{host: 0.0.0.0, maxRequestBytes: 999999, maxEventBytes: 999}}
        buffer: {{path: {tmp_path / "file.db"}, synchronous: full}}
        logging: {{level: error}}
        shutdownGraceSeconds: 30
        {ONE_FORWARDER}""",
    )

    assert settings.buffer.path == Path("/x")
    assert settings.buffer.synchronous == "full"
    assert settings.ingest.max_request_bytes == 123
    assert settings.ingest.max_event_bytes == 100
    assert settings.ingest.host == "0.0.0.0"
    assert settings.ingest.token is not None
    assert settings.ingest.token.get_secret_value() == "ENV-SECRET"
    assert "ENV-SECRET" not in repr(settings)
    assert settings.logging.level == "debug"
    assert settings.shutdown_grace_seconds == 3.0


def test_environment_can_supply_the_forwarders_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS as JSON replaces the file's forwarder list."""
    monkeypatch.setenv(
        "AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS",
        '[{"kind": "webhook", "uri": "https://env.example", "name": "from-env"}]',
    )

    settings = load(tmp_path, ONE_FORWARDER)

    assert settings.forwarder_names() == ["from-env"]
    assert settings.audit_log_forwarders[0].uri == "https://env.example"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "AUDIT_FORWARDER_INGEST__PORT",
            "abc",
            "ingest.port (from AUDIT_FORWARDER_INGEST__PORT): input should be a valid integer,"
            " unable to parse string as an integer",
        ),
        (
            "AUDIT_FORWARDER_INGEST__MAX_REQUEST_BYTES",
            "123",
            "ingest: maxEventBytes must not exceed maxRequestBytes",
        ),
        (
            "AUDIT_FORWARDER_INGEST__PROT",
            "1",
            "ingest.prot (from AUDIT_FORWARDER_INGEST__PROT): unknown key (did you mean port?)",
        ),
        (
            "AUDIT_FORWARDER_LOGGING__LEVEL",
            "loud",
            "logging.level (from AUDIT_FORWARDER_LOGGING__LEVEL): must be one of debug, info",
        ),
    ],
    ids=["port", "cross-field", "unknown-key", "literal"],
)
def test_environment_overrides_are_validated_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    """An invalid override is a problem at the YAML path it overrides, naming the variable."""
    monkeypatch.setenv(name, value)

    found = problems(tmp_path, ONE_FORWARDER)

    assert len(found) == 1
    assert found[0].startswith(problem)


def test_a_forwarder_list_from_the_environment_is_named_in_its_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value inside AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS names that variable."""
    monkeypatch.setenv(
        "AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS", '[{"kind": "webhook", "uri": "ftp://x"}]'
    )

    found = problems(tmp_path, ONE_FORWARDER)

    assert found == [
        "auditLogForwarders[0].uri (from AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS):"
        " must be an absolute http:// or https:// URL"
    ]


def test_a_bad_value_in_the_file_is_not_blamed_on_a_variable_of_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AUDIT_FORWARDER_INGEST__HOST set, a bad ingest.port of the file is the file's."""
    monkeypatch.setenv("AUDIT_FORWARDER_INGEST__HOST", "127.0.0.1")
    monkeypatch.setenv("AUDIT_FORWARDER_LOGGING", '{"level": "loud"}')

    found = problems(tmp_path, f"ingest: {{port: abc}}\n{ONE_FORWARDER}")

    assert found == [
        "ingest.port: input should be a valid integer, unable to parse string as an integer",
        "logging.level (from AUDIT_FORWARDER_LOGGING): must be one of debug, info, warning, error",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUDIT_FORWARDER_AUDIT_LOG_FORWARDERS", "[{kind: webhook}]"),
        ("AUDIT_FORWARDER_INGEST", "not json"),
    ],
    ids=["forwarders", "ingest"],
)
def test_environment_override_that_is_not_json_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A whole-section override that is not valid JSON is a ConfigError, not a crash."""
    monkeypatch.setenv(name, value)

    found = problems(tmp_path, ONE_FORWARDER)

    assert len(found) == 1
    field = name.removeprefix(ENV_PREFIX).lower()
    assert found[0].startswith(f'environment override: error parsing value for field "{field}"')


# --- files ----------------------------------------------------------------------------------


def test_missing_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    """A configuration path that does not exist is one problem naming the path."""
    missing = tmp_path / "nope.yaml"

    assert problems_at(missing) == [f"cannot read {missing}: No such file or directory"]


def test_directory_instead_of_a_file_is_a_problem(tmp_path: Path) -> None:
    """A configuration path that is a directory is one problem, not an exception."""
    assert problems_at(tmp_path) == [f"cannot read {tmp_path}: Is a directory"]


def test_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    """A configuration in Latin-1 is refused with a decoding problem."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# café\n".encode("latin-1") + ONE_FORWARDER.encode())

    [found] = problems_at(path)

    assert found.startswith(f"cannot read {path}: 'utf-8' codec can't decode byte 0xe9")


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A file saved with a UTF-8 BOM loads like one without."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + ONE_FORWARDER.encode())

    assert load_config(path).forwarder_names() == ["webhook-0"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ingest:\n  port: 1\nauditLogForwarders: [\n", 4),
        ("ingest:\n\tport: 1\n", 2),
        ("ingest: {port: 1\nbuffer: {}\n", 2),
        ("a: b: c\n", 1),
    ],
    ids=["unclosed-list", "tab", "unclosed-map", "nested-colon"],
)
def test_invalid_yaml_is_a_problem_with_its_line(tmp_path: Path, text: str, line: int) -> None:
    """A YAML syntax error is one problem naming the file and the line."""
    path = write(tmp_path, text)

    [found] = problems_at(path)

    assert found.startswith(f"{path} is not valid YAML at line {line}, column ")


@pytest.mark.parametrize(
    "text",
    ["- kind: webhook\n  uri: https://x\n", "webhook\n", "42\n", "'{}'\n"],
    ids=["list", "string", "int", "quoted"],
)
def test_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    """A YAML list or scalar at the top is one problem, not a crash in validation."""
    assert problems(tmp_path, text) == ["the configuration must be a YAML mapping"]


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# nothing but a comment\n", "---\n", "~\n"],
    ids=["empty", "blank-lines", "comment", "document-marker", "null"],
)
def test_empty_document_asks_for_forwarders(tmp_path: Path, text: str) -> None:
    """An empty file is treated as an empty mapping: the one required key is reported."""
    assert problems(tmp_path, text) == ["auditLogForwarders: is required"]
