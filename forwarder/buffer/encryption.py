"""Encryption at rest: event bodies and stored answers sealed with AES-256-GCM.

What is sealed, and why not more: the columns that hold what applications
and receivers said — ``batches.bodies``, ``dead_letters.body`` and
``response_body``, ``delivery_attempts.response_body``. Event ids, event
types, lengths, arrival times, cursors and error codes stay in clear: they
are what the buffer needs to filter, count, purge and report without a key
(``buffer check`` counts pending events by type), and they are documented as
metadata an attacker holding the file can read.

Why the blob describes itself instead of a schema change: a sealed value is
``MAGIC (00 'AFE') | format version | key id length | key id | 12-byte nonce
| ciphertext + 16-byte tag``. No JSON text starts with a NUL byte, so rows
written before encryption was turned on (plain JSON) stay readable beside
sealed ones, turning encryption on never rewrites old rows, and a key change
needs no migration: every value names the key that opens it.

Why associated data: each value is authenticated together with its header
(so the key id and version cannot be altered) and the identity of its row
(for a batch, its seq range; for a dead letter, its forwarder, seq and event
id): a sealed value moved to another row fails to open instead of delivering
the wrong events.

Keys: 32 bytes from a file (raw, 64 hex characters, or base64), read once at
load. With ``keyFile`` the key id is derived: the first 8 hex characters of
the key's SHA-256, which identifies the key without revealing it. A key's
bytes are never logged nor shown; a :class:`Keyring`'s ``repr`` names ids
only. ``cryptography`` is imported only when a key is configured or a sealed
value is opened: the configuration imports this module, and ``check-config``
and the operator commands stay light.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.errors import ForwarderError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\x00AFE"
FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_KEY_ID = 64
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_KEY_ID = re.compile(KEY_ID_PATTERN)
# A key file is tiny: refuse to read a large file that was given by mistake.
_MAX_KEY_FILE_BYTES = 4096


class EncryptionError(ForwarderError):
    """A sealed value cannot be opened, or a key cannot be loaded."""


class KeyFileError(EncryptionError):
    """A key file is missing, unreadable or not 32 bytes in a known form (never quotes it)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"key file {path}: {reason}")


class MissingKeyError(EncryptionError):
    """A value was sealed with a key that is not configured (removed, or encryption off)."""

    def __init__(self, key_id: str, where: str) -> None:
        self.key_id = key_id
        self.where = where
        super().__init__(
            f"{where} is encrypted with key {key_id!r}, which is not configured"
            " (add it back under buffer.encryption.keys)"
        )


class SealBrokenError(EncryptionError):
    """A sealed value does not open with its key: a different key under that id, or damage."""

    def __init__(self, key_id: str, where: str) -> None:
        self.key_id = key_id
        self.where = where
        super().__init__(
            f"{where} does not open with key {key_id!r}: the configured key file holds"
            " a different key under that id, or the stored data is damaged"
        )


def is_sealed(stored: bytes | None) -> bool:
    """Whether a stored value is sealed (plain values are JSON or an answer's text)."""
    return stored is not None and stored[:4] == MAGIC


def _header(stored: bytes, where: str) -> tuple[str, int]:
    """The key id of a sealed value and where its nonce starts."""
    if len(stored) < 6 or stored[4] != FORMAT_VERSION:
        raise EncryptionError(f"{where} is in an unknown encryption format")
    end = 6 + stored[5]
    if stored[5] == 0 or stored[5] > MAX_KEY_ID or len(stored) < end + NONCE_BYTES + TAG_BYTES:
        raise EncryptionError(f"{where} has a damaged encryption header")
    try:
        key_id = stored[6:end].decode("ascii")
    except UnicodeDecodeError:
        raise EncryptionError(f"{where} has a damaged encryption header") from None
    return key_id, end


def key_id_of(stored: bytes, where: str = "a stored value") -> str:
    """The id of the key a sealed value needs."""
    return _header(stored, where)[0]


def sealed_length(stored: bytes, where: str = "a stored value") -> int:
    """The plaintext length of a sealed value, from its header alone (no key needed)."""
    _, end = _header(stored, where)
    return len(stored) - end - NONCE_BYTES - TAG_BYTES


