"""Ed25519 key pairs for checkpoints: generating, loading, signing, verifying.

The only module of the package that imports ``cryptography``, so that the
commands and the daemon pay for it only when a forwarder has ``integrity``
or an operator runs ``keygen`` / ``verify``.

Keys are PEM: the private key PKCS#8 (``-----BEGIN PRIVATE KEY-----``, what
``audit-forwarder keygen`` and ``openssl genpkey -algorithm ed25519`` write),
the public key SubjectPublicKeyInfo. A key's id is the first 16 hex digits of
SHA-256 of its 32 raw public bytes: a checkpoint names the key that signed it,
so ``verify`` can be given the keys of a rotation and pick the right one.

Errors never quote the key material: a message says what kind of text was
found (a public key, another algorithm, not PEM), never its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forwarder.integrity.records import checkpoint_message


class KeyError_(ValueError):  # KeyError is a builtin (a lookup error); this is a ValueError
    """A key text that cannot be used; the message never contains the key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id checkpoints name: 16 hex digits of SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate() -> tuple[bytes, bytes]:
    """A new key pair as PEM: (private PKCS#8, public SubjectPublicKeyInfo)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, public_pem(private.public_key())


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(text: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM ``text``; ``KeyError_`` saying what is wrong."""
    data = text.strip().encode()
    if b"-----BEGIN" not in data:
        raise KeyError_("is not a PEM key (expected -----BEGIN PRIVATE KEY-----)")
    if b"PUBLIC KEY-----" in data:
        raise KeyError_(
            "is a public key: integrity needs the private key (the .key file of keygen)"
        )
    if b"ENCRYPTED PRIVATE KEY-----" in data:
        raise KeyError_("is encrypted with a passphrase: give an unencrypted PKCS#8 key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_("cannot be read as a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_("is not an Ed25519 key (keygen writes one)")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM ``data``; ``KeyError_`` saying what is wrong."""
    if b"PRIVATE KEY-----" in data:
        raise KeyError_("is a private key: verify needs the public key (the .pub file)")
    try:
        key = serialization.load_pem_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_("cannot be read as a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_("is not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs checkpoints with one private key. Ed25519 is deterministic: the same head,
    the same signature, which is what keeps a redelivered checkpoint identical."""

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_pem(cls, text: str) -> Signer:
        """A signer for the PEM private key ``text``."""
        key = load_private_key(text)
        return cls(key, key_id(key.public_key()))

    def sign(self, head: str) -> str:
        """The base64 signature of the checkpoint at record hash ``head``."""
        return base64.b64encode(self.private_key.sign(checkpoint_message(head))).decode()


def signature_valid(public_key: Ed25519PublicKey, head: str, signature: str) -> bool:
    """Whether ``signature`` (base64) signs the checkpoint at ``head`` with ``public_key``."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, checkpoint_message(head))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
