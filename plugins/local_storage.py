"""Builtin artifact storage on the local filesystem: content-addressed by SHA-256, encrypted at rest.

Every blob is stored under the SHA-256 of its plaintext (the address manifests and signatures name) and
encrypted with the tenant's data key (AES-256-GCM, per-tenant keys wrapped by the master key; see
``falaj.core.datakeys``). The file is a header and a sequence of 1 MiB chunks, each sealed with its own
nonce (a random 8-byte prefix and the chunk number) and authenticated together with the header, its number
and whether it is the last, so a chunk cannot be altered, dropped, reordered or moved to another blob
without the read failing. Writes go to a temporary file and are renamed into place, so a failed or refused
upload leaves nothing behind. Every read is checked twice over: each chunk's tag, and the SHA-256 of the
whole plaintext against the address.

Blobs written before encryption (no header) are still read, and checked against their digest.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from falaj.core.errors import BackendError, FalajError
from falaj.core.plugin import ArtifactInfo, ArtifactStore, BackendConfig, StorageBackendSpec, hookimpl

CHUNK = 1 << 20
MAGIC = b"FLJENC1\n"
TAG = 16
# header: MAGIC, key id length (1 byte) and key id, nonce prefix (8 bytes); then the sealed chunks, every
# one CHUNK bytes of plaintext but the last (which may be empty), each followed by its 16-byte tag.


def _header(key_id: str, prefix: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return MAGIC + bytes([len(kid)]) + kid + prefix


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">I?", index, final)


def _read_header(fh: BinaryIO) -> tuple[bytes, str, bytes] | None:
    """(header bytes, key id, nonce prefix), or None for a blob stored in the clear."""
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        fh.seek(0)
        return None
    length_raw = fh.read(1)
    kid = fh.read(length_raw[0]) if length_raw else b""
    prefix = fh.read(8)
    if not length_raw or len(kid) != length_raw[0] or len(prefix) != 8:
        raise BackendError("the stored blob's header is truncated")
    return MAGIC + length_raw + kid + prefix, kid.decode("ascii"), prefix


def _plain_size(path: Path) -> int:
    """The plaintext size of a stored blob, from its length (every chunk but the last is full)."""
    with path.open("rb") as fh:
        head = _read_header(fh)
    total = path.stat().st_size
    if head is None:
        return total
    payload = total - len(head[0])
    chunks = max(1, -(-payload // (CHUNK + TAG)))
    return payload - chunks * TAG


def _chunks(fh: BinaryIO, aead: AESGCM, header: bytes, prefix: bytes) -> Iterator[bytes]:
    """The plaintext chunks of an encrypted blob, each authenticated; raises BackendError on any tampering.

    A chunk is the last exactly when the file ends after it, and that is authenticated too: a blob cut at
    a chunk boundary fails, because its new last chunk was sealed as not the last.
    """
    index = 0
    sealed = fh.read(CHUNK + TAG)
    while True:
        if len(sealed) < TAG:
            raise BackendError("the stored blob is truncated")
        following = fh.read(CHUNK + TAG) if len(sealed) == CHUNK + TAG else b""
        final = not following
        try:
            yield aead.decrypt(prefix + struct.pack(">I", index), sealed, _aad(header, index, final))
        except InvalidTag:
            raise BackendError(f"chunk {index} of the stored blob fails authentication: it was altered") from None
        if final:
            return
        sealed, index = following, index + 1


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes, or fewer only at the end of the stream (a socket may return less per read)."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class _DecryptingReader(io.RawIOBase):
    """A read-only stream of a blob's plaintext, decrypted (and authenticated) chunk by chunk."""

    def __init__(self, fh: BinaryIO, chunks: Iterator[bytes]) -> None:
        self._fh, self._chunks, self._buffer = fh, chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