def context(*identity: Any) -> bytes:
    """The associated data naming a value's row: ``("batches.bodies", first, last)`` etc."""
    return orjson.dumps(identity)


def derived_key_id(key: bytes) -> str:
    """The id of a ``keyFile`` key: the first 8 hex characters of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(data: bytes) -> bytes:
    """32 key bytes from a key file's content: raw, 64 hex characters, or base64.

    Raises ValueError with a reason that never quotes the content.
    """
    # 32 bytes of printable text (say `openssl rand -hex 16`) is half a key's
    # entropy, not raw key bytes: random bytes are all printable once in 2**46.
    if len(data) == KEY_BYTES and not all(32 <= byte < 127 for byte in data):
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise ValueError(
        f"holds {len(data)} bytes, not a 32-byte key (32 random bytes, 64 hex characters,"
        " or base64 of 32 bytes; e.g. `openssl rand -hex 32`)"
    )


def read_key(path: Path) -> bytes:
    """The key in ``path``; :class:`KeyFileError` naming the file and the reason."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, "is far too large to be a key")
    try:
        return parse_key(data)
    except ValueError as exc:
        raise KeyFileError(path, str(exc)) from None


class Keyring:
    """The configured keys: seals with the active one, opens with whichever a value names.

    An empty keyring (encryption off) stores plaintext and refuses, naming
    the key id, any sealed value it is asked to open.
    """

    __slots__ = ("_ciphers", "active")

    def __init__(self, keys: Mapping[str, bytes], active: str | None) -> None:
        for key_id, key in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r} must match {KEY_ID_PATTERN}")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} is not {KEY_BYTES} bytes")
        if active is not None and active not in keys:
            raise ValueError(f"the active key {active!r} is not among the keys")
        self._ciphers: dict[str, AESGCM] = {}
        if keys:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # see the docstring

            self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active = active

    @classmethod
    def from_files(cls, files: Sequence[tuple[str | None, Path]], active: str | None) -> Keyring:
        """Read each ``(id, path)``; an id of None is derived from the key (``keyFile``).

        With a single derived key, that key is the active one.
        """
        keys: dict[str, bytes] = {}
        for key_id, path in files:
            key = read_key(path)
            keys[key_id if key_id is not None else derived_key_id(key)] = key
        if active is None and len(files) == 1 and files[0][0] is None:
            active = next(iter(keys))
        return cls(keys, active)

    @property
    def enabled(self) -> bool:
        """Whether new values are sealed."""
        return self.active is not None

    @property
    def key_ids(self) -> list[str]:
        """The ids this keyring can open, sorted."""
        return sorted(self._ciphers)

    def has(self, key_id: str) -> bool:
        """Whether values sealed under ``key_id`` can be opened."""
        return key_id in self._ciphers

    def __repr__(self) -> str:
        return f"Keyring(keys={self.key_ids}, active={self.active!r})"

    def seal(self, plaintext: bytes, row: bytes) -> bytes:
        """``plaintext`` sealed with the active key for the row ``row`` (as is when off)."""
        if self.active is None:
            return plaintext
        key_id = self.active.encode("ascii")
        header = MAGIC + bytes((FORMAT_VERSION, len(key_id))) + key_id + os.urandom(NONCE_BYTES)
        nonce = header[-NONCE_BYTES:]
        return header + self._ciphers[self.active].encrypt(nonce, plaintext, header + row)

    def open(self, stored: bytes, row: bytes, where: str = "a stored value") -> bytes:
        """The plaintext of a stored value: as is when plain, else opened for ``row``.

        :class:`MissingKeyError` when its key is not configured,
        :class:`SealBrokenError` when it does not authenticate.
        """
        if stored[:4] != MAGIC:
            return stored
        key_id, end = _header(stored, where)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise MissingKeyError(key_id, where)
        from cryptography.exceptions import InvalidTag  # see the module docstring

        start = end + NONCE_BYTES
        header = stored[:start]
        try:
            return cipher.decrypt(header[end:], memoryview(stored)[start:], header + row)
        except InvalidTag:
            raise SealBrokenError(key_id, where) from None


