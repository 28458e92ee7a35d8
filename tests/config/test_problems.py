"""Validation problems: every one reported at its YAML path, with hints, never echoing values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.helpers import (
    ONE_FORWARDER,
    SECRET,
    load,
    problems,
    write,
)

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
        "auditLogForwarders[1].kind: unsupported kind 'kafka': the kinds are webhook, nats",
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
            " delivery, shutdownGraceSeconds, auditLogForwarders)",
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
        f"auditLogForwarders[0].kind: unsupported kind {kind!r}: the kinds are webhook, nats"
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
