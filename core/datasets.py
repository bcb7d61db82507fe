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


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


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
        raise ValidationError(f"subject column {subject_column!r} is not in {path.name} (columns: {header})")
    return header, reader, header.index(subject_column)


def read_subjects(uri: str, subject_column: str, expected_digest: str | None) -> set[str]:
    """Subject ids of a local CSV dataset; checks the digest first when one was given."""
    path = local_path(uri)
    if path is None:
        return set()  # remote data: the storage plugin indexes subjects (not available for this scheme)
    if not path.is_file():
        raise ValidationError(f"dataset file {path} does not exist")
    if expected_digest is not None and file_digest(path) != expected_digest:
        raise ValidationError(f"dataset file {path} does not match digest {expected_digest}")
    if path.suffix.lower() != ".csv":
        return set()
    _, rows, index = _rows(path, subject_column)
    subjects = set()
    for number, row in enumerate(rows, 2):
        if len(row) <= index or not row[index] or len(row[index]) > MAX_SUBJECT_ID:
            raise ValidationError(f"{path.name}:{number}: missing or invalid subject id")
        subjects.add(row[index])
    return subjects


def write_view(uri: str, subject_column: str, allowed: set[str], destination: Path) -> tuple[Path, int, int]:
    """Copy the rows of allowed subjects to ``destination``; returns (path, rows kept, rows dropped)."""
    source = local_path(uri)
    if source is None:
        raise ValidationError(f"cannot build a consent view of {uri}: not a local file")
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


def erase_subject(uri: str, subject_column: str, subject_id: str) -> tuple[str, int]:
    """Rewrite a local CSV dataset without ``subject_id``; returns (new digest, rows removed)."""
    path = local_path(uri)
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
