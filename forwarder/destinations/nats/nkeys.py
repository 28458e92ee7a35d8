"""NKey seeds and credentials files, read with ``cryptography`` (no ``nkeys`` package).

nats-py signs the server's nonce with the ``nkeys`` package, an optional
extra this project does not install. An NKey is only an Ed25519 key in a
base32 envelope (two prefix bytes, the 32-byte key, a CRC-16/XMODEM), and
``cryptography`` (already a dependency, for the integrity chain) signs
Ed25519, so the envelope is decoded here and nats-py is handed the two
callbacks its ``connect`` takes: the public key (``nkey`` in CONNECT) and a
nonce signer; a credentials file adds the user JWT.

A seed or a credentials file is read when a connection is made, not kept in
the configuration: the secret never reaches a model that could be logged,
and a rotated file is used at the next connection.

``cryptography`` is imported inside the functions that decode or encode a
key, not at the top: the daemon imports this module with every destination
kind, and loading ``cryptography`` costs ~8 MB in every daemon, with or
without a NATS forwarder (measured: 2.5 MB anonymous, 5.5 MB of its mapped
Rust extension); ``tests/e2e/test_process_model.py`` guards this.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PREFIX_SEED = 18 << 3  # 'S'
PREFIX_USER = 20 << 3  # 'U'
_JWT = re.compile(r"-{3,}BEGIN NATS USER JWT-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END NATS USER JWT")
_CREDS_SEED = re.compile(r"-{3,}BEGIN USER NKEY SEED-{3,}\s*\n\s*(S\S+)\s*\n\s*-{3,}END USER NKEY")


class NKeyError(ValueError):
    """A seed or credentials file that cannot be used; the message never quotes the secret."""


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as NKeys checksum their envelope."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _decode(text: str) -> bytes:
    """The raw bytes of a base32 NKey envelope, checksum verified."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise NKeyError("not an NKey: not base32") from None
    if len(raw) < 4 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise NKeyError("not an NKey: bad checksum")
    return raw[:-2]


def _encode(payload: bytes) -> str:
    envelope = payload + crc16(payload).to_bytes(2, "little")
    return base64.b32encode(envelope).decode().rstrip("=")


@dataclass(frozen=True)
class KeyPair:
    """An NKey user: its public key (``U...``) and a signer for the server's nonce."""

    private_key: Ed25519PrivateKey
    public_key: str

    def sign_nonce(self, nonce: str) -> bytes:
        """The base64 signature of ``nonce``, as CONNECT's ``sig`` carries it."""
        return base64.b64encode(self.private_key.sign(nonce.encode()))


def from_seed(seed: str) -> KeyPair:
    """The key pair of an ``SU...`` seed; NKeyError when it is not one."""
    raw = _decode(seed.strip())
    if len(raw) != 34 or raw[0] & 0xF8 != PREFIX_SEED:
        raise NKeyError("not an NKey seed")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    kind = ((raw[0] & 0x07) << 5) | ((raw[1] & 0xF8) >> 3)
    private_key = Ed25519PrivateKey.from_private_bytes(raw[2:34])
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(private_key, _encode(bytes([kind]) + public))


def seed_for(private_key: Ed25519PrivateKey, kind: int = PREFIX_USER) -> str:
    """The seed text of ``private_key`` (``SU...`` for a user): the inverse of :func:`from_seed`."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    prefix = bytes([PREFIX_SEED | (kind >> 5), (kind & 0x1F) << 3])
    return _encode(prefix + raw)


def read_seed_file(path: Path) -> KeyPair:
    """The key pair of an NKey seed file."""
    return from_seed(path.read_text(encoding="utf-8"))


def read_credentials(path: Path) -> tuple[bytes, KeyPair]:
    """(user JWT, key pair) from a ``.creds`` file as ``nsc`` writes it."""
    text = path.read_text(encoding="utf-8")
    jwt, seed = _JWT.search(text), _CREDS_SEED.search(text)
    if jwt is None or seed is None:
        raise NKeyError("not a NATS credentials file: it needs a user JWT and a user NKey seed")
    return jwt.group(1).encode(), from_seed(seed.group(1))
