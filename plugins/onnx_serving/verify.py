"""What the data plane checks before it loads a variant: the files are the signed ones, byte for byte.

1. The manifest is the registered artifact (its canonical JSON hashes to ``artifact_digest``, when given).
2. At least one signature bundle verifies with a trusted key, and the files it signs are exactly the
   manifest's (``falaj.core.signing.verify_against_manifest``: model-signing's offline ECDSA verifier).
3. Every file of the artifact folder is re-hashed against the manifest (SHA-256 and size); a missing file,
   an extra file, a link or a changed byte refuses the variant. The bytes are hashed while they are copied
   into a private folder of the server, and the model is loaded from that copy: what was checked is what runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falaj.plugins.onnx_serving.settings import MANIFEST_FORMAT, VariantSpec

CHUNK = 1 << 20


class VerificationError(Exception):
    """A variant's artifact or signature does not check out; the message says exactly why."""


@dataclass(frozen=True, slots=True)
class VerifiedArtifact:
    folder: Path  # the private, verified copy
    key_id: str  # the trusted key whose signature verified
    files: int
    size: int


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The artifact address of a manifest: SHA-256 of its canonical JSON (as ``falaj.core.artifacts`` stores it)."""
    blob = json.dumps(dict(manifest), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def folder_manifest(folder: Path) -> dict[str, Any]:
    """A ``falaj-artifact/v1`` manifest of a folder: every regular file, its SHA-256 and size."""
    files: dict[str, dict[str, Any]] = {}
    for rel, path in _walk(folder):
        h = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        files[rel] = {"digest": "sha256:" + h.hexdigest(), "size": size}
    return {"format": MANIFEST_FORMAT, "files": files}


def _walk(folder: Path) -> list[tuple[str, Path]]:
    """The regular files under ``folder`` as (relative POSIX path, path); links and devices are refused."""
    if folder.is_symlink() or not folder.is_dir():
        raise VerificationError(f"artifact folder {folder} does not exist or is not a folder")
    found: list[tuple[str, Path]] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise VerificationError(f"artifact file {rel} is a symbolic link: artifacts hold regular files only")
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise VerificationError(f"artifact file {rel} is not a regular file")
        found.append((rel, path))
    return found


def check_signatures(variant: VariantSpec) -> str:
    """The key id of a trusted signature that verifies against the manifest; else ``VerificationError``."""
    from falaj.core import signing

    if not variant.signatures:
        raise VerificationError("it has no signature: only signed artifacts are served")
    problems: list[str] = []
    for sig in variant.signatures:
        kid = str(sig["key_id"])
        bundle = dict(sig["bundle"])
        pem = variant.trusted_keys.get(kid)
        if pem is None:
            if kid == signing.SIGSTORE:
                problems.append("a Sigstore keyless signature cannot be checked offline by this runtime")
            else:
                problems.append(f"the signature by {kid} is not from a trusted key")
            continue
        try:
            actual = signing.key_id(pem.encode())
        except Exception as exc:
            problems.append(f"trusted key {kid} is not a usable public key: {exc}")
            continue
        if actual != kid:
            problems.append(f"the trusted key listed as {kid} is in fact {actual}")
            continue
        hint = signing.bundle_key_id(bundle)
        if hint is not None and hint != kid:
            problems.append(f"the bundle listed under {kid} was made with key {hint}")
            continue
        problem = signing.verify_against_manifest(bundle, pem.encode(), dict(variant.manifest))
        if problem is None:
            return kid
        problems.append(f"the signature by {kid}: {problem}")
    raise VerificationError("no signature verifies with a trusted key: " + "; ".join(problems))


def copy_verified(source: Path, manifest: Mapping[str, Any], destination: Path) -> tuple[int, int]:
    """Copy ``source`` to ``destination`` while hashing; refuse any difference from ``manifest``.

    Returns (files, bytes). On failure nothing is left at ``destination``.
    """
    expected: Mapping[str, Mapping[str, Any]] = manifest["files"]
    actual = dict(_walk(source))
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise VerificationError(f"artifact file {missing[0]} is missing (the manifest lists it)")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise VerificationError(f"artifact file {extra[0]} is not in the manifest")
    for rel, path in actual.items():
        size = path.stat().st_size
        if size != expected[rel]["size"]:
            raise VerificationError(
                f"artifact file {rel} has {size} bytes, the manifest says {expected[rel]['size']}: it was changed"
            )
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True, mode=0o700)
    total = 0
    try:
        for rel, path in actual.items():
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            h = hashlib.sha256()
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as src, target.open("wb") as out:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    total += len(chunk)
            digest = "sha256:" + h.hexdigest()
            if digest != expected[rel]["digest"]:
                raise VerificationError(
                    f"artifact file {rel} does not match the manifest: its SHA-256 is {digest}, "
                    f"the signed manifest says {expected[rel]['digest']}"
                )
            target.chmod(0o400)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return len(actual), total


def verify_variant(variant: VariantSpec, destination: Path) -> VerifiedArtifact:
    """Check a variant's manifest, signatures and files, and copy the files to ``destination``."""
    if variant.artifact_digest is not None:
        digest = manifest_digest(variant.manifest)
        if digest != variant.artifact_digest:
            raise VerificationError(
                f"the manifest is not the registered artifact: it hashes to {digest}, not {variant.artifact_digest}"
            )
    key = check_signatures(variant)
    files, size = copy_verified(variant.artifact_path, variant.manifest, destination)
    return VerifiedArtifact(folder=destination, key_id=key, files=files, size=size)
