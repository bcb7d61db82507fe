"""Key material kept under ``FALAJ_HOME/keys``: private keys encrypted at rest with the master key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from falaj.core.audit.verifier import key_id_of
from falaj.core.config import Settings
from falaj.core.errors import ConfigurationError

AUDIT_KEY_FILE = "audit-ed25519.pem"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def master_key(settings: Settings, *, create: bool = False) -> bytes:
    """The key that encrypts private keys at rest.

    ``FALAJ_MASTER_KEY`` wins; otherwise ``keys/master.key`` under ``FALAJ_HOME`` (created by ``falaj init``
    with owner-only permissions).
    """
    if settings.master_key:
        return settings.master_key.encode("utf-8")
    path = settings.keys_dir / "master.key"
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise ConfigurationError(f"no master key: set FALAJ_MASTER_KEY or run `falaj init` to create {path}")
    key = secrets.token_urlsafe(32).encode("ascii")
    _write_private(path, key)
    return key


class AuditSigner:
    """Signs audit checkpoints with the instance's Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def load(cls, settings: Settings, *, create: bool = False) -> AuditSigner:
        path = settings.keys_dir / AUDIT_KEY_FILE
        secret = master_key(settings, create=create)
        if not path.exists():
            if not create:
                raise ConfigurationError(f"no audit signing key at {path}: run `falaj init`")
            key = Ed25519PrivateKey.generate()
            _write_private(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(secret),
                ),
            )
            (settings.keys_dir / "audit-ed25519.pub.pem").write_bytes(cls(key).public_pem())
            return cls(key)
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=secret)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"cannot decrypt the audit key {path}: the master key does not match ({exc})"
            ) from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} is not an Ed25519 private key")
        return cls(loaded)
