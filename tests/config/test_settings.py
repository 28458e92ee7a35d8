"""Configuration: YAML loading, validation with YAML paths, environment, hostile input.

Every test writes a real file into ``tmp_path`` and calls ``load_config`` on it;
environment variables are set with ``monkeypatch.setenv``, which is the real
input of the code under test, not a mock of it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from forwarder.config.loading import MAX_DEPTH, MAX_VALUES, load_config
from forwarder.config.settings import ENV_PREFIX, Settings
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


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without AUDIT_FORWARDER_* variables from the outer environment."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


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


# --- loading and defaults -------------------------------------------------------------------


def test_chainloop_minimal_example_loads_with_every_default(tmp_path: Path) -> None:
    """Chainloop's four-line example loads, and every omitted setting takes its default."""
    settings = load(tmp_path, CHAINLOOP_EXAMPLE)

    assert settings.ingest.host == "127.0.0.1"
    assert settings.ingest.port == 8686
    assert settings.ingest.unix_socket is None
    assert settings.ingest.token is None
    assert settings.ingest.max_request_bytes == 10485760
    assert settings.ingest.max_event_bytes == 1048576
    assert settings.buffer.path == Path("./data/buffer.db")
    assert settings.buffer.synchronous == "normal"
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
    assert (settings.logging.level, settings.logging.format) == ("info", "json")
    [forwarder] = settings.audit_log_forwarders
    assert forwarder.name == "webhook-0"
    assert forwarder.kind == "webhook"
    assert forwarder.uri == "https://webhook.site"
    assert forwarder.token is not None
    assert forwarder.token.get_secret_value() == SECRET
    assert forwarder.method == "POST"
    assert forwarder.timeout_seconds == 5.0
    assert forwarder.retry.initial_backoff_seconds == 1.0
    assert forwarder.retry.max_backoff_seconds == 300.0


def test_method_defaults_to_post(tmp_path: Path) -> None:
    """A forwarder without ``method`` sends POST."""
    settings = load(tmp_path, ONE_FORWARDER)

    assert settings.audit_log_forwarders[0].method == "POST"


def test_shipped_example_config_is_valid() -> None:
    """config.example.yaml in the repository passes validation as shipped."""
    settings = load_config(REPO / "config.example.yaml")

    assert settings.forwarder_names() == ["local-receiver"]
    assert settings.logging.format == "console"


def test_every_key_of_the_reference_is_accepted(tmp_path: Path) -> None:
    """A file setting every documented key in camelCase loads with those values."""
    token_file = write(tmp_path, "archive-token\n", name="archive.token")
    settings = load(
        tmp_path,
        f"""\
        ingest:
          host: 0.0.0.0
          port: 0
          unixSocket: {tmp_path / "ingest.sock"}
          token: ingest-token
          maxRequestBytes: 2048
          maxEventBytes: 1024
        buffer:
          path: {tmp_path / "buffer.db"}
          synchronous: FULL
        metrics:
          host: 127.0.0.1
          port: 65535
        logging:
          level: DEBUG
          format: Console
        shutdownGraceSeconds: 2.5
        auditLogForwarders:
          - name: siem
            kind: webhook
            uri: https://siem.example.com/ingest
            token: siem-token
            method: put
            timeoutSeconds: 0.5
            retry:
              initialBackoffSeconds: 0.1
              maxBackoffSeconds: 0.1
          - name: archive
            kind: webhook
            uri: http://127.0.0.1:9000/archive?x=1
            tokenFile: {token_file}
            method: PATCH
        """,
    )

    assert settings.ingest.host == "0.0.0.0"
    assert settings.ingest.port == 0
    assert settings.ingest.unix_socket == tmp_path / "ingest.sock"
    assert (settings.ingest.max_request_bytes, settings.ingest.max_event_bytes) == (2048, 1024)
    assert settings.buffer.path == tmp_path / "buffer.db"
    assert settings.buffer.synchronous == "full"
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 65535)
    assert (settings.logging.level, settings.logging.format) == ("debug", "console")
    assert settings.shutdown_grace_seconds == 2.5
    siem, archive = settings.audit_log_forwarders
    assert (siem.name, siem.method, siem.timeout_seconds) == ("siem", "PUT", 0.5)
    assert siem.retry.initial_backoff_seconds == siem.retry.max_backoff_seconds == 0.1
    assert (archive.name, archive.method, archive.uri) == (
        "archive",
        "PATCH",
        "http://127.0.0.1:9000/archive?x=1",
    )
    assert sorted(settings.secrets()) == ["archive-token", "ingest-token", "siem-token"]


