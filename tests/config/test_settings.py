"""Configuration models: the Chainloop shape, defaults, names, and secrets kept out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config.loading import load_config
from tests.config.helpers import (
    CHAINLOOP_EXAMPLE,
    ONE_FORWARDER,
    REPO,
    SECRET,
    load,
    problems,
    write,
)

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
