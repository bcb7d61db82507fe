"""Model artifacts as folders (an ONNX graph with its weights sidecar, a config) in a content-addressed store.

Each file is stored by its SHA-256; a manifest listing the files (relative POSIX path, digest, size) is
stored too, and the manifest's digest is the artifact's address. The same per-file SHA-256 digests are what
a model-signing bundle's in-toto statement lists, so a signature can be checked against the manifest
without copying the files out.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from falaj.core.errors import BackendError, ValidationError
from falaj.core.plugin import ArtifactStore

FORMAT = "falaj-artifact/v1"


def put_folder(store: ArtifactStore, tenant: str, folder: Path) -> tuple[str, dict[str, Any]]:
    """Store every file of ``folder`` and its manifest; return (manifest digest, manifest)."""
    if not folder.is_dir():
        raise ValidationError(f"{folder} is not a folder")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise ValidationError(f"{path} is a symbolic link: artifacts hold regular files only")
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel.split("/")[0] in (".git", ".github") or rel in (".gitignore", ".gitattributes"):
            continue
        with path.open("rb") as fh:
            info = store.put(fh, tenant=tenant)
        files[rel] = {"digest": info.digest, "size": info.size}
    if not files:
        raise ValidationError(f"{folder} holds no files")
    manifest = {"format": FORMAT, "files": files}
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return store.put(io.BytesIO(blob), tenant=tenant).digest, manifest


def read_manifest(store: ArtifactStore, tenant: str, digest: str) -> dict[str, Any]:
    with store.open(digest, tenant=tenant) as fh:
        raw = fh.read(16 * 1024 * 1024)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BackendError(f"artifact {digest} is not a Falaj artifact manifest") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackendError(f"artifact {digest} is not a Falaj artifact manifest ({FORMAT})")
    return manifest


def materialize(store: ArtifactStore, tenant: str, digest: str, destination: Path) -> Path:
    """Write the artifact's files under ``destination`` (each one integrity-checked by the store)."""
    manifest = read_manifest(store, tenant, digest)
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    for rel, entry in manifest["files"].items():
        target = (destination / rel).resolve()
        if root not in target.parents:
            raise BackendError(f"artifact {digest} names a file outside its folder: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open(entry["digest"], tenant=tenant) as src, target.open("wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    return destination


def check_files(store: ArtifactStore, tenant: str, manifest: dict[str, Any]) -> None:
    """Re-read every file of an artifact; the store raises ``BackendError`` for any whose bytes changed."""
    for rel, entry in manifest["files"].items():
        try:
            with store.open(entry["digest"], tenant=tenant):
                pass
        except BackendError as exc:
            raise BackendError(f"artifact file {rel}: {exc}") from exc
