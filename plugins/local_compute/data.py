"""Reading a job's CSV inputs in the worker (standard ``csv`` and numpy; no pandas).

Each input file is read once into memory and hashed from the same bytes that are parsed, so the digest
in the lineage is the digest of exactly what was trained on. Several inputs are stacked row-wise: each must
hold the columns the job uses.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from falaj.plugins.local_compute.spec import TrainingSpec, input_path

FloatArray = npt.NDArray[np.float64]


class JobError(Exception):
    """A job cannot go on for a reason its owner can fix; the message says what and where."""


@dataclass(frozen=True)
class InputTable:
    """One input CSV file as read: where it came from, its digest, header and rows (as strings)."""

    dataset: str
    version: Any
    classification: str | None
    uri: str
    path: Path
    sha256: str
    header: list[str]
    rows: list[list[str]]
    consent_filtered: bool
    reported_rows: int | None
    excluded_rows: int | None

    @property
    def label(self) -> str:
        return f"{self.dataset} v{self.version}"

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def lineage(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "classification": self.classification,
            "uri": self.uri,
            "sha256": self.sha256,
            "rows": len(self.rows),
            "reported_rows": self.reported_rows,
            "excluded_rows": self.excluded_rows,
            "consent_filtered": self.consent_filtered,
        }


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_input(entry: Mapping[str, Any]) -> InputTable:
    """Read and hash one input entry's CSV file; its rows must match the header and the count the control
    plane reported (a consent view that changed after submission is refused)."""
    try:
        path = input_path(entry)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    raw = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    label = f"{entry.get('dataset')} v{entry.get('version')}"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobError(f"{label}: the file is not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise JobError(f"{label}: the file has no header row")
    if len(set(header)) != len(header):
        raise JobError(f"{label}: the header names a column twice")
    rows = []
    for line, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise JobError(f"{label} line {line}: {len(row)} fields, but the header has {len(header)}")
        rows.append(row)
    reported = _optional_int(entry.get("rows"))
    if reported is not None and reported != len(rows):
        raise JobError(
            f"{label}: the file holds {len(rows)} rows but the control plane wrote {reported}: it changed after "
            "the job was submitted"
        )
    return InputTable(
        dataset=str(entry.get("dataset")),
        version=entry.get("version"),
        classification=entry.get("classification") if isinstance(entry.get("classification"), str) else None,
        uri=str(entry.get("uri")),
        path=path,
        sha256=digest,
        header=header,
        rows=rows,
        consent_filtered=bool(entry.get("consent_filtered", False)),
        reported_rows=reported,
        excluded_rows=_optional_int(entry.get("excluded_rows")),
    )


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_numbers(values: Sequence[str]) -> FloatArray | None:
    """The values as float64, or None if one is not a finite number."""
    out = np.empty(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        value = _float(text)
        if value is None:
            return None
        out[i] = value
    return out


def numbers_or_fail(table: InputTable, column: str) -> FloatArray:
    values = table.column(column)
    parsed = parse_numbers(values)
    if parsed is None:
        bad = next(i for i, v in enumerate(values) if _float(v) is None)
        raise JobError(
            f"{table.label} column {column!r} line {bad + 2}: {values[bad]!r} is not a number "
            "(features and a regression target must be finite numbers)"
        )
    return parsed


@dataclass(frozen=True)
class Tabular:
    """The rows of every input, stacked: features as float64, the target as strings (classes) or floats."""

    features: list[str]
    x: FloatArray
    target: str
    y_text: list[str]
    ignored: list[str]  # columns left out of the default features (not numeric everywhere)


def tabular(tables: Sequence[InputTable], spec: TrainingSpec) -> Tabular:
    """Assemble the feature matrix and target of a builtin trainer from the inputs."""
    assert spec.target is not None
    target = spec.target
    for table in tables:
        for column in (target, *(spec.features or ())):
            if column not in table.header:
                raise JobError(f"column {column!r} is not in {table.label} (columns: {', '.join(table.header)})")
    ignored: list[str] = []
    if spec.features is not None:
        features = list(spec.features)
    else:
        features = []
        for column in tables[0].header:
            if column in (target, spec.subject_column):
                continue
            if all(column in t.header and parse_numbers(t.column(column)) is not None for t in tables):
                features.append(column)
            else:
                ignored.append(column)
        if not features:
            raise JobError(
                "no numeric feature columns: every column but the target and subject column holds text; "
                "name the features in the spec"
            )
    blocks = [np.column_stack([numbers_or_fail(t, f) for f in features]) for t in tables if t.rows]
    x = np.concatenate(blocks) if blocks else np.empty((0, len(features)))
    y_text = [v for t in tables for v in t.column(target)]
    if any(v == "" for v in y_text):
        raise JobError(f"column {target!r} (the target) has empty values")
    return Tabular(features=features, x=x, target=target, y_text=y_text, ignored=ignored)


def columns(table: InputTable) -> dict[str, npt.NDArray[Any]]:
    """Every column of a table: float64 where every value is a finite number, else strings."""
    out: dict[str, npt.NDArray[Any]] = {}
    for name in table.header:
        values = table.column(name)
        parsed = parse_numbers(values)
        out[name] = parsed if parsed is not None else np.array(values, dtype=str)
    return out