def test_unnamed_forwarders_are_named_by_kind_and_position(tmp_path: Path) -> None:
    """Forwarders without ``name`` are called webhook-<index>, next to explicit names."""
    settings = load(
        tmp_path,
        """\
        auditLogForwarders:
          - {kind: webhook, uri: "https://a.example"}
          - {kind: webhook, uri: "https://b.example"}
          - {kind: webhook, uri: "https://c.example", name: siem}
          - {kind: webhook, uri: "https://d.example"}
        """,
    )

    assert settings.forwarder_names() == ["webhook-0", "webhook-1", "siem", "webhook-3"]


@pytest.mark.parametrize(
    ("names", "duplicate"),
    [
        (["siem", "siem"], "siem"),
        ([None, "webhook-0"], "webhook-0"),
        (["webhook-1", None], "webhook-1"),
    ],
)
def test_forwarder_names_must_be_unique(
    tmp_path: Path, names: list[str | None], duplicate: str
) -> None:
    """Two forwarders with the same name, explicit or defaulted, are a problem."""
    entries = "".join(
        f"  - {{kind: webhook, uri: 'https://x.example'{f', name: {name}' if name else ''}}}\n"
        for name in names
    )

    found = problems(tmp_path, f"auditLogForwarders:\n{entries}")

    assert found == [f"auditLogForwarders: forwarder name {duplicate!r} is used twice"]


@pytest.mark.parametrize(
    "name",
    ["has space", "-leading-dash", "x" * 64, "ünïcode", ""],
    ids=["space", "leading-dash", "too-long", "non-ascii", "empty"],
)
def test_forwarder_name_must_match_the_pattern(tmp_path: Path, name: str) -> None:
    """A forwarder name outside [A-Za-z0-9][A-Za-z0-9_.-]{0,62} is a problem at its path."""
    found = problems(
        tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: 'https://x', name: '{name}'}}]\n"
    )

    assert len(found) == 1
    assert found[0].startswith("auditLogForwarders[0].name: string should match pattern")


@pytest.mark.parametrize(
    ("written", "method"), [("post", "POST"), ("Put", "PUT"), ("pAtCh", "PATCH")]
)
def test_method_is_case_insensitive(tmp_path: Path, written: str, method: str) -> None:
    """``method`` is accepted in any case and stored in upper case."""
    settings = load(
        tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: 'https://x', method: {written}}}]\n"
    )

    assert settings.audit_log_forwarders[0].method == method


# --- validation problems --------------------------------------------------------------------


def test_every_problem_is_reported_with_its_yaml_path(tmp_path: Path) -> None:
    """All problems of a file are reported at once, each with its YAML path, in file order."""
    found = problems(
        tmp_path,
        """\
        ingest:
          prot: 8686
          port: 70000
        logging:
          level: loud
        auditLogForwarders:
          - {kind: webhook, uri: "https://a.example", name: same}
          - kind: kafka
            uri: ftp://b.example
            method: GET
            tokne: x
          - {kind: webhook, uri: "https://c.example", name: same}
        """,
    )

    assert found == [
        "ingest.port: input should be less than or equal to 65535",
        "ingest.prot: unknown key (did you mean port?)",
        "logging.level: must be one of debug, info, warning, error",
        "auditLogForwarders[1].kind: unsupported kind 'kafka': the only kind is webhook",
        "auditLogForwarders[1].uri: must be an absolute http:// or https:// URL",
        "auditLogForwarders[1].method: must be one of POST, PUT, PATCH",
        "auditLogForwarders[1].tokne: unknown key (did you mean token?)",
    ]


