"""Encryption at rest of the buffer: keys, sealed values, and every place that stores bodies."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.buffer.check import inspect
from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER, list_dead_letters, replay
from forwarder.buffer.encryption import (
    MAGIC,
    NO_KEYS,
    KeyFileError,
    Keyring,
    MissingKeyError,
    SealBrokenError,
    batch_context,
    key_id_of,
    parse_key,
    read_key,
)
from forwarder.buffer.history import INSERT_ATTEMPT, pack_event_ids, response_text
from forwarder.buffer.salvage import salvage
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.config.loading import load_config
from forwarder.errors import BufferUnusableError, ConfigError
from tests.buffer.stores import OpenBuffer, on_disk

MARKER = b"SECRET-MARKER-7f3a"
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def keyring(*ids: str, active: str | None = None, keys: dict[str, bytes] | None = None) -> Keyring:
    """A keyring of the named test keys (k1, k2), the last one active unless told."""
    known = keys or {"k1": K1, "k2": K2}
    return Keyring({i: known[i] for i in ids}, active or (ids[-1] if ids else None))


def marked(n: int) -> EventRecord:
    """An event whose body holds MARKER."""
    return EventRecord(None, "user.login", b'{"n": %d, "m": "%s"}' % (n, MARKER), False)


def file_bytes(path: Path) -> bytes:
    """The database file and its WAL, as an attacker copying them would read them."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def dead_row(n: int, response: bytes | None = b"rejected " + MARKER) -> tuple[Any, ...]:
    """A dead-letter row as the delivery process sends it (plain)."""
    return ("f", n, f"e-{n}", "user.login", 1.0, 2.0, 400, "400", "bad", response, marked(n).body)


# -- keys and sealed values -------------------------------------------------------------------


def test_a_key_file_may_be_raw_hex_or_base64_with_a_trailing_newline() -> None:
    """32 raw bytes, 64 hex characters and base64 of 32 bytes all give the same key."""
    assert parse_key(K1) == K1
    assert parse_key(K1.hex().encode() + b"\n") == K1
    assert parse_key(base64.b64encode(K1) + b"\n") == K1


def test_a_key_of_the_wrong_length_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A 31-byte key, or hex of 16 bytes, is a KeyFileError that never shows the content."""
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(KeyFileError, match="not a 32-byte key") as caught:
        read_key(short)
    assert "xxxx" not in str(caught.value)
    (tmp_path / "hex16.key").write_text(os.urandom(16).hex())
    with pytest.raises(KeyFileError, match="holds 32 bytes, not a 32-byte key"):
        read_key(tmp_path / "hex16.key")
    with pytest.raises(KeyFileError, match="cannot be read"):
        read_key(tmp_path / "absent.key")


def test_a_single_key_file_gets_an_id_derived_from_the_key(tmp_path: Path) -> None:
    """With keyFile the id is the first 8 hex characters of the key's SHA-256, and active."""
    (tmp_path / "k.key").write_bytes(K1)
    ring = Keyring.from_files([(None, tmp_path / "k.key")], None)
    assert ring.active == hashlib.sha256(K1).hexdigest()[:8]
    assert ring.key_ids == [ring.active]
    assert "k.key" not in repr(ring)
    assert K1.hex() not in repr(ring)


def test_a_sealed_value_opens_only_for_its_row_and_only_intact() -> None:
    """Another row's context, one flipped byte, or a removed key each refuse, naming the id."""
    ring = keyring("k1")
    sealed = ring.seal(MARKER, batch_context(1, 10))
    assert sealed.startswith(MAGIC)
    assert MARKER not in sealed
    assert key_id_of(sealed) == "k1"
    assert ring.open(sealed, batch_context(1, 10)) == MARKER
    with pytest.raises(SealBrokenError, match="'k1'"):
        ring.open(sealed, batch_context(11, 20))
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    with pytest.raises(SealBrokenError):
        ring.open(bytes(flipped), batch_context(1, 10))
    with pytest.raises(MissingKeyError, match="'k1', which is not configured"):
        keyring("k2").open(sealed, batch_context(1, 10))
    with pytest.raises(SealBrokenError):
        keyring("k1", keys={"k1": K2}).open(sealed, batch_context(1, 10))


def test_plain_values_pass_through_and_nothing_is_sealed_when_off() -> None:
    """Values written before encryption read as they are; with no keys, seal is the identity."""
    assert keyring("k1").open(b'{"a": 1}', batch_context(1, 1)) == b'{"a": 1}'
    assert NO_KEYS.seal(b'{"a": 1}', batch_context(1, 1)) == b'{"a": 1}'
    assert not NO_KEYS.enabled


# -- the store --------------------------------------------------------------------------------


async def test_events_are_stored_sealed_and_read_back_intact(open_buffer: OpenBuffer) -> None:
    """Neither the file nor its WAL holds the marker; reading gives the exact bytes back."""
    buffer = await open_buffer(keyring=keyring("k1"))
    await buffer.append([marked(n) for n in range(50)])
    assert Path(f"{buffer.path}-wal").stat().st_size > 0
    assert MARKER not in file_bytes(buffer.path)
    events = await buffer.read_after("f", 0, 100)
    assert [e.body for e in events] == [marked(n).body for n in range(50)]
    await buffer.close()
    assert MARKER not in file_bytes(buffer.path)