class LocalArtifactStore(ArtifactStore):
    """``<root>/<tenant>/sha256/<ab>/<hex>``; ``root`` from settings, else the backend's home folder.

    Settings: ``root`` (a folder), ``encrypt`` (default true; false stores plaintext, for a volume that is
    encrypted by other means).
    """

    def __init__(self, config: BackendConfig) -> None:
        root = config.settings.get("root")
        if root is not None and not isinstance(root, str):
            raise ValueError("setting 'root' must be a path string")
        encrypt = config.settings.get("encrypt", True)
        if not isinstance(encrypt, bool):
            raise ValueError("setting 'encrypt' must be true or false")
        if encrypt and config.data_keys is None:
            raise ValueError("encryption at rest needs the tenant's data keys, which this configuration lacks")
        self.root = Path(root).expanduser() if root else config.home
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys = config.data_keys if encrypt else None
        self.tenant = config.tenant

    def _path(self, digest: str, tenant: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise BackendError(f"not a sha256 digest: {digest!r}")
        if not tenant or "/" in tenant or tenant.startswith("."):
            raise BackendError(f"invalid tenant {tenant!r}")
        if self.keys is not None and tenant != self.tenant:
            raise BackendError(f"this store holds tenant {self.tenant!r}'s keys, not {tenant!r}'s")
        return self.root / tenant / "sha256" / hexdigest[:2] / hexdigest

    def put(self, stream: BinaryIO, *, tenant: str, expected_digest: str | None = None) -> ArtifactInfo:
        if expected_digest is not None:
            self._path(expected_digest, tenant)  # validates the form before reading anything
        else:
            self._path("sha256:" + "0" * 64, tenant)
        staging = self.root / tenant / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=staging)
        try:
            with os.fdopen(fd, "wb") as out:
                if self.keys is None:
                    while chunk := stream.read(CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                else:
                    size = self._encrypt(stream, out, h)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            if expected_digest is not None and digest != expected_digest:
                raise BackendError(f"digest mismatch: expected {expected_digest}, received {digest}")
            final = self._path(digest, tenant)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ArtifactInfo(digest=digest, size=size, uri=final.as_uri())

    def _encrypt(self, stream: BinaryIO, out: BinaryIO, h: Any) -> int:
        """Seal ``stream`` into ``out`` chunk by chunk, reading one chunk ahead to know which is the last."""
        key_id, key = self.keys.current()  # type: ignore[union-attr]
        aead, prefix = AESGCM(key), secrets.token_bytes(8)
        header = _header(key_id, prefix)
        out.write(header)
        size, index = 0, 0
        current = _read_full(stream, CHUNK)
        while True:
            following = _read_full(stream, CHUNK) if len(current) == CHUNK else b""
            final = not following
            h.update(current)
            size += len(current)
            out.write(aead.encrypt(prefix + struct.pack(">I", index), current, _aad(header, index, final)))
            if final:
                return size
            current, index = following, index + 1

    def _plaintext(self, path: Path) -> tuple[BinaryIO, Iterator[bytes] | None]:
        fh: BinaryIO = path.open("rb")
        try:
            head = _read_header(fh)
            if head is None:
                return fh, None
            header, key_id, prefix = head
            if self.keys is None:
                raise BackendError("the blob is encrypted but this store was configured with encrypt = false")
            try:
                key = self.keys.get(key_id)
            except FalajError as exc:  # not this tenant's key, or the master key changed
                raise BackendError(f"the blob's data key cannot be used: {exc}") from exc
            return fh, _chunks(fh, AESGCM(key), header, prefix)
        except BaseException:
            fh.close()
            raise

    def open(self, digest: str, *, tenant: str) -> BinaryIO:
        path = self._path(digest, tenant)
        if not path.exists():
            raise BackendError(f"artifact {digest} not found")
        h = hashlib.sha256()
        fh, chunks = self._plaintext(path)
        with fh:
            if chunks is None:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
            else:
                for chunk in chunks:
                    h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise BackendError(f"artifact {digest} is corrupt: its bytes no longer match its digest")
        fh, chunks = self._plaintext(path)
        if chunks is None:
            return fh
        return io.BufferedReader(_DecryptingReader(fh, chunks), buffer_size=CHUNK)  # type: ignore[return-value]

    def exists(self, digest: str, *, tenant: str) -> bool:
        return self._path(digest, tenant).is_file()

    def delete(self, digest: str, *, tenant: str) -> None:
        self._path(digest, tenant).unlink(missing_ok=True)

    def list(self, *, tenant: str) -> Iterable[ArtifactInfo]:
        base = self.root / tenant / "sha256"
        if not base.exists():
            return []
        return [
            ArtifactInfo(
                digest="sha256:" + p.name,
                size=_plain_size(p),
                uri=p.as_uri(),
                stored_at=datetime.fromtimestamp(p.stat().st_mtime, UTC),
            )
            for p in sorted(base.glob("*/*"))
            if p.is_file()
        ]


@hookimpl
def falaj_storage_backends() -> Iterable[StorageBackendSpec]:
    yield StorageBackendSpec(
        name="local",
        factory=LocalArtifactStore,
        description="Local filesystem, content-addressed by SHA-256, AES-256-GCM encrypted with per-tenant keys, "
        "integrity checked on every read",
        capabilities=frozenset({"cpu", "content-addressed", "encrypted-at-rest"}),
    )