def test_duplicate_names_are_reported_with_problems_elsewhere(tmp_path: Path) -> None:
    """A duplicate name is reported together with a problem in another section."""
    found = problems(
        tmp_path,
        """\
        metrics: {port: -1}
        auditLogForwarders:
          - {kind: webhook, uri: "https://a.example", name: same}
          - {kind: webhook, uri: "https://b.example", name: same}
        """,
    )

    assert found == [
        "metrics.port: input should be greater than or equal to 0",
        "auditLogForwarders: forwarder name 'same' is used twice",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"ingset: {{}}\n{ONE_FORWARDER}", "ingset: unknown key (did you mean ingest?)"),
        (f"ingest: {{prot: 1}}\n{ONE_FORWARDER}", "ingest.prot: unknown key (did you mean port?)"),
        (
            f"buffer: {{synchronus: full}}\n{ONE_FORWARDER}",
            "buffer.synchronus: unknown key (did you mean synchronous?)",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: 'https://x', tokenfile: /t}]\n",
            "auditLogForwarders[0].tokenfile: unknown key (did you mean tokenFile?)",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: 'https://x', retry: {maxBackof: 3}}]\n",
            "auditLogForwarders[0].retry.maxBackof: unknown key (did you mean maxBackoffSeconds?)",
        ),
        (
            f"zzzqqq: 1\n{ONE_FORWARDER}",
            "zzzqqq: unknown key (known keys: ingest, buffer, metrics, logging,"
            " shutdownGraceSeconds, auditLogForwarders)",
        ),
    ],
    ids=["top", "ingest", "buffer", "forwarder", "retry", "no-close-match"],
)
def test_unknown_keys_are_problems_with_a_hint(tmp_path: Path, text: str, problem: str) -> None:
    """An unknown key at any level is a problem naming the closest known key (or all of them)."""
    assert problems(tmp_path, text) == [problem]


def test_missing_space_after_a_colon_never_echoes_the_value(tmp_path: Path) -> None:
    """``{token:SECRET}`` is one unknown key; its problem shows only the part before the colon."""
    found = problems(
        tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: 'https://x', token:{SECRET}}}]\n"
    )

    assert found == ["auditLogForwarders[0].token:...: unknown key (missing a space after ':'?)"]


@pytest.mark.parametrize("kind", ["kafka", "Webhook", "http"])
def test_kind_other_than_webhook_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    """A kind that is not exactly ``webhook`` is a problem that names the kind given."""
    found = problems(tmp_path, f"auditLogForwarders: [{{kind: {kind}, uri: 'https://x'}}]\n")

    assert found == [
        f"auditLogForwarders[0].kind: unsupported kind {kind!r}: the only kind is webhook"
    ]


def test_kind_and_uri_are_required(tmp_path: Path) -> None:
    """A forwarder without ``kind`` and ``uri`` gets one problem for each."""
    found = problems(tmp_path, "auditLogForwarders: [{method: POST}]\n")

    assert found == [
        "auditLogForwarders[0].kind: is required",
        "auditLogForwarders[0].uri: is required",
    ]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://files.example/x", "must be an absolute http:// or https:// URL"),
        ("/relative/path", "must be an absolute http:// or https:// URL"),
        ("webhook.site", "must be an absolute http:// or https:// URL"),
        ("https:///no-host", "must be an absolute http:// or https:// URL"),
        ("", "must be an absolute http:// or https:// URL"),
        ("https://a.example:99999/", "invalid port: Port out of range 0-65535"),
        ("https://a.example:http/", "invalid port: Port could not be cast to integer value"),
    ],
    ids=["ftp", "relative", "no-scheme", "no-host", "empty", "port-range", "port-text"],
)
def test_uri_must_be_absolute_http_with_host_and_valid_port(
    tmp_path: Path, uri: str, message: str
) -> None:
    """A uri that is not http(s), has no host or has a bad port is a problem at its path."""
    found = problems(tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: '{uri}'}}]\n")

    assert len(found) == 1
    assert found[0].startswith(f"auditLogForwarders[0].uri: {message}")


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:8080/x?y=1", "https://[::1]:443/", "HTTPS://Example.COM", "https://h:0"],
)
def test_valid_uris_are_accepted_unchanged(tmp_path: Path, uri: str) -> None:
    """http(s) URLs with a host, IPv6 literal or explicit port are accepted as written."""
    settings = load(tmp_path, f"auditLogForwarders: [{{kind: webhook, uri: '{uri}'}}]\n")

    assert settings.audit_log_forwarders[0].uri == uri


