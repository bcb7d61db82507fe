"""Builtin artifact storage on the local filesystem, content-addressed by SHA-256.

Artifacts are written to a temporary file while their digest is computed, then renamed into place, so
a failed or refused upload leaves nothing behind; every read re-checks the digest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from falaj.core.errors import BackendError
from falaj.core.plugin import ArtifactInfo, ArtifactStore, BackendConfig, StorageBackendSpec, hookimpl

CHUNK = 1 << 20


class LocalArtifactStore(ArtifactStore):
    """``<root>/<tenant>/sha256/<ab>/<hex>``; ``root`` from settings, else the backend's home folder."""

    def __init__(self, config: BackendConfig) -> None:
        root = config.settings.get("root")
        if root is not None and not isinstance(root, str):
            raise ValueError("setting 'root' must be a path string")
        self.root = Path(root).expanduser() if root else config.home
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str, tenant: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise BackendError(f"not a sha256 digest: {digest!r}")
        if not tenant or "/" in tenant or tenant.startswith("."):
            raise BackendError(f"invalid tenant {tenant!r}")
        return self.root / tenant / "sha256" / hexdigest[:2] / hexdigest

    def put(self, stream: BinaryIO, *, tenant: str, expected_digest: str | None = None) -> ArtifactInfo:
        if expected_digest is not None:
            self._path(expected_digest, tenant)  # validates the form before reading anything
        staging = self.root / tenant / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=staging)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
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

    def open(self, digest: str, *, tenant: str) -> BinaryIO:
        path = self._path(digest, tenant)
        if not path.exists():
            raise BackendError(f"artifact {digest} not found")
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise BackendError(f"artifact {digest} is corrupt: its bytes no longer match its digest")
        return path.open("rb")

    def exists(self, digest: str, *, tenant: str) -> bool:
        return self._path(digest, tenant).is_file()

    def delete(self, digest: str, *, tenant: str) -> None:
        self._path(digest, tenant).unlink(missing_ok=True)

    def list(self, *, tenant: str) -> Iterable[ArtifactInfo]:
        base = self.root / tenant / "sha256"
        if not base.exists():
            return []
        return [
            ArtifactInfo(digest="sha256:" + p.name, size=p.stat().st_size, uri=p.as_uri())
            for p in sorted(base.glob("*/*"))
            if p.is_file()
        ]


@hookimpl
def falaj_storage_backends() -> Iterable[StorageBackendSpec]:
    yield StorageBackendSpec(
        name="local",
        factory=LocalArtifactStore,
        description="Local filesystem, content-addressed by SHA-256, integrity checked on every read",
        capabilities=frozenset({"cpu", "content-addressed"}),
    )
