"""The light locator against the full loader: the same admin address, or it declines.

``locate`` is only allowed to be faster than ``load_config``, never to
disagree with it. The property test writes real files (and real environment
variables) drawn from valid and invalid forms of every ``ingest`` key and
checks, for each, that the locator either declines or names exactly the
address, port and token the full loader produces, and that it declines
whenever the full loader refuses the file. The other tests pin the common
forms it must *not* decline (that is its whole point) and the hostile ones
it must.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from forwarder.config.loading import load_config
from forwarder.config.settings import IngestConfig, Settings
from forwarder.errors import ConfigError
from forwarder.ops import locate as locate_module
from forwarder.ops.locate import AdminAddress, address_of, locate

FORWARDERS = [{"kind": "webhook", "uri": "https://siem.example/in", "name": "siem"}]
TOKEN = "ingest-token-1"

# Each key with forms the full loader accepts and forms it refuses.
VALUES: dict[str, list[Any]] = {
    "host": ["127.0.0.1", "0.0.0.0", "::", "", "localhost", "${HOST_VAR}", 12, None, True],
    "port": [0, 1, 8686, 65535, 65536, -1, "8080", "+80", " 80", "08080", 80.0, True, None],
    "unixSocket": [
        "ingest.sock",
        "./run/../ingest.sock",
        "/abs/ingest.sock",
        "",
        "${SOCK_DIR}/a.sock",
        "${UNSET_VAR:-fallback.sock}",
        "${UNSET_VAR}",
        "$${literal}.sock",
        None,
        5,
        ["a"],
    ],
    "token": [TOKEN, "", "${TOKEN_VAR}", "${EMPTY_VAR:-dflt}", "${UNSET_VAR}", None, 12],
    "tokenFile": ["token.txt", "./token.txt", "empty.txt", "missing.txt", "${SECRETS}/t", None],
    "maxRequestBytes": [1, 1024, 10 * 1024 * 1024, 0, -5, "2048", 1.5, 10**30],
    "maxEventBytes": [1, 512, 1024 * 1024, 0, 10**30, "x"],
    "maxConnections": [None, 1, 1_000_000, 1_000_001, 0, "50"],
    "idleTimeoutSeconds": [0.5, 60, 86_400, 86_401, 0, float("inf"), float("nan"), "30", "1e3"],
    "requestTimeoutSeconds": [15.0, 3_600, 3_601, -1, "2.5", None],
    # By field name instead of alias, and a typo.
    "unix_socket": ["snake.sock"],
    "token_file": ["token.txt"],
    "tokne": ["x"],
}
ENVIRONMENT: dict[str, list[str]] = {
    "AUDIT_FORWARDER_INGEST__PORT": ["9000", "0", "http", "", "65536", " 9000", "+1"],
    "AUDIT_FORWARDER_INGEST__UNIX_SOCKET": ["env.sock", "/abs/env.sock", ""],
    "AUDIT_FORWARDER_INGEST__TOKEN": ["env-token", "${TOKEN_VAR}", ""],
    "AUDIT_FORWARDER_INGEST__HOST": ["::1", "10.0.0.1"],
    "AUDIT_FORWARDER_INGEST__TOKEN_FILE": ["token.txt"],
    "AUDIT_FORWARDER_INGEST__MAX_EVENT_BYTES": ["100", "999999999999"],
    "audit_forwarder_ingest__port": ["9001"],
    "AUDIT_FORWARDER_INGEST__UNIXSOCKET": ["odd.sock"],
    "AUDIT_FORWARDER_INGEST": ['{"port": 9002}', "{not json"],
    "INGEST__PORT": ["9003"],
    "AUDIT_FORWARDER_LOGGING__LEVEL": ["debug"],
}
REFERENCED = {"HOST_VAR": "127.0.0.2", "TOKEN_VAR": "from-var", "EMPTY_VAR": ""}


@contextmanager
def environment(variables: dict[str, str], directory: Path) -> Iterator[None]:
    """Exactly these AUDIT_FORWARDER_* / INGEST* variables (and the referenced ones)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.upper().startswith(("AUDIT_FORWARDER", "INGEST")):
            del os.environ[name]
    os.environ.update({**REFERENCED, "SOCK_DIR": str(directory), "SECRETS": str(directory)})
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def full_address(path: Path) -> AdminAddress | None:
    """What the full loader makes of the file: the admin address, or None when it refuses."""
    try:
        return address_of(load_config(path))
    except ConfigError:
        return None


def write_files(directory: Path, document: Any) -> Path:
    """The configuration and the token files it may name, in ``directory``."""
    (directory / "token.txt").write_text(f"  {TOKEN}-from-file\n", encoding="utf-8")
    (directory / "empty.txt").write_text(" \n", encoding="utf-8")
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


