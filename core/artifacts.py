"""Model artifacts as folders (an ONNX graph with its weights sidecar, a config) in a content-addressed store.

Each file is stored by its SHA-256; a manifest listing the files (relative POSIX path, digest, size) is
stored too, and the manifest's digest is the artifact's address. The same per-file SHA-256 digests are what
a model-signing bundle's in-toto statement lists, so a signature can be checked against the manifest
without copying the files out.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

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
    return _manifest(store, tenant, files)


MAX_TAR_MEMBERS = 10_000


def _manifest(store: ArtifactStore, tenant: str, files: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    manifest = {"format": FORMAT, "files": files}
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return store.put(io.BytesIO(blob), tenant=tenant).digest, manifest


def put_tar(store: ArtifactStore, tenant: str, stream: BinaryIO) -> tuple[str, dict[str, Any]]:
    """Store the regular files of an uncompressed tar archive, read as a stream, and their manifest.

    Only regular files and folders are accepted: links, devices, absolute names and ``..`` are refused,
    so an archive can never name a file outside the artifact.
    """
    files: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_TAR_MEMBERS:
                    raise ValidationError(f"the archive holds more than {MAX_TAR_MEMBERS} entries")
                name = PurePosixPath(member.name)
                parts = [p for p in name.parts if p != "."]
                if name.is_absolute() or ".." in parts:
                    raise ValidationError(f"archive entry {member.name[:200]!r} points outside the artifact")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ValidationError(
                        f"archive entry {member.name[:200]!r} is a link or a device: artifacts hold regular files only"
                    )
                if not parts:
                    continue
                rel = "/".join(parts)
                if rel in files:
                    raise ValidationError(f"archive entry {rel!r} appears twice")
                source = archive.extractfile(member)
                assert source is not None
                info = store.put(cast(BinaryIO, source), tenant=tenant)
                files[rel] = {"digest": info.digest, "size": info.size}
    except tarfile.TarError as exc:
        raise ValidationError(f"the upload is not a readable tar archive: {exc}") from exc
    if not files:
        raise ValidationError("the archive holds no files")
    return _manifest(store, tenant, files)


def put_file(store: ArtifactStore, tenant: str, filename: str, stream: BinaryIO) -> tuple[str, dict[str, Any]]:
    """Store one file as a one-file artifact named ``filename``."""
    info = store.put(stream, tenant=tenant)
    return _manifest(store, tenant, {filename: {"digest": info.digest, "size": info.size}})


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