async def test_turning_encryption_on_keeps_older_plain_rows_readable(
    open_buffer: OpenBuffer, tmp_path: Path
) -> None:
    """Rows written in clear stay as they were and read beside the sealed ones."""
    plain = await open_buffer()
    await plain.append([marked(1)])
    await plain.close()
    sealed = await open_buffer(keyring=keyring("k1"))
    await sealed.append([marked(2)])
    assert [e.body for e in await sealed.read_after("f", 0, 10)] == [marked(1).body, marked(2).body]
    stored = on_disk(sealed.path, "SELECT first_seq, substr(bodies, 1, 4) FROM batches")
    assert stored == [(1, b'{"n"'), (2, MAGIC)]


async def test_rotation_reads_older_keys_and_seals_with_the_active_one(
    open_buffer: OpenBuffer,
) -> None:
    """Under [k1, k2] active k2, a k1 backlog still reads and new rows are sealed with k2."""
    first = await open_buffer(keyring=keyring("k1"))
    await first.append([marked(1)])
    await first.close()
    rotated = await open_buffer(keyring=keyring("k1", "k2", active="k2"))
    await rotated.append([marked(2)])
    assert [e.body for e in await rotated.read_after("f", 0, 10)] == [
        marked(1).body,
        marked(2).body,
    ]
    heads = on_disk(rotated.path, "SELECT bodies FROM batches ORDER BY first_seq")
    assert [key_id_of(head) for (head,) in heads] == ["k1", "k2"]


async def test_a_pending_event_under_a_removed_key_refuses_the_start(tmp_path: Path) -> None:
    """The open fails with missing_key naming the id, with the key gone or encryption off."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.append([marked(1)])
    await buffer.close()
    for ring in (keyring("k2"), NO_KEYS):
        again = EventBuffer(path, keyring=ring)
        with pytest.raises(BufferUnusableError, match="encrypted with key id k1") as caught:
            await again.open(["f"])
        await again.close()
        assert caught.value.kind == "missing_key"


async def test_a_different_key_under_the_same_id_refuses_the_start(tmp_path: Path) -> None:
    """Key bytes that do not open the pending events are wrong_key, not garbage delivered."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.append([marked(1)])
    await buffer.close()
    wrong = EventBuffer(path, keyring=keyring("k1", keys={"k1": K2}))
    with pytest.raises(BufferUnusableError, match="'k1' does not open") as caught:
        await wrong.open(["f"])
    await wrong.close()
    assert caught.value.kind == "wrong_key"


async def test_delivered_events_under_a_removed_key_do_not_block_the_start(
    tmp_path: Path,
) -> None:
    """Once every configured cursor has passed a k1 batch, k1 may go."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.append([marked(1)])
    await buffer.execute([], acks={"f": 1})
    await buffer.close()
    later = EventBuffer(path, keyring=keyring("k2"))
    await later.open(["f"])
    await later.close()


# -- dead letters and history -----------------------------------------------------------------


async def test_dead_letters_are_sealed_listed_in_clear_and_replayed(
    open_buffer: OpenBuffer,
) -> None:
    """Body and response are sealed on disk; the list shows the answer; replay delivers the body."""
    buffer = await open_buffer(keyring=keyring("k1"))
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_row(1), dead_row(2, None)])])
    assert MARKER not in file_bytes(buffer.path)
    listed = await list_dead_letters(buffer, "f", 10)
    assert [d["response_body"] for d in listed["dead_letters"]] == [
        "",
        "rejected " + MARKER.decode(),
    ]
    assert await replay(buffer, ["f"], "f", ["e-1"]) == {
        "replayed": 1,
        "skipped_unknown_forwarder": 0,
    }
    events = await buffer.read_after("f", 0, 10)
    assert [e.body for e in events] == [marked(1).body]
    assert MARKER not in file_bytes(buffer.path)


async def test_a_dead_letter_under_a_removed_key_is_shown_as_an_error_and_not_replayed(
    tmp_path: Path,
) -> None:
    """The list names the key id for that row; a replay refuses before replaying anything."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_row(1)])])
    await buffer.close()
    later = EventBuffer(path, keyring=keyring("k2"))
    await later.open(["f"])
    try:
        (letter,) = (await list_dead_letters(later, "f", 10))["dead_letters"]
        assert "'k1', which is not configured" in letter["encryption_error"]
        with pytest.raises(MissingKeyError, match="event e-1 is encrypted with key 'k1'"):
            await replay(later, ["f"], "f", [])
        assert on_disk(path, "SELECT count(*) FROM dead_letters") == [(1,)]
        assert on_disk(path, "SELECT count(*) FROM batches") == [(0,)]
    finally:
        await later.close()