def test_token_and_token_file_are_mutually_exclusive(tmp_path: Path) -> None:
    """Setting both token and tokenFile on one forwarder is a problem at that forwarder."""
    token_file = write(tmp_path, "from-file\n", name="token")

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a", token: inline}}
          - {{kind: webhook, uri: "https://b", token: inline, tokenFile: {token_file}}}
        """,
    )

    assert found == ["auditLogForwarders[1]: set token or tokenFile, not both"]


@pytest.mark.parametrize("content", ["file-token\n", "file-token", "file-token\r\n"])
def test_token_file_is_read_without_its_trailing_newline(tmp_path: Path, content: str) -> None:
    """tokenFile's content becomes the token, without the trailing newline."""
    token_file = tmp_path / "token"
    token_file.write_bytes(content.encode())

    settings = load(
        tmp_path,
        f"auditLogForwarders: [{{kind: webhook, uri: 'https://a', tokenFile: {token_file}}}]\n",
    )

    token = settings.audit_log_forwarders[0].token
    assert token is not None
    assert token.get_secret_value() == "file-token"
    assert settings.secrets() == ["file-token"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        (b"", "the file is empty"),
        (b"\n", "the file is empty"),
        (b"\xff\xfe\xfa", "cannot read {path}: 'utf-8' codec can't decode"),
        ("directory", "cannot read {path}: Is a directory"),
    ],
    ids=["missing", "empty", "newline-only", "not-utf8", "directory"],
)
def test_unusable_token_file_is_a_problem_at_its_path(
    tmp_path: Path, content: bytes | str | None, message: str
) -> None:
    """A tokenFile that is missing, empty or unreadable is a problem at ``...tokenFile``."""
    token_file = tmp_path / "token"
    if content == "directory":
        token_file.mkdir()
    elif isinstance(content, bytes):
        token_file.write_bytes(content)

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a", token: fine}}
          - {{kind: webhook, uri: "https://b", tokenFile: {token_file}}}
        """,
    )

    assert len(found) == 1
    assert found[0].startswith(
        f"auditLogForwarders[1].tokenFile: {message.format(path=token_file)}"
    )


def test_every_unusable_token_file_is_reported(tmp_path: Path) -> None:
    """Two broken tokenFiles give two problems, one per forwarder."""
    empty = write(tmp_path, "", name="empty")

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a", tokenFile: {tmp_path / "missing"}}}
          - {{kind: webhook, uri: "https://b", tokenFile: {empty}}}
        """,
    )

    assert [problem.split(":")[0] for problem in found] == [
        "auditLogForwarders[0].tokenFile",
        "auditLogForwarders[1].tokenFile",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ingest: {port: 1}\n", "auditLogForwarders: is required"),
        ("auditLogForwarders: []\n", "auditLogForwarders: list should have at least 1 item"),
        ("auditLogForwarders: null\n", "auditLogForwarders: input should be a valid list"),
    ],
    ids=["absent", "empty-list", "null"],
)
def test_at_least_one_forwarder_is_required(tmp_path: Path, text: str, problem: str) -> None:
    """A configuration without a forwarder is refused at ``auditLogForwarders``."""
    found = problems(tmp_path, text)

    assert len(found) == 1
    assert found[0].startswith(problem)


def test_ingest_needs_a_port_or_a_unix_socket(tmp_path: Path) -> None:
    """Disabling the TCP port is a problem unless a Unix socket is configured."""
    found = problems(tmp_path, f"ingest: {{port: null}}\n{ONE_FORWARDER}")
    settings = load(
        tmp_path, f"ingest: {{port: null, unixSocket: {tmp_path / 's'}}}\n{ONE_FORWARDER}"
    )

    assert found == ["ingest: at least one of port and unixSocket must be set"]
    assert settings.ingest.port is None
    assert settings.ingest.unix_socket == tmp_path / "s"


def test_max_event_bytes_must_not_exceed_max_request_bytes(tmp_path: Path) -> None:
    """maxEventBytes above maxRequestBytes is a problem; equal is fine."""
    found = problems(
        tmp_path, f"ingest: {{maxRequestBytes: 10, maxEventBytes: 11}}\n{ONE_FORWARDER}"
    )
    settings = load(
        tmp_path, f"ingest: {{maxRequestBytes: 10, maxEventBytes: 10}}\n{ONE_FORWARDER}"
    )

    assert found == ["ingest: maxEventBytes must not exceed maxRequestBytes"]
    assert settings.ingest.max_event_bytes == settings.ingest.max_request_bytes == 10


