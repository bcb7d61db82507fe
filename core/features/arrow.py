"""Arrow schemas for feature views, and the one normalisation every store and handler applies.

Imports ``pyarrow`` (the ``features`` extra), so import this module only where feature data is handled.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from falaj.core.plugin.interfaces import FEATURE_DTYPES, FeatureViewDef

TIMESTAMP = pa.timestamp("us", tz="UTC")

_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
}
assert set(_TYPES) == set(FEATURE_DTYPES)


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type a declared feature dtype is kept as."""
    try:
        return _TYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(FEATURE_DTYPES)}") from None


def view_schema(view: FeatureViewDef) -> pa.Schema:
    """Columns of a view's rows in every store: join keys, features, then the reserved columns."""
    fields = [pa.field(k, arrow_type(t)) for k, t in view.join_keys]
    fields += [pa.field(f, arrow_type(t)) for f, t in view.features]
    fields += [
        pa.field("event_ts", TIMESTAMP, nullable=False),
        pa.field("created_ts", TIMESTAMP),
        pa.field("event_id", pa.string()),
        pa.field("subject_id", pa.string()),
    ]
    return pa.schema(fields)


def to_utc(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A timestamp column in microseconds, UTC; naive timestamps are taken to be UTC already."""
    ty = column.type
    if pa.types.is_timestamp(ty):
        if ty.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return column.cast(TIMESTAMP)
    if pa.types.is_string(ty) or pa.types.is_large_string(ty):
        # ISO 8601 text: with a zone offset, or naive (UTC); a column mixing both is parsed value by value.
        try:
            return column.cast(TIMESTAMP)
        except pa.ArrowInvalid:
            pass
        try:
            return to_utc(column.cast(pa.timestamp("us")))
        except pa.ArrowInvalid:
            pass
        values: list[datetime | None] = []
        for value in column.to_pylist():
            if value is None:
                values.append(None)
                continue
            try:
                ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise TypeError(f"{value!r} is not an ISO 8601 time") from exc
            values.append(ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC))
        return pa.array(values, TIMESTAMP)
    if pa.types.is_null(ty):
        return column.cast(TIMESTAMP)
    raise TypeError(f"cannot read {ty} as a timestamp")


def conform(view: FeatureViewDef, table: pa.Table) -> pa.Table:
    """``table`` with exactly the view's columns, in order, cast to their types (timestamps UTC).

    Missing reserved columns other than ``event_ts`` are filled with nulls; missing keys or features, or a
    value that does not cast, raise ``ValueError`` naming the column.
    """
    schema = view_schema(view)
    columns: list[Any] = []
    for field in schema:
        if field.name not in table.column_names:
            if field.name in ("created_ts", "event_id", "subject_id"):
                columns.append(pa.nulls(table.num_rows, field.type))
                continue
            raise ValueError(f"column {field.name!r} is missing")
        col = table.column(field.name)
        try:
            col = to_utc(col) if field.type == TIMESTAMP else col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise ValueError(f"column {field.name!r}: cannot read {col.type} as {field.type}: {exc}") from exc
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def empty(view: FeatureViewDef) -> pa.Table:
    return view_schema(view).empty_table()


def key_tuples(table: pa.Table, names: Iterable[str]) -> list[tuple[Any, ...]]:
    cols = [table.column(n).to_pylist() for n in names]
    return list(zip(*cols, strict=True))