ingest_sections = st.dictionaries(
    st.sampled_from(sorted(VALUES)), st.just(None), max_size=6
).flatmap(lambda keys: st.fixed_dictionaries({key: st.sampled_from(VALUES[key]) for key in keys}))
overrides = st.dictionaries(st.sampled_from(sorted(ENVIRONMENT)), st.just(""), max_size=3).flatmap(
    lambda names: st.fixed_dictionaries(
        {name: st.sampled_from(ENVIRONMENT[name]) for name in names}
    )
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ingest=ingest_sections, variables=overrides, with_ingest=st.booleans())
def test_the_locator_agrees_with_the_full_loader_or_declines(
    ingest: dict[str, Any], variables: dict[str, str], with_ingest: bool
) -> None:
    """Whenever locate answers, it is the address load_config gives; it never accepts a refusal."""
    document: dict[str, Any] = {"auditLogForwarders": FORWARDERS}
    if with_ingest:
        document["ingest"] = ingest
    with tempfile.TemporaryDirectory() as tmp:
        path = write_files(Path(tmp), document)
        with environment(variables, Path(tmp)):
            located, expected = locate(path), full_address(path)

    event("located" if located is not None else "declined")
    event("loaded" if expected is not None else "refused")
    assert located is None or located == expected, (located, expected)


@pytest.mark.parametrize(
    ("ingest", "variables", "expected"),
    [
        pytest.param(
            {"unixSocket": "/run/af/ingest.sock", "port": None},
            {},
            AdminAddress("/run/af/ingest.sock", "127.0.0.1", None),
            id="unix-socket-only",
        ),
        pytest.param(
            {"host": "0.0.0.0", "port": 9100, "token": TOKEN},
            {},
            AdminAddress(None, "0.0.0.0", 9100, TOKEN),
            id="tcp-only-with-token",
        ),
        pytest.param(
            {"unixSocket": "run/ingest.sock", "tokenFile": "./token.txt"},
            {},
            AdminAddress("{dir}/run/ingest.sock", "127.0.0.1", 8686, f"{TOKEN}-from-file"),
            id="relative-paths-and-token-file",
        ),
        pytest.param(
            {"unixSocket": "${SOCK_DIR}/s.sock", "token": "${TOKEN_VAR}", "host": "$${x}"},
            {},
            AdminAddress("{dir}/s.sock", "${x}", 8686, "from-var"),
            id="variables-and-escape",
        ),
        pytest.param(
            {"port": "${PORT_VAR:-7000}", "token": "${EMPTY_VAR:-dflt}"},
            {},
            AdminAddress(None, "127.0.0.1", 7000, "dflt"),
            id="variable-defaults",
        ),
        pytest.param(
            {"port": 8686, "unixSocket": "file.sock"},
            {
                "AUDIT_FORWARDER_INGEST__PORT": "9000",
                "audit_forwarder_ingest__unix_socket": "env.sock",
                "AUDIT_FORWARDER_INGEST__TOKEN": "${NOT_EXPANDED}",
            },
            AdminAddress("{dir}/env.sock", "127.0.0.1", 9000, "${NOT_EXPANDED}"),
            id="environment-overrides",
        ),
        pytest.param(
            None, {}, AdminAddress(None, "127.0.0.1", 8686), id="no-ingest-section-defaults"
        ),
    ],
)
def test_the_common_forms_are_located_as_the_full_loader_does(
    tmp_path: Path, ingest: dict[str, Any] | None, variables: dict[str, str], expected: AdminAddress
) -> None:
    """Unix socket, TCP, tokens, token files, relative paths, ${VAR} and overrides: no fallback."""
    document: dict[str, Any] = {"auditLogForwarders": FORWARDERS}
    if ingest is not None:
        document["ingest"] = ingest
    path = write_files(tmp_path, document)
    socket = expected.unix_socket
    if socket is not None:
        expected = AdminAddress(
            socket.format(dir=tmp_path), expected.host, expected.port, expected.token
        )

    with environment(variables, tmp_path):
        located, full = locate(path), full_address(path)

    assert located == expected
    assert full == expected


# Inside a section the locator does not read, beside a valid ``ingest``: only
# the size limits can refuse these, as the full loader does.
BILLION_LAUGHS = "\n".join(
    [
        "ingest: {port: 8686}",
        "auditLogForwarders: [{kind: webhook, uri: https://x}]",
        "buffer:",
        '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)),
    ]
)
VALID = b"auditLogForwarders: [{kind: webhook, uri: https://x}]\n"
DEEP = "ingest: {port: 8686}\nauditLogForwarders: [{kind: webhook, uri: https://x}]\nbuffer: "


