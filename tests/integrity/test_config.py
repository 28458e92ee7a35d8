"""The ``integrity`` option: accepted when it can sign, refused clearly (never quoting the key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from forwarder.config.loading import parse_config
from forwarder.errors import ConfigError
from forwarder.integrity.keys import generate
from tests.support import run_cli

WHERE = "auditLogForwarders[0].integrity"


def document(integrity: Any, **options: Any) -> dict[str, Any]:
    forwarder = {"kind": "webhook", "uri": "https://siem.example/in", "integrity": integrity}
    return {"auditLogForwarders": [{**forwarder, **options}]}


def problems(integrity: Any, base_dir: Path | None = None, **options: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(integrity, **options), base_dir)
    return str(caught.value)


def test_a_key_file_relative_to_the_config_is_read_and_its_secrets_are_masked(
    tmp_path: Path,
) -> None:
    """signingKeyFile is resolved beside the config, read, and learned as a secret."""
    private, _ = generate()
    (tmp_path / "chain.key").write_bytes(private)
    settings = parse_config(
        document({"mode": "chain", "signingKeyFile": "chain.key", "checkpointEvery": 50}), tmp_path
    )
    integrity = settings.audit_log_forwarders[0].integrity
    assert integrity is not None
    assert integrity.signing_key is not None
    assert integrity.signing_key.get_secret_value() == private.decode().strip()
    assert integrity.checkpoint_every == 50
    body_line = private.decode().splitlines()[1]
    assert body_line in settings.secrets()


def test_no_key_at_all_is_refused() -> None:
    """integrity without signingKey or signingKeyFile says what it needs."""
    assert "needs signingKey or signingKeyFile" in problems({"mode": "chain"})


def test_both_keys_are_refused() -> None:
    """An inline key and a key file at once is one of them too many."""
    private, _ = generate()
    found = problems({"mode": "chain", "signingKey": private.decode(), "signingKeyFile": "k"})
    assert "set signingKey or signingKeyFile, not both" in found
    assert private.decode().splitlines()[1] not in found


def test_an_unreadable_key_file_is_refused_at_its_path(tmp_path: Path) -> None:
    """A key file that does not exist is named with the reason."""
    found = problems({"mode": "chain", "signingKeyFile": "missing.key"}, tmp_path)
    assert f"{WHERE}.signingKeyFile: cannot read {tmp_path / 'missing.key'}" in found


def test_a_public_key_given_as_the_signing_key_is_refused(tmp_path: Path) -> None:
    """The .pub file where the .key belongs is recognised and explained."""
    _, public = generate()
    (tmp_path / "chain.pub").write_bytes(public)
    found = problems({"mode": "chain", "signingKeyFile": "chain.pub"}, tmp_path)
    assert f"{WHERE}.signingKeyFile: the key is a public key" in found


def test_a_key_of_another_algorithm_is_refused_without_quoting_it() -> None:
    """An EC private key inline is refused as not Ed25519, and not echoed."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    found = problems({"mode": "chain", "signingKey": pem})
    assert f"{WHERE}.signingKey: the key is not an Ed25519 key" in found
    assert pem.splitlines()[1] not in found


def test_text_that_is_no_key_is_refused() -> None:
    """A signing key that is not PEM at all is refused (and not echoed)."""
    found = problems({"mode": "chain", "signingKey": "hunter2-not-a-key"})
    assert "is not a PEM key" in found
    assert "hunter2" not in found


@pytest.mark.parametrize(
    ("integrity", "expected"),
    [
        ("yes", f"{WHERE}:"),
        ({"mode": "merkle", "signingKey": "x"}, f"{WHERE}.mode:"),
        ({"mode": "chain", "signingKey": "x", "checkpointEvery": 0}, f"{WHERE}.checkpointEvery:"),
        ({"mode": "chain", "signingKey": "x", "checkpointEvery": "often"}, "checkpointEvery"),
        ({"mode": "chain", "signingKey": 42}, f"{WHERE}.signingKey:"),
        (
            {"mode": "chain", "signingKey": "x", "checkpointIntervalSeconds": -1},
            f"{WHERE}.checkpointIntervalSeconds:",
        ),
        ({"mode": "chain", "signingKey": "x", "extra": 1}, f"{WHERE}.extra:"),
    ],
)
def test_wrong_types_are_refused_at_their_path(integrity: Any, expected: str) -> None:
    """Hostile or mistyped values are refused with the YAML path of the value."""
    assert expected in problems(integrity)


def test_a_template_forwarder_cannot_have_integrity() -> None:
    """A template rewrites the event, so a chain over its bytes could not be checked."""
    private, _ = generate()
    found = problems(
        {"mode": "chain", "signingKey": private.decode()},
        format="template",
        template='{"x": {{ .user }}}',
    )
    assert "integrity needs format json, ndjson, cloudevents or splunk_hec" in found


async def test_check_config_names_the_problem_and_exits_2(tmp_path: Path) -> None:
    """The real check-config command reports a public key given as the signing key."""
    _, public = generate()
    (tmp_path / "chain.pub").write_bytes(public)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document({"mode": "chain", "signingKeyFile": "chain.pub"})))
    code, out, err = await run_cli("check-config", "--config", str(config))
    assert code == 2
    assert "integrity.signingKeyFile: the key is a public key" in out + err