@pytest.mark.parametrize("section", ["ingest", "metrics"])
def test_ports_must_be_within_0_and_65535(tmp_path: Path, section: str) -> None:
    """Ports 0 and 65535 are accepted; -1 and 65536 are problems at the port's path."""
    low = problems(tmp_path, f"{section}: {{port: -1}}\n{ONE_FORWARDER}")
    high = problems(tmp_path, f"{section}: {{port: 65536}}\n{ONE_FORWARDER}")
    zero = load(tmp_path, f"{section}: {{port: 0}}\n{ONE_FORWARDER}")
    top = load(tmp_path, f"{section}: {{port: 65535}}\n{ONE_FORWARDER}")

    assert low == [f"{section}.port: input should be greater than or equal to 0"]
    assert high == [f"{section}.port: input should be less than or equal to 65535"]
    assert getattr(zero, section).port == 0
    assert getattr(top, section).port == 65535


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            f"ingest: {{port: eighty}}\n{ONE_FORWARDER}",
            "ingest.port: input should be a valid integer, unable to parse string as an integer",
        ),
        (
            f"ingest: {{port: 80.5}}\n{ONE_FORWARDER}",
            "ingest.port: input should be a valid integer, got a number with a fractional part",
        ),
        (
            f"ingest: [port, 8686]\n{ONE_FORWARDER}",
            "ingest: input should be a valid dictionary or instance of IngestConfig",
        ),
        (
            f"ingest: {{maxRequestBytes: 0}}\n{ONE_FORWARDER}",
            "ingest.maxRequestBytes: input should be greater than 0",
        ),
        (
            f"buffer: {{synchronous: sometimes}}\n{ONE_FORWARDER}",
            "buffer.synchronous: must be one of normal, full",
        ),
        (
            f"logging: {{format: xml}}\n{ONE_FORWARDER}",
            "logging.format: must be one of json, console",
        ),
        (
            f"shutdownGraceSeconds: -1\n{ONE_FORWARDER}",
            "shutdownGraceSeconds: input should be greater than 0",
        ),
        (
            "auditLogForwarders: {kind: webhook}\n",
            "auditLogForwarders: input should be a valid list",
        ),
        (
            "auditLogForwarders: [https://x]\n",
            "auditLogForwarders[0]: input should be a valid dictionary or instance of",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: [https://x]}]\n",
            "auditLogForwarders[0].uri: input should be a valid string",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, token: {a: b}}]\n",
            "auditLogForwarders[0].token: input should be a valid string",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, timeoutSeconds: soon}]\n",
            "auditLogForwarders[0].timeoutSeconds: input should be a valid number",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, retry: [1, 2]}]\n",
            "auditLogForwarders[0].retry: input should be a valid dictionary or instance of",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, method: 1}]\n",
            "auditLogForwarders[0].method: must be one of POST, PUT, PATCH",
        ),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x,"
            " retry: {initialBackoffSeconds: 5, maxBackoffSeconds: 1}}]\n",
            "auditLogForwarders[0].retry: maxBackoffSeconds must be >= initialBackoffSeconds",
        ),
    ],
    ids=[
        "port-text",
        "port-fraction",
        "ingest-list",
        "zero-bytes",
        "synchronous",
        "log-format",
        "negative-grace",
        "forwarders-mapping",
        "forwarder-string",
        "uri-list",
        "token-mapping",
        "timeout-text",
        "retry-list",
        "method-int",
        "backoff-order",
    ],
)
def test_wrong_types_and_values_are_problems_at_their_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A value of the wrong type or out of range is one problem at its YAML path."""
    found = problems(tmp_path, text)

    assert len(found) == 1
    assert found[0].startswith(problem)


# --- secrets --------------------------------------------------------------------------------


def test_repr_and_str_of_settings_never_contain_a_token(tmp_path: Path) -> None:
    """Inline, file and ingest tokens are loaded but absent from repr() and str()."""
    token_file = write(tmp_path, "FILE-SECRET\n", name="token")
    settings = load(
        tmp_path,
        f"""\
        ingest: {{token: INGEST-SECRET}}
        auditLogForwarders:
          - {{kind: webhook, uri: "https://a", token: {SECRET}}}
          - {{kind: webhook, uri: "https://b", tokenFile: {token_file}}}
        """,
    )

    assert sorted(settings.secrets()) == sorted([SECRET, "FILE-SECRET", "INGEST-SECRET"])
    for rendered in (repr(settings), str(settings), repr(settings.audit_log_forwarders)):
        for secret in settings.secrets():
            assert secret not in rendered
    assert "**********" in repr(settings)


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
            "ingest.port: input should be a valid integer, unable to parse string as an integer",
        ),
        (
            "AUDIT_FORWARDER_INGEST__MAX_REQUEST_BYTES",
            "123",
            "ingest: maxEventBytes must not exceed maxRequestBytes",
        ),
        (
            "AUDIT_FORWARDER_INGEST__PROT",
            "1",
            "ingest.prot: unknown key (did you mean port?)",
        ),
        ("AUDIT_FORWARDER_LOGGING__LEVEL", "loud", "logging.level: must be one of debug, info"),
    ],
    ids=["port", "cross-field", "unknown-key", "literal"],
)
def test_environment_overrides_are_validated_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    """An invalid override is a problem at the YAML path it overrides."""
    monkeypatch.setenv(name, value)

    found = problems(tmp_path, ONE_FORWARDER)

    assert len(found) == 1
    assert found[0].startswith(problem)


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


# --- hostile input --------------------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
auditLogForwarders: [{kind: webhook, uri: "https://x", name: *i}]
"""