@pytest.mark.parametrize(
    ("content", "variables"),
    [
        pytest.param(BILLION_LAUGHS.encode(), {}, id="billion-laughs"),
        pytest.param(b"ingest: &a {port: 1, x: *a}\n", {}, id="alias-cycle"),
        pytest.param(b"ingest: &a [*a]\n", {}, id="alias-cycle-list"),
        pytest.param((DEEP + "[" * 40 + "]" * 40).encode(), {}, id="nested-past-the-limit"),
        pytest.param((DEEP + "[" * 5000 + "]" * 5000).encode(), {}, id="nested-past-the-stack"),
        pytest.param(b"ingest: !!python/object/apply:os.system ['true']\n", {}, id="python-tag"),
        pytest.param(b"ingest: {port: !!binary AAAA}\n", {}, id="binary-port"),
        pytest.param(b"ingest: {host: !!binary AAAA}\n", {}, id="binary-host"),
        pytest.param(b"- ingest\n", {}, id="not-a-mapping"),
        pytest.param(b"", {}, id="empty-file"),
        pytest.param(b"1: x\ningest: {port: 1}\n", {}, id="int-key"),
        pytest.param(b"ingest: {port: 1}\nigest: {}\n", {}, id="unknown-section"),
        pytest.param(b"ingest: {1: x}\n", {}, id="int-key-in-ingest"),
        pytest.param(b"ingest: caf\xe9\n", {}, id="latin-1"),
        pytest.param(b"ingest: [\n", {}, id="syntax"),
        pytest.param(b"ingest: null\n", {}, id="null-section"),
        pytest.param(b"ingest: {port: 99999999999999999999999}\n", {}, id="huge-port"),
        pytest.param(("ingest: {port: '" + "9" * 5000 + "'}\n").encode(), {}, id="long-port"),
        pytest.param(b"ingest: {port: .inf}\n", {}, id="inf-port"),
        pytest.param(b"ingest: {idleTimeoutSeconds: .nan}\n", {}, id="nan-timeout"),
        pytest.param(b"ingest: {token: [a, b]}\n", {}, id="token-list"),
        pytest.param(b"ingest: {token: {a: b}}\n", {}, id="token-mapping"),
        pytest.param(b"ingest: {token: x, tokenFile: t}\n", {}, id="token-and-file"),
        pytest.param(b"ingest: {tokenFile: /nonexistent/t}\n", {}, id="token-file-missing"),
        pytest.param(b"ingest: {port: null}\n", {}, id="no-listener"),
        pytest.param(b'ingest: {unixSocket: "a\\0b"}\n', {}, id="nul-in-path"),
        pytest.param(b"ingest: {unixSocket: a, unix_socket: b}\n", {}, id="alias-and-name"),
        pytest.param(b"ingest: {maxEventBytes: 20, maxRequestBytes: 10}\n", {}, id="event-gt-req"),
        pytest.param(b"ingest: {token: '${UNSET_VAR}'}\n", {}, id="unset-variable"),
        pytest.param(VALID, {"AUDIT_FORWARDER_INGEST": '{"port": 1}'}, id="json-section"),
        pytest.param(VALID, {"INGEST__PORT": "1"}, id="alias-variable"),
        pytest.param(VALID, {"AUDIT_FORWARDER_INGEST__PORT": "1e3"}, id="float-port-var"),
        pytest.param(VALID, {"AUDIT_FORWARDER_INGEST__PORT__X": "1"}, id="nested-var"),
        pytest.param(
            b"ingest: {token_file: token.txt}\n",
            {"AUDIT_FORWARDER_INGEST__TOKEN_FILE": "token.txt"},
            id="name-in-file-alias-from-variable",
        ),
        pytest.param(
            VALID,
            {"AUDIT_FORWARDER_INGEST__PORT": "1", "audit_forwarder_ingest__port": "2"},
            id="variable-twice",
        ),
    ],
)
def test_hostile_or_malformed_input_falls_back(
    tmp_path: Path, content: bytes, variables: dict[str, str]
) -> None:
    """Bombs, cycles, tags, wrong types, huge values and odd overrides: locate declines."""
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    (tmp_path / "token.txt").write_text("a-token\n")  # so only what is wrong is wrong

    with environment(variables, tmp_path):
        assert locate(path) is None


def test_a_missing_or_unreadable_file_falls_back(tmp_path: Path) -> None:
    """No file, a directory, or a file this user may not read: locate declines."""
    unreadable = tmp_path / "secret.yaml"
    unreadable.write_text("ingest: {port: 1}\n")
    unreadable.chmod(0)

    assert locate(tmp_path / "missing.yaml") is None
    assert locate(tmp_path) is None
    if os.geteuid() != 0:  # root reads it anyway
        assert locate(unreadable) is None


def test_the_locator_knows_every_ingest_key_and_section() -> None:
    """A key added to IngestConfig or Settings must be taught to the locator, or it declines."""
    fields = {name: field.alias for name, field in IngestConfig.model_fields.items()}
    sections = {field.alias for field in Settings.model_fields.values()}
    sections |= set(Settings.model_fields)

    assert fields == locate_module.INGEST_KEYS
    assert sections == locate_module.SECTIONS
