"""Relative paths in a configuration are relative to the file's directory, not the cwd.

Each test loads a real file from another working directory (``chdir`` to an
unrelated directory) and checks where every path points.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from forwarder.config.loading import load_config
from tests.config.helpers import problems_at, write


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work from a directory that is not the configuration's."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def test_every_relative_path_resolves_beside_the_configuration(
    tmp_path: Path, elsewhere: Path
) -> None:
    """buffer.path, unixSocket, tokenFile, signingSecretFile and TLS files: the file's directory."""
    config_dir = tmp_path / "etc"
    secrets = config_dir / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "ingest").write_text("ingest-token\n")
    (secrets / "token").write_text("forwarder-token\n")
    (secrets / "signing").write_text("whsec_MDEyMzQ1Njc4OWFiY2RlZg==\n")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(secrets / "ca.pem"))
    path = write(
        config_dir,
        """\
        ingest: {unixSocket: run/ingest.sock, tokenFile: secrets/ingest}
        buffer: {path: data/buffer.db}
        auditLogForwarders:
          - kind: webhook
            uri: https://a.example
            tokenFile: ./secrets/token
            signingSecretFile: secrets/signing
            tls: {caFile: secrets/ca.pem}
        """,
    )

    settings = load_config(path)

    spec = settings.audit_log_forwarders[0]
    assert settings.buffer.path == config_dir / "data" / "buffer.db"
    assert settings.ingest.unix_socket == config_dir / "run" / "ingest.sock"
    assert settings.ingest.token_file == secrets / "ingest"
    assert settings.ingest.token is not None
    assert settings.ingest.token.get_secret_value() == "ingest-token"
    assert spec.token_file == secrets / "token"
    assert spec.token is not None
    assert spec.token.get_secret_value() == "forwarder-token"
    assert spec.signing_secret_file == secrets / "signing"
    assert spec.tls.ca_file == secrets / "ca.pem"
    assert not (elsewhere / "data").exists()


def test_a_config_path_given_relative_resolves_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--config etc/config.yaml``: paths in it are under ``<cwd>/etc``, made absolute."""
    (tmp_path / "etc").mkdir()
    write(
        tmp_path / "etc",
        "buffer: {path: buffer.db}\nauditLogForwarders: [{kind: webhook, uri: 'https://a'}]\n",
    )
    monkeypatch.chdir(tmp_path)

    settings = load_config("etc/config.yaml")

    assert settings.buffer.path == tmp_path / "etc" / "buffer.db"
    assert settings.buffer.path.is_absolute()


def test_the_default_buffer_path_stays_relative_to_the_working_directory(
    tmp_path: Path, elsewhere: Path
) -> None:
    """Without buffer.path the buffer is ./data/buffer.db where the daemon runs (its volume)."""
    one_forwarder = "auditLogForwarders: [{kind: webhook, uri: 'https://a'}]\n"
    (tmp_path / "one").mkdir()
    first = write(tmp_path / "one", one_forwarder)
    written = write(
        tmp_path / "one", "buffer: {path: ./data/buffer.db}\n" + one_forwarder, "w.yaml"
    )

    default, explicit = load_config(first), load_config(written)

    assert default.buffer.path == Path("data") / "buffer.db"
    assert not default.buffer.path.is_absolute()
    # The same value written in the file is relative to the file instead.
    assert explicit.buffer.path == tmp_path / "one" / "data" / "buffer.db"


def test_absolute_paths_are_kept_as_written(tmp_path: Path, elsewhere: Path) -> None:
    """An absolute buffer.path is not moved under the configuration's directory."""
    target = tmp_path / "var" / "buffer.db"
    (tmp_path / "etc").mkdir()
    path = write(
        tmp_path / "etc",
        f"buffer: {{path: {target}}}\nauditLogForwarders: [{{kind: webhook, uri: 'https://a'}}]\n",
    )

    assert load_config(path).buffer.path == target


def test_a_missing_relative_token_file_is_reported_where_it_was_looked_for(
    tmp_path: Path, elsewhere: Path
) -> None:
    """The problem names the resolved path, so the operator sees which file was read."""
    (tmp_path / "etc").mkdir()
    path = write(
        tmp_path / "etc",
        "auditLogForwarders: [{kind: webhook, uri: 'https://a', tokenFile: token}]\n",
    )

    assert problems_at(path) == [
        f"auditLogForwarders[0].tokenFile: cannot read {tmp_path / 'etc' / 'token'}:"
        " No such file or directory"
    ]