async def test_history_answers_are_sealed_and_shown_or_named_by_key(
    open_buffer: OpenBuffer,
) -> None:
    """An attempt's response body is sealed; it opens for display, or names its missing key."""
    buffer = await open_buffer(keyring=keyring("k1"))
    row = ("f", 1_700_000_000, 1, 1, pack_event_ids(["e-1"]), "retry", "503", 503, 1.5, None)
    await buffer.execute([(INSERT_ATTEMPT, [(*row, b"busy " + MARKER)])])
    assert MARKER not in file_bytes(buffer.path)
    ((at, attempt, stored),) = await buffer.query(
        "SELECT attempted_at, attempt, response_body FROM delivery_attempts"
    )
    assert response_text(buffer.keyring, "f", at, attempt, stored) == "busy " + MARKER.decode()
    assert "key 'k1', which is not configured" in response_text(NO_KEYS, "f", at, attempt, stored)


# -- buffer check and salvage -----------------------------------------------------------------


async def test_buffer_check_reports_encrypted_rows_and_missing_keys(tmp_path: Path) -> None:
    """Counts per key id; a pending event under a key not configured makes it missing_key."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.append([marked(n) for n in range(3)])
    await buffer.execute([(INSERT_DEAD_LETTER, [dead_row(9)])])
    await buffer.close()
    good = inspect(path, keyring("k1"))
    assert good["status"] == "ok"
    assert good["summary"]["encryption"]["encrypted"]["batches.bodies"] == {"k1": 3}
    assert good["summary"]["encryption"]["encrypted"]["dead_letters.body"] == {"k1": 1}
    bad = inspect(path, keyring("k2"))
    assert bad["status"] == "missing_key"
    assert "key id k1" in bad["error"]
    assert bad["summary"]["encryption"]["unreadable_key_ids"] == ["k1"]
    assert inspect(path, keyring("k1", keys={"k1": K2}))["status"] == "wrong_key"


async def test_salvage_copies_sealed_batches_as_they_are(tmp_path: Path) -> None:
    """Salvage keeps sealed rows sealed, with or without the key configured."""
    path = tmp_path / "buffer.db"
    buffer = EventBuffer(path, keyring=keyring("k1"))
    await buffer.open(["f"])
    await buffer.append([marked(n) for n in range(3)])
    await buffer.append([marked(3)])
    await buffer.close()
    before = on_disk(path, "SELECT bodies FROM batches ORDER BY first_seq")
    for ring in (keyring("k1"), NO_KEYS):
        report = salvage(path, ["f"], ring)
        assert (report.batches_recovered, report.events_recovered) == (2, 4)
        assert on_disk(path, "SELECT bodies FROM batches ORDER BY first_seq") == before


# -- configuration ----------------------------------------------------------------------------


def config_with(tmp_path: Path, encryption: dict[str, Any]) -> Path:
    """A configuration file with ``buffer.encryption`` set to ``encryption``."""
    path = tmp_path / "config.yaml"
    document = {
        "buffer": {"path": "buffer.db", "encryption": encryption},
        "auditLogForwarders": [{"kind": "webhook", "uri": "http://127.0.0.1:9/x"}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_key_files_resolve_beside_the_config_and_load(tmp_path: Path) -> None:
    """Relative key paths are read from the config file's directory; active seals."""
    (tmp_path / "k1.key").write_text(K1.hex() + "\n")
    (tmp_path / "k2.key").write_bytes(base64.b64encode(K2))
    keys = [{"id": "k1", "file": "k1.key"}, {"id": "k2", "file": "k2.key"}]
    settings = load_config(config_with(tmp_path, {"keys": keys, "active": "k2"}))
    ring = settings.buffer.keyring()
    assert (ring.key_ids, ring.active) == (["k1", "k2"], "k2")
    assert ring.open(ring.seal(b"x", b"r"), b"r") == b"x"


@pytest.mark.parametrize(
    ("encryption", "expected"),
    [
        ({"keyFile": "absent.key"}, "buffer.encryption.keyFile: key file"),
        ({"keyFile": "short.key"}, "holds 31 bytes, not a 32-byte key"),
        (
            {"keys": [{"id": "k1", "file": "k1.key"}], "active": "k9"},
            "active is 'k9', not one of the keys (k1)",
        ),
        (
            {
                "keys": [{"id": "k1", "file": "k1.key"}, {"id": "k1", "file": "k1.key"}],
                "active": "k1",
            },
            "key id k1 is listed more than once",
        ),
        ({"keyFile": "k1.key", "keys": [{"id": "k1", "file": "k1.key"}]}, "not both"),
        ({"keys": [{"id": "k1", "file": "k1.key"}]}, "active must name the key"),
        ({"keys": [{"id": "no spaces", "file": "k1.key"}], "active": "no spaces"}, "pattern"),
    ],
)
def test_a_malformed_encryption_config_is_refused_clearly(
    tmp_path: Path, encryption: dict[str, Any], expected: str
) -> None:
    """Missing or short key files, an unknown active id, duplicates, both forms: ConfigError."""
    (tmp_path / "k1.key").write_bytes(K1)
    (tmp_path / "short.key").write_bytes(K1[:31])
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(tmp_path, encryption))
    assert expected in str(caught.value)
    assert K1.hex() not in str(caught.value)