@pytest.mark.timeout(10)
def test_billion_laughs_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """A 1 KB alias bomb (387 million strings once expanded) is refused, not walked."""
    found = problems(tmp_path, BILLION_LAUGHS)

    assert found == [
        f"the configuration has more than {MAX_VALUES} values, counting each use of an alias"
    ]


@pytest.mark.timeout(10)
def test_alias_bomb_of_mappings_is_refused_at_once(tmp_path: Path) -> None:
    """The same bomb built from mappings, inside a valid section, is refused too."""
    levels = ["a0: &a0 {k0: lol, k1: lol, k2: lol, k3: lol, k4: lol, k5: lol, k6: lol}"]
    for level in range(1, 10):
        keys = ", ".join(f"k{key}: *a{level - 1}" for key in range(7))
        levels.append(f"a{level}: &a{level} {{{keys}}}")
    text = "ingest:\n" + "".join(f"  {line}\n" for line in levels) + ONE_FORWARDER

    found = problems(tmp_path, text)

    assert found == [
        f"the configuration has more than {MAX_VALUES} values, counting each use of an alias"
    ]


@pytest.mark.parametrize(
    "text",
    [
        f"loop: &a [*a]\n{ONE_FORWARDER}",
        f"ingest: &a {{self: *a}}\n{ONE_FORWARDER}",
        "auditLogForwarders: &a [*a]\n",
    ],
    ids=["unknown-key", "section", "forwarders"],
)
@pytest.mark.timeout(10)
def test_alias_that_refers_to_itself_is_refused(tmp_path: Path, text: str) -> None:
    """A cyclic document built with an alias is one problem, not a RecursionError."""
    assert problems(tmp_path, text) == [
        f"the configuration is nested more than {MAX_DEPTH} levels deep"
        " (or an alias refers to itself)"
    ]


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    """Anchors, aliases and ``<<:`` merge keys for shared settings load as intended."""
    settings = load(
        tmp_path,
        """\
        auditLogForwarders:
          - &base
            name: a
            kind: webhook
            uri: https://a.example
            method: PUT
            retry: &fast {initialBackoffSeconds: 0.1, maxBackoffSeconds: 2}
          - <<: *base
            name: b
            uri: https://b.example
          - {kind: webhook, uri: "https://c.example", retry: *fast}
        """,
    )

    a, b, c = settings.audit_log_forwarders
    assert settings.forwarder_names() == ["a", "b", "webhook-2"]
    assert (b.uri, b.method) == ("https://b.example", "PUT")
    assert a.retry == b.retry == c.retry
    assert c.retry.max_backoff_seconds == 2.0


