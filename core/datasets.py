"""Reading datasets the control plane can see (local CSV files): integrity, subjects, consent views.

A dataset registered with a ``file://`` URI and a subject column is read once at registration to index its
data subjects (for consent and erasure). Reads for a purpose go through ``write_view``, which copies only
the rows of allowed subjects: the backend receives the view, never the original.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from falaj.core.errors import ValidationError

MAX_SUBJECT_ID = 200


def local_path(uri: str, root: Path) -> Path | None:
    """The file a local URI names, which must lie under ``root`` (the tenant's data folder); None if remote.

    A URI outside the tenant's folder is refused, so no action can make the control plane read or rewrite
    another tenant's data or any other file of the host.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        return None
    resolved, base = path.resolve(), root.resolve()
    if base != resolved and base not in resolved.parents:
        raise ValidationError(f"local dataset files must be under {base}; {uri} is not")
    return resolved


def subject_hash(subject_id: str) -> str:
    """How records that outlive erasure name a data subject: never the id itself."""
    return "sha256:" + hashlib.sha256(subject_id.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_digest(path: Path, expected_digest: str | None) -> None:
    if expected_digest is not None and file_digest(path) != expected_digest:
        raise ValidationError(f"dataset file {path.name} does not match its registered digest {expected_digest}")


def _rows(path: Path, subject_column: str) -> tuple[list[str], Iterable[list[str]], int]:
    fh = path.open("r", encoding="utf-8", newline="")
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise ValidationError(f"{path} is empty") from None
    if subject_column not in header:
        fh.close()
        raise ValidationError(f"subject column {subject_column!r} is not in the header of {path.name}")
    return header, reader, header.index(subject_column)


def read_subjects(uri: str, subject_column: str, expected_digest: str | None, root: Path) -> set[str]:
    """Subject ids of a local CSV dataset; checks the digest first when one was given."""
    path = local_path(uri, root)
    if path is None:
        return set()  # remote data: the storage plugin indexes subjects (not available for this scheme)
    if not path.is_file():
        raise ValidationError(f"dataset file {path.name} does not exist")
    _check_digest(path, expected_digest)
    if path.suffix.lower() != ".csv":
        return set()
    _, rows, index = _rows(path, subject_column)
    subjects = set()
    for number, row in enumerate(rows, 2):
        if len(row) <= index or not row[index] or len(row[index]) > MAX_SUBJECT_ID:
            raise ValidationError(f"{path.name}:{number}: missing or invalid subject id")
        subjects.add(row[index])
    return subjects


def write_view(
    uri: str, subject_column: str, allowed: set[str], destination: Path, root: Path, expected_digest: str | None
) -> tuple[Path, int, int]:
    """Copy the rows of allowed subjects to ``destination``; returns (path, rows kept, rows dropped).

    The source is checked against its registered digest first, so the view is of the registered bytes.
    """
    source = local_path(uri, root)
    if source is None:
        raise ValidationError(f"cannot build a consent view of {uri}: not a local file")
    _check_digest(source, expected_digest)
    header, rows, index = _rows(source, subject_column)
    destination.parent.mkdir(parents=True, exist_ok=True)
    kept = dropped = 0
    fd, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            for row in rows:
                if row[index] in allowed:
                    writer.writerow(row)
                    kept += 1
                else:
                    dropped += 1
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return destination, kept, dropped


def erase_subject(uri: str, subject_column: str, subject_id: str, root: Path) -> tuple[str, int]:
    """Rewrite a local CSV file without ``subject_id``; returns (new digest, rows removed)."""
    path = local_path(uri, root)
    if path is None or not path.is_file():
        raise ValidationError(f"cannot erase from {uri}: not a local file")
    header, rows, index = _rows(path, subject_column)
    removed = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            for row in rows:
                if row[index] == subject_id:
                    removed += 1
                else:
                    writer.writerow(row)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_digest(path), removed
