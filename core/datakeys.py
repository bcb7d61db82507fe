"""Per-tenant data keys for encryption at rest, wrapped by the installation's master key.

Each tenant has one active 256-bit data key (more after a rotation; old ones stay to read old data). The key
is stored only wrapped: AES-256-GCM under a key-encryption key derived from the master key (HKDF-SHA256),
with the tenant and key id as associated data, so a wrapped key copied to another tenant's row does not
unwrap. Backends get a :class:`DataKeyring` bound to their tenant: they can encrypt with the current key and
decrypt with any of that tenant's keys, and never see another tenant's.
"""

from __future__ import annotations

import base64
import secrets
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from falaj.core.db import read_only
from falaj.core.domain import TenantDataKey, new_id, utcnow
from falaj.core.errors import ConfigurationError


def _kek(master: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=SHA256(), length=32, salt=None, info=b"falaj data-key wrapping v1").derive(master))


def wrap(master: bytes, tenant: str, key_id: str, key: bytes) -> str:
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + _kek(master).encrypt(nonce, key, f"{tenant}/{key_id}".encode())).decode("ascii")


def unwrap(master: bytes, tenant: str, key_id: str, wrapped: str) -> bytes:
    raw = base64.b64decode(wrapped)
    try:
        return _kek(master).decrypt(raw[:12], raw[12:], f"{tenant}/{key_id}".encode())
    except InvalidTag as exc:
        raise ConfigurationError(
            f"data key {key_id} of tenant {tenant!r} does not unwrap: the master key is not the one it was made with"
        ) from exc


@dataclass
class DataKeyring:
    """One tenant's data keys, unwrapped on first use and kept in memory."""

    engine: Engine
    master: bytes
    tenant: str
    _keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    _current: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def current(self) -> tuple[str, bytes]:
        """The key new data is encrypted with (made on first use)."""
        with self._lock:
            if self._current is None:
                self._current = self._load_or_create()
            return self._current, self._keys[self._current]

    def get(self, key_id: str) -> bytes:
        """Any of this tenant's keys, to decrypt what it encrypted."""
        with self._lock:
            if key_id not in self._keys:
                with read_only(self.engine).connect() as conn:
                    row = conn.execute(
                        select(TenantDataKey.wrapped).where(
                            TenantDataKey.tenant == self.tenant, TenantDataKey.key_id == key_id
                        )
                    ).first()
                if row is None:
                    raise ConfigurationError(f"tenant {self.tenant!r} has no data key {key_id!r}")
                self._keys[key_id] = unwrap(self.master, self.tenant, key_id, row.wrapped)
            return self._keys[key_id]

    def _load_or_create(self) -> str:
        for _ in range(3):
            with read_only(self.engine).connect() as conn:
                row = conn.execute(
                    select(TenantDataKey.key_id, TenantDataKey.wrapped)
                    .where(TenantDataKey.tenant == self.tenant, TenantDataKey.active.is_(True))
                    .order_by(TenantDataKey.created_at.desc())
                    .limit(1)
                ).first()
            if row is not None:
                self._keys[row.key_id] = unwrap(self.master, self.tenant, row.key_id, row.wrapped)
                return str(row.key_id)
            key_id, key = "dk-" + secrets.token_hex(8), AESGCM.generate_key(bit_length=256)
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(TenantDataKey).values(
                            id=new_id(),
                            created_at=utcnow(),
                            tenant=self.tenant,
                            key_id=key_id,
                            wrapped=wrap(self.master, self.tenant, key_id, key),
                            active=True,
                        )
                    )
            except IntegrityError:
                continue  # another worker made the tenant's first key at the same moment: use that one
            self._keys[key_id] = key
            return key_id
        raise ConfigurationError(f"could not make a data key for tenant {self.tenant!r}")


def ensure_data_key(conn: Connection, master: bytes, tenant: str) -> str:
    """Make the tenant's first data key inside the caller's transaction, unless it has one; its key id.

    Called when a tenant registers a storage backend, so the key exists (committed with the backend)
    before anything is stored; a keyring then only reads it.
    """
    row = conn.execute(
        select(TenantDataKey.key_id).where(TenantDataKey.tenant == tenant, TenantDataKey.active.is_(True))
    ).first()
    if row is not None:
        return str(row.key_id)
    key_id, key = "dk-" + secrets.token_hex(8), AESGCM.generate_key(bit_length=256)
    conn.execute(
        insert(TenantDataKey).values(
            id=new_id(),
            created_at=utcnow(),
            tenant=tenant,
            key_id=key_id,
            wrapped=wrap(master, tenant, key_id, key),
            active=True,
        )
    )
    return key_id