@pytest.mark.parametrize(
    ("depth", "problem"),
    [
        (MAX_DEPTH + 1, "the configuration is nested more than {max_depth} levels deep"),
        (200, "the configuration is nested more than {max_depth} levels deep"),
        (5000, "{path} is nested too deeply to parse"),
    ],
    ids=["past-our-limit", "deep", "past-the-parser"],
)
@pytest.mark.parametrize(
    ("opening", "closing"), [("[", "]"), ("{a: ", "}")], ids=["lists", "mappings"]
)
@pytest.mark.timeout(10)
def test_deep_nesting_is_refused_without_a_recursion_error(
    tmp_path: Path, depth: int, problem: str, opening: str, closing: str
) -> None:
    """Very deep nesting is one problem, whether the YAML parser or our walk would overflow."""
    path = write(tmp_path, f"{ONE_FORWARDER}deep: {opening * depth}1{closing * depth}\n")

    [found] = problems_at(path)

    assert found.startswith(problem.format(max_depth=MAX_DEPTH, path=path))


def test_many_forwarders_below_the_limits_load(tmp_path: Path) -> None:
    """Two hundred forwarders, far more than any real file, are within the limits."""
    entries = "".join(
        f"  - {{kind: webhook, uri: 'https://h{index}.example', retry: {{maxBackoffSeconds: 9}}}}\n"
        for index in range(200)
    )

    settings = load(tmp_path, f"auditLogForwarders:\n{entries}")

    assert settings.forwarder_names()[-1] == "webhook-199"


@pytest.mark.timeout(30)
def test_huge_strings_are_validated_and_never_echoed(tmp_path: Path) -> None:
    """Megabyte strings are refused or accepted on their merits, and problems stay short."""
    huge = "x" * 1_000_000

    found = problems(
        tmp_path,
        f"""\
        auditLogForwarders:
          - {{kind: {huge}, uri: "https://a"}}
          - {{kind: webhook, uri: "https://b", name: {huge}}}
          - {{kind: webhook, uri: "https://c", method: {huge}}}
        """,
    )
    settings = load(
        tmp_path,
        f"auditLogForwarders: [{{kind: webhook, uri: 'https://a/{huge}', token: {huge}}}]\n",
    )

    assert [problem.split(":")[0] for problem in found] == [
        "auditLogForwarders[0].kind",
        "auditLogForwarders[1].name",
        "auditLogForwarders[2].method",
    ]
    assert all(len(problem) < 200 for problem in found)
    assert settings.secrets() == [huge]
    assert huge not in repr(settings.audit_log_forwarders[0].token)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"1: one\n{ONE_FORWARDER}", "1: keys should be strings"),
        (f"null: nothing\n{ONE_FORWARDER}", "None: keys should be strings"),
        (f"true: yes\n{ONE_FORWARDER}", "True: keys should be strings"),
        (f"ingest: {{8686: port}}\n{ONE_FORWARDER}", "ingest[8686]: keys should be strings"),
        (
            "auditLogForwarders: [{kind: webhook, uri: https://x, 3: 4}]\n",
            "auditLogForwarders[0][3]: keys should be strings",
        ),
    ],
    ids=["int", "null", "bool", "nested", "in-forwarder"],
)
def test_non_string_keys_are_problems(tmp_path: Path, text: str, problem: str) -> None:
    """Integer, null and boolean keys are problems, not a TypeError from keyword arguments."""
    assert problems(tmp_path, text) == [problem]


def test_unhashable_complex_key_is_a_yaml_problem(tmp_path: Path) -> None:
    """A YAML complex key (``? [a, b]``) is one YAML problem with its line."""
    path = write(tmp_path, f"{ONE_FORWARDER}? [a, b]\n: value\n")

    [found] = problems_at(path)

    assert found.startswith(f"{path} is not valid YAML at line 2, column ")
    assert "unhashable key" in found


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!!python/object:pathlib.Path {{}}",
        "!custom value",
    ],
    ids=["apply", "new", "name", "object", "custom"],
)
def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path, tagged: str) -> None:
    """Python object and unknown tags are refused as a YAML problem and never executed."""
    marker = tmp_path / "executed"
    path = write(
        tmp_path,
        "auditLogForwarders:\n  - kind: webhook\n    uri: https://x\n"
        f"    token: {tagged.format(marker=marker)}\n",
    )

    [found] = problems_at(path)

    assert found.startswith(f"{path} is not valid YAML at line 4, column 12: ")
    assert "could not determine a constructor for the tag" in found
    assert not marker.exists()
