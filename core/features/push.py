"""Turning pushed rows (REST pushes, stream messages) into a view's Arrow rows, one reason per bad row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from falaj.core.domain import FeatureView
from falaj.core.features.arrow import conform, view_schema
from falaj.core.plugin.interfaces import FeatureViewDef

MAX_EVENT_ID = 200
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int64": (int,),
    "float64": (int, float),
    "string": (str,),
    "bool": (bool,),
    "timestamp": (str, datetime),
}


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError("expected an ISO 8601 timestamp")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def check_row(vdef: FeatureViewDef, view: FeatureView, record: Any, now: datetime) -> tuple[dict[str, Any] | None, str]:
    """One pushed row as view columns, or (None, the reason it cannot be stored)."""
    if not isinstance(record, Mapping):
        return None, "a row is a JSON object"
    known = {*vdef.key_names, *vdef.feature_names, "event_ts", "created_ts", "event_id"}
    if view.subject_column:
        known.add(view.subject_column)
    unknown = sorted(set(record) - known)
    if unknown:
        return None, f"unknown fields {unknown[:5]} (the view has {sorted(known)})"
    out: dict[str, Any] = {}
    event_id = record.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID:
        return None, f"event_id must be a string of 1 to {MAX_EVENT_ID} characters (writes are idempotent by it)"
    out["event_id"] = event_id
    try:
        out["event_ts"] = _timestamp(record.get("event_ts"))
    except (ValueError, TypeError) as exc:
        return None, f"event_ts: {exc}"
    if record.get("created_ts") is not None:
        try:
            out["created_ts"] = _timestamp(record["created_ts"])
        except (ValueError, TypeError) as exc:
            return None, f"created_ts: {exc}"
    else:
        out["created_ts"] = None  # never the arrival time: a redelivered row must be the same row
    for name, dtype in (*vdef.join_keys, *vdef.features):
        value = record.get(name)
        is_key = name in vdef.key_names
        if value is None:
            if is_key:
                return None, f"join key {name!r} is missing"
            if name not in record:
                return None, f"feature {name!r} is missing (send null for no value)"
            out[name] = None
            continue
        ok = isinstance(value, _PY_TYPES[dtype]) and not (dtype != "bool" and isinstance(value, bool))
        if not ok:
            return None, f"{name!r} must be {dtype}, not {type(value).__name__}"
        if dtype == "timestamp":
            try:
                value = _timestamp(value)
            except ValueError as exc:
                return None, f"{name!r}: {exc}"
        elif dtype == "int64" and not -(2**63) <= value < 2**63:
            return None, f"{name!r} is out of the int64 range"
        out[name] = float(value) if dtype == "float64" and isinstance(value, int | float) else value
    subject = None
    if view.subject_column:
        raw = record.get(view.subject_column, out.get(view.subject_column))
        if raw is None:
            return None, f"the data subject column {view.subject_column!r} is missing"
        subject = str(raw)
    out["subject_id"] = subject
    return out, ""


def prepare_rows(
    vdef: FeatureViewDef, view: FeatureView, records: Sequence[Any]
) -> tuple[pa.Table, list[str], list[int]]:
    """The valid rows as a table, the reasons of the others ("row i: ...") and their indexes."""
    now = datetime.now(UTC)
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    bad: list[int] = []
    for i, record in enumerate(records):
        row, reason = check_row(vdef, view, record, now)
        if row is None:
            problems.append(f"row {i}: {reason}")
            bad.append(i)
        else:
            good.append(row)
    schema = view_schema(vdef)
    table = pa.Table.from_pylist(good, schema=schema) if good else schema.empty_table()
    return conform(vdef, table), problems, bad