NO_KEYS = Keyring({}, None)


# -- rows written through SQL statements (dead letters, delivery history) ----------

# Per table: the sealed column and the columns naming its row (the associated data).
SEALED_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "dead_letters": {
        "body": ("forwarder", "seq", "event_id"),
        "response_body": ("forwarder", "seq", "event_id"),
    },
    "delivery_attempts": {"response_body": ("forwarder", "attempted_at", "attempt")},
}
_REAL_COLUMNS = frozenset({"attempted_at"})
_INSERT = re.compile(r"^\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE)


def row_context(table: str, column: str, identity: Sequence[Any]) -> bytes:
    """The associated data of ``table.column`` in the row named by ``identity``.

    ``identity`` holds the values of ``SEALED_COLUMNS[table][column]``, in
    order. A time is written as the ``repr`` of a float, whatever type it was
    given as: SQLite hands a REAL back as a float, and the bytes must match.
    """
    names = SEALED_COLUMNS[table][column]
    values = [
        repr(float(value)) if name in _REAL_COLUMNS else value
        for name, value in zip(names, identity, strict=True)
    ]
    return context(f"{table}.{column}", *values)


@lru_cache(maxsize=64)
def _sealed_positions(sql: str) -> tuple[str, list[tuple[str, int, list[int]]]] | None:
    """For an INSERT into a sealed table: the table, and per sealed column its position
    and the positions of the columns naming the row. None for any other statement."""
    match = _INSERT.match(sql)
    if match is None:
        if re.search(r"\b(dead_letters|delivery_attempts)\b", sql) and re.match(
            r"^\s*(INSERT|REPLACE)", sql, re.IGNORECASE
        ):
            raise ValueError(f"cannot tell which values to encrypt in: {sql[:80]}")
        return None
    table = match.group(1)
    if table not in SEALED_COLUMNS:
        return None
    columns = [name.strip() for name in match.group(2).split(",")]
    positions = []
    for column, naming in SEALED_COLUMNS[table].items():
        if column in columns:
            positions.append((column, columns.index(column), [columns.index(n) for n in naming]))
    return table, positions


def seal_statements(
    keyring: Keyring, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]
) -> list[tuple[str, Sequence[Sequence[Any]]]]:
    """The statements with their sealed columns sealed (unchanged when encryption is off)."""
    if not keyring.enabled:
        return list(statements)
    sealed: list[tuple[str, Sequence[Sequence[Any]]]] = []
    for sql, rows in statements:
        found = _sealed_positions(sql)
        if not found or not found[1]:
            sealed.append((sql, rows))
            continue
        table, positions = found
        new_rows = []
        for row in rows:
            values = list(row)
            for column, index, naming in positions:
                if values[index] is not None:
                    identity = [values[i] for i in naming]
                    values[index] = keyring.seal(
                        bytes(values[index]), row_context(table, column, identity)
                    )
            new_rows.append(tuple(values))
        sealed.append((sql, new_rows))
    return sealed


def open_column(
    keyring: Keyring,
    table: str,
    column: str,
    stored: bytes | None,
    identity: Sequence[Any],
    where: str,
) -> bytes | None:
    """A stored dead-letter or history value, opened (raises like :meth:`Keyring.open`)."""
    if stored is None:
        return None
    return keyring.open(bytes(stored), row_context(table, column, identity), where)


def key_id_sql(column: str) -> str:
    """SQL for the key id of a sealed ``column`` (its length is the header's sixth byte,
    at most 64, so one character once cast to text; the id follows it)."""
    return f"substr({column}, 7, unicode(CAST(substr({column}, 6, 1) AS TEXT)))"


def sealed_sql(column: str) -> str:
    """SQL true when ``column`` is sealed; takes :data:`MAGIC` as its parameter."""
    return f"substr({column}, 1, 4) = ?"


def batch_context(first_seq: int, last_seq: int) -> bytes:
    """The associated data of the bodies of the batch holding ``first_seq..last_seq``."""
    return context("batches.bodies", first_seq, last_seq)
