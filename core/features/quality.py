"""Data quality for feature views: expectations, source schema checks, statistics profiles and drift.

Expectations are declared with a view (the control plane keeps them as JSON in the view's definition) and run
on every batch before it is written. ``check_schema`` refuses a source whose columns no longer match the view.
``profile`` summarises a batch per feature; two profiles give ``drift`` (population stability index).

Imports ``pyarrow`` and ``numpy`` (the ``features`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from falaj.core.features.arrow import TIMESTAMP, arrow_type, conform, to_utc
from falaj.core.plugin.interfaces import RESERVED_COLUMNS, FeatureViewDef

__all__ = [
    "AllowedValuesExpectation",
    "Expectation",
    "ExpectationList",
    "Failure",
    "FreshnessExpectation",
    "NotNullExpectation",
    "RangeExpectation",
    "SchemaExpectation",
    "UniqueExpectation",
    "check_schema",
    "drift",
    "dump_expectations",
    "profile",
    "psi_severity",
    "run_expectations",
    "validate_expectations",
]

#: The dtypes of the reserved columns every store keeps.
_RESERVED_DTYPES: dict[str, str] = {
    "event_ts": "timestamp",
    "created_ts": "timestamp",
    "event_id": "string",
    "subject_id": "string",
}
assert set(_RESERVED_DTYPES) == set(RESERVED_COLUMNS)

QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20
TOP_VALUES = 20
#: A bin with no rows is counted as this proportion in the PSI (the logarithm is undefined at zero).
PSI_FLOOR = 1e-4


# -- expectations ------------------------------------------------------------------------------------------


def _bound(value: Any) -> Any:
    """A range bound: a number, or an ISO 8601 timestamp (naive ones are UTC). Booleans and numeric strings
    are refused rather than read as numbers or as seconds since the epoch."""
    if isinstance(value, bool):
        raise ValueError("a bound is a number or an ISO 8601 timestamp, not a boolean")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 timestamp (a number bound is written without quotes)"
            ) from None
        return _utc(parsed)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a bound must be finite")
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, int | float):
        return value
    raise ValueError(f"a bound is a number or an ISO 8601 timestamp, not {type(value).__name__}")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Bound = Annotated[int | float | datetime, BeforeValidator(_bound)]


class _Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def read_columns(self) -> tuple[str, ...]:
        """The view columns this expectation reads."""
        return ()


class SchemaExpectation(_Expectation):
    """The batch has the view's columns with types that read as the declared ones; ``exact`` also refuses
    columns the view does not declare."""

    type: Literal["schema"]
    mode: Literal["at_least", "exact"] = "at_least"


class NotNullExpectation(_Expectation):
    """At most ``max_null_rate`` of the rows are null (NaN counts as null in float columns)."""

    type: Literal["not_null"]
    column: str
    max_null_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    def read_columns(self) -> tuple[str, ...]:
        return (self.column,)


class RangeExpectation(_Expectation):
    """Every non-null value lies within ``[min, max]`` (either may be left open): numbers for numeric columns,
    ISO 8601 timestamps for timestamp columns."""

    type: Literal["range"]
    column: str
    min: Bound | None = None
    max: Bound | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeExpectation:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None:
            if isinstance(self.min, datetime) != isinstance(self.max, datetime):
                raise ValueError("min and max must both be numbers or both be timestamps")
            low = _utc(self.min) if isinstance(self.min, datetime) else self.min
            high = _utc(self.max) if isinstance(self.max, datetime) else self.max
            if low > high:  # type: ignore[operator]
                raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def read_columns(self) -> tuple[str, ...]:
        return (self.column,)


class AllowedValuesExpectation(_Expectation):
    """Every non-null value is one of ``values``."""

    type: Literal["allowed_values"]
    column: str
    values: list[StrictBool | StrictInt | StrictStr] = Field(min_length=1, max_length=10_000)

    def read_columns(self) -> tuple[str, ...]:
        return (self.column,)


class FreshnessExpectation(_Expectation):
    """The newest ``event_ts`` is at most ``max_age_seconds`` old when the check runs."""

    type: Literal["freshness"]
    max_age_seconds: float = Field(gt=0, le=100 * 365 * 86400)

    def read_columns(self) -> tuple[str, ...]:
        return ("event_ts",)


class UniqueExpectation(_Expectation):
    """No two rows share the values of ``columns`` (nulls compare equal to each other)."""

    type: Literal["unique"]
    columns: list[str] = Field(min_length=1, max_length=16)

    def read_columns(self) -> tuple[str, ...]:
        return tuple(self.columns)


Expectation = Annotated[
    SchemaExpectation
    | NotNullExpectation
    | RangeExpectation
    | AllowedValuesExpectation
    | FreshnessExpectation
    | UniqueExpectation,
    Field(discriminator="type"),
]


class ExpectationList(RootModel[list[Expectation]]):
    """A view's expectations, as kept in its definition."""


_ONE = TypeAdapter(Expectation)
_KINDS = ("schema", "not_null", "range", "allowed_values", "freshness", "unique")


def _view_dtypes(view: FeatureViewDef) -> dict[str, str]:
    return {**dict(view.join_keys), **dict(view.features), **_RESERVED_DTYPES}


def _pydantic_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"][1:]] if len(err["loc"]) > 1 else []
        parts.append(f"{'.'.join(loc)}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def validate_expectations(view: FeatureViewDef, raw: Sequence[Mapping[str, Any]]) -> list[Expectation]:
    """Parse ``raw`` (the JSON of a view definition) and check each expectation against ``view``.

    Raises ``ValueError`` naming the first bad entry by its index: an unknown ``type``, a bad field, a column
    the view does not have, or a check that does not fit the column's dtype.
    """
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise ValueError("expectations must be a list of objects, each with a 'type'")
    dtypes = _view_dtypes(view)
    known = ", ".join(dtypes)
    out: list[Expectation] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ValueError(f"expectation {i}: must be an object with a 'type', got {type(entry).__name__}")
        kind = entry.get("type")
        if kind not in _KINDS:
            raise ValueError(f"expectation {i}: type {kind!r} is not one of {', '.join(_KINDS)}")
        try:
            exp: Expectation = _ONE.validate_python(dict(entry))
        except ValidationError as exc:
            raise ValueError(f"expectation {i} ({kind}): {_pydantic_reason(exc)}") from None
        for column in exp.read_columns():
            if column not in dtypes:
                raise ValueError(
                    f"expectation {i} ({kind}): unknown column {column!r}; view {view.name!r} has: {known}"
                )
        problem = _fits(exp, dtypes)
        if problem:
            raise ValueError(f"expectation {i} ({kind}): {problem}")
        out.append(exp)
    return out


def _fits(exp: Expectation, dtypes: Mapping[str, str]) -> str | None:
    """Why ``exp`` does not fit the dtypes of the columns it reads, or None."""
    if isinstance(exp, RangeExpectation):
        dtype = dtypes[exp.column]
        bound = exp.min if exp.min is not None else exp.max
        if dtype in ("int64", "float64"):
            if isinstance(bound, datetime):
                return f"column {exp.column!r} is {dtype}: its bounds are numbers, not timestamps"
            return None
        if dtype == "timestamp":
            if not isinstance(bound, datetime):
                return f"column {exp.column!r} is a timestamp: its bounds are ISO 8601 timestamps"
            return None
        return f"range needs a numeric or timestamp column; {exp.column!r} is {dtype}"
    if isinstance(exp, AllowedValuesExpectation):
        dtype = dtypes[exp.column]
        wanted: dict[str, tuple[type, ...]] = {"string": (str,), "int64": (int,), "bool": (bool,)}
        if dtype not in wanted:
            return f"allowed_values needs a string, int64 or bool column; {exp.column!r} is {dtype}"
        bad = [v for v in exp.values if not isinstance(v, wanted[dtype]) or (dtype == "int64" and isinstance(v, bool))]
        if bad:
            return f"column {exp.column!r} is {dtype}, but values include {bad[0]!r} ({type(bad[0]).__name__})"
        return None
    if isinstance(exp, UniqueExpectation) and len(set(exp.columns)) != len(exp.columns):
        return "columns are named more than once"
    return None


def dump_expectations(expectations: Iterable[Expectation]) -> list[dict[str, Any]]:
    """The JSON form of ``expectations`` (what ``validate_expectations`` reads back)."""
    return [_ONE.dump_python(e, mode="json", by_alias=True, exclude_none=True) for e in expectations]


# -- source schema -----------------------------------------------------------------------------------------


def _value_type(ty: pa.DataType) -> pa.DataType:
    return ty.value_type if pa.types.is_dictionary(ty) else ty


def _readable(source: pa.DataType, dtype: str) -> bool:
    """Whether a source column of type ``source`` reads as ``dtype`` without losing anything by design."""
    ty = _value_type(source)
    if pa.types.is_null(ty):
        return True
    if dtype == "int64":
        return bool(pa.types.is_integer(ty))
    if dtype == "float64":
        return bool(pa.types.is_integer(ty) or pa.types.is_floating(ty) or pa.types.is_decimal(ty))
    if dtype == "string":
        return bool(pa.types.is_string(ty) or pa.types.is_large_string(ty) or pa.types.is_string_view(ty))
    if dtype == "bool":
        return bool(pa.types.is_boolean(ty))
    if dtype == "timestamp":  # what arrow.to_utc reads
        return bool(pa.types.is_timestamp(ty) or pa.types.is_string(ty) or pa.types.is_large_string(ty))
    return False


def check_schema(
    view: FeatureViewDef, source_schema: pa.Schema, column_map: Mapping[str, str] | None = None
) -> list[str]:
    """The differences between a source's columns and what ``view`` reads from it; empty when it fits.

    ``column_map`` maps a view column to the source column it is read from (``{"event_ts": "event_timestamp"}``);
    unmapped columns are read from the source column of the same name. Join keys, features and ``event_ts``
    must be present; the other reserved columns are optional but must have a readable type when present.
    Each message names the column and both types.
    """
    mapping = dict(column_map or {})
    unknown = sorted(set(mapping) - set(_view_dtypes(view)))
    problems = [f"column map names {name!r}, which view {view.name!r} does not have" for name in unknown]
    required = [*view.join_keys, *view.features, ("event_ts", "timestamp")]
    optional = [(c, _RESERVED_DTYPES[c]) for c in ("created_ts", "event_id", "subject_id")]
    names = set(source_schema.names)
    for column, dtype in [*required, *optional]:
        source = mapping.get(column, column)
        where = f"column {column!r}" if source == column else f"column {column!r} (source column {source!r})"
        if source not in names:
            if (column, dtype) in required:
                problems.append(f"{where} is missing from the source; the view declares it {dtype}")
            continue
        ty = source_schema.field(source).type
        if not _readable(ty, dtype):
            problems.append(f"{where}: the source has {ty}, which cannot be read as the declared {dtype}")
    return problems


# -- running expectations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """One expectation a batch did not meet: ``message`` reads "not_null amount: null rate 0.12 > 0.05"."""

    index: int  # position in the view's expectation list
    expectation: str  # its type
    column: str | None
    observed: str
    expected: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unreadable(Exception):
    pass


class _Batch:
    """The columns of one batch, read (once each) as the view's declared types."""

    def __init__(self, view: FeatureViewDef, table: pa.Table) -> None:
        self.table = table
        self.dtypes = _view_dtypes(view)
        #: Columns whose values may identify a data subject: never quoted in a failure (reasons are audited).
        self.identifying = {*view.key_names, "subject_id", "event_id"}
        self._cache: dict[str, pa.ChunkedArray] = {}

    def column(self, name: str) -> pa.ChunkedArray:
        if name in self._cache:
            return self._cache[name]
        if name not in self.table.column_names:
            raise _Unreadable("column missing from the batch")
        col = self.table.column(name)
        dtype = self.dtypes[name]
        try:
            col = to_utc(col) if dtype == "timestamp" else col.cast(arrow_type(dtype))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise _Unreadable(f"cannot read {col.type} as {dtype}: {exc}") from exc
        self._cache[name] = col
        return col


def _missing_count(col: pa.ChunkedArray) -> int:
    """Nulls, and NaN in float columns."""
    missing = int(col.null_count)
    if pa.types.is_floating(col.type):
        missing += int(pc.sum(pc.is_nan(col)).as_py() or 0)
    return missing


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _scalar(value: Any) -> pa.Scalar:
    if isinstance(value, datetime):
        return pa.scalar(_utc(value), type=TIMESTAMP)
    return pa.scalar(value)


def run_expectations(
    view: FeatureViewDef,
    table: pa.Table,
    expectations: Sequence[Expectation],
    now: datetime | None = None,
) -> list[Failure]:
    """The expectations ``table`` does not meet, in the order they are declared; empty when all pass.

    ``table`` has the view's column names (a source batch after renaming, or a conformed batch); columns are
    read as their declared types. ``now`` (default: the current time) is when freshness is judged.
    """
    now = _utc(now) if now is not None else datetime.now(UTC)
    batch = _Batch(view, table)
    failures: list[Failure] = []
    for i, exp in enumerate(expectations):
        column = ", ".join(exp.read_columns()) or None
        label = exp.type if column is None else f"{exp.type} {column}"
        try:
            misses = _check(exp, batch, now)
        except _Unreadable as exc:
            misses = [(str(exc), "", "a column readable as the declared type")]
        for observed, op, expected in misses:
            message = f"{label}: {observed} {op} {expected}" if op else f"{label}: {observed} (expected {expected})"
            failures.append(Failure(i, exp.type, column, observed, expected, message))
    return failures


def _check(exp: Expectation, batch: _Batch, now: datetime) -> list[tuple[str, str, str]]:
    """(observed, how it differs, expected) for each way ``exp`` is not met."""
    rows = batch.table.num_rows
    misses: list[tuple[str, str, str]] = []
    if isinstance(exp, SchemaExpectation):
        for problem in _schema_problems(batch):
            misses.append((problem, "", "the view's columns and types"))
        if exp.mode == "exact":
            extra = [c for c in batch.table.column_names if c not in batch.dtypes]
            if extra:
                misses.append((f"columns {', '.join(map(repr, extra))} are not in the view", "", "exactly its columns"))
    elif isinstance(exp, NotNullExpectation):
        col = batch.column(exp.column)
        missing = _missing_count(col)
        rate = missing / rows if rows else 0.0
        if rate > exp.max_null_rate:
            misses.append((f"null rate {rate:.4g} ({missing} of {rows} rows)", ">", f"{exp.max_null_rate:.4g}"))
    elif isinstance(exp, RangeExpectation):
        col = batch.column(exp.column)
        outside = pa.scalar(False)
        if exp.min is not None:
            outside = pc.or_kleene(outside, pc.less(col, _scalar(exp.min)))
        if exp.max is not None:
            outside = pc.or_kleene(outside, pc.greater(col, _scalar(exp.max)))
        count = int(pc.sum(outside).as_py() or 0) if rows else 0
        if count:
            lo_hi = pc.min_max(col).as_py()
            low = "-inf" if exp.min is None else _fmt(exp.min)
            high = "inf" if exp.max is None else _fmt(exp.max)
            seen = (
                ""
                if exp.column in batch.identifying
                else f" (observed min {_fmt(lo_hi['min'])}, max {_fmt(lo_hi['max'])})"
            )
            misses.append(
                (
                    f"{count} of {rows} rows{seen}",
                    "not within",
                    f"[{low}, {high}]",
                )
            )
    elif isinstance(exp, AllowedValuesExpectation):
        col = batch.column(exp.column)
        allowed = pa.array(exp.values, type=col.type)
        outside = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=allowed)))  # nulls are not_null's
        count = int(pc.sum(outside).as_py() or 0) if rows else 0
        if count and exp.column in batch.identifying:
            misses.append((f"{count} of {rows} rows have other values", "not in", f"{len(exp.values)} allowed values"))
        elif count:
            examples = pc.unique(col.filter(outside)).slice(0, 3).to_pylist()
            shown = ", ".join(_fmt(v) for v in examples)
            observed = f"{count} of {rows} rows have other values (e.g. {shown})"
            misses.append((observed, "not in", _fmt_values(exp.values)))
    elif isinstance(exp, FreshnessExpectation):
        col = batch.column("event_ts")
        newest = pc.max(col).as_py() if rows else None
        if newest is None:
            misses.append(("no rows", "", f"an event within {exp.max_age_seconds:g} s of {_fmt(now)}"))
            return misses
        age = (now - _utc(newest)).total_seconds()
        if age > exp.max_age_seconds:
            misses.append((f"newest event {_fmt(newest)} is {age:g} s old", ">", f"{exp.max_age_seconds:g} s"))
    elif isinstance(exp, UniqueExpectation):
        cols = [batch.column(c) for c in exp.columns]
        keyed = pa.table(cols, names=[f"c{j}" for j in range(len(cols))])
        distinct = keyed.group_by(keyed.column_names, use_threads=False).aggregate([]).num_rows
        if distinct != rows:
            misses.append((f"{rows - distinct} duplicate rows, {distinct} distinct of {rows}", "", "unique values"))
    return misses


def _fmt_values(values: Sequence[Any]) -> str:
    shown = ", ".join(_fmt(v) for v in values[:10])
    return "{" + shown + (f", … {len(values) - 10} more" if len(values) > 10 else "") + "}"


def _schema_problems(batch: _Batch) -> list[str]:
    problems = []
    names = set(batch.table.column_names)
    for column, dtype in batch.dtypes.items():
        optional = column in ("created_ts", "event_id", "subject_id")
        if column not in names:
            if not optional:
                problems.append(f"column {column!r} ({dtype}) is missing")
            continue
        ty = batch.table.schema.field(column).type
        if not _readable(ty, dtype):
            problems.append(f"column {column!r} has {ty}, which cannot be read as the declared {dtype}")
    return problems


# -- profiles and drift ------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    f = float(value)
    return f if math.isfinite(f) else None


def _bin_counts(values: np.ndarray[Any, Any], edges: Sequence[float]) -> list[int]:
    """Rows per bin; the outer bins are open (below the first edge counts in the first bin, above the last in
    the last), inner bins are ``[edge_i, edge_i+1)``."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    idx = np.searchsorted(inner, values.astype(np.float64, copy=False), side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) - 1)]


def _numeric_stats(col: pa.ChunkedArray, reference: Mapping[str, Any] | None) -> dict[str, Any]:
    present = pc.drop_null(col)
    infinite = 0
    if pa.types.is_floating(col.type):
        finite_mask = pc.is_finite(present)
        infinite = int(pc.sum(pc.is_inf(present)).as_py() or 0)
        present = present.filter(finite_mask)
    stats: dict[str, Any] = {"kind": "numeric", "infinite": infinite}
    n = len(present)
    if n == 0:
        stats.update(min=None, max=None, mean=None, std=None, quantiles=None, histogram=None)
        return stats
    mm = pc.min_max(present).as_py()
    stats["min"], stats["max"] = _number(mm["min"]), _number(mm["max"])
    stats["mean"] = _number(pc.mean(present).as_py())
    stats["std"] = _number(pc.stddev(present, ddof=0).as_py())  # population standard deviation
    qs = pc.quantile(present, q=list(QUANTILES), interpolation="linear").to_pylist()
    stats["quantiles"] = {f"p{round(q * 100):02d}": _number(v) for q, v in zip(QUANTILES, qs, strict=True)}
    values = present.to_numpy()
    ref_hist = (reference or {}).get("histogram")
    if ref_hist:
        edges = [float(e) for e in ref_hist["edges"]]
    else:
        low, high = float(mm["min"]), float(mm["max"])
        if low == high:
            low, high = low - 0.5, high + 0.5
        edges = [float(e) for e in np.linspace(low, high, HISTOGRAM_BINS + 1)]
    stats["histogram"] = {"edges": edges, "counts": _bin_counts(values, edges)}
    return stats


def _categorical_stats(col: pa.ChunkedArray, reference: Mapping[str, Any] | None) -> dict[str, Any]:
    counts = pc.value_counts(col)
    values, freqs = counts.field("values"), counts.field("counts")
    keep = pc.is_valid(values)
    values, freqs = values.filter(keep), freqs.filter(keep)
    ranked = pa.table({"value": values, "count": freqs}).sort_by([("count", "descending"), ("value", "ascending")])
    top = ranked.slice(0, TOP_VALUES).to_pylist()
    stats: dict[str, Any] = {"kind": "categorical", "distinct": len(values), "top": top}
    ref_top = (reference or {}).get("top")
    if ref_top is not None:
        wanted = [t["value"] for t in ref_top]
        found = ranked.filter(pc.is_in(ranked.column("value"), value_set=pa.array(wanted, type=col.type)))
        by_value = dict(zip(found.column("value").to_pylist(), found.column("count").to_pylist(), strict=True))
        stats["reference_counts"] = [{"value": v, "count": int(by_value.get(v, 0))} for v in wanted]
    return stats


def profile(view: FeatureViewDef, table: pa.Table, *, reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-able statistics of a batch of ``view``'s rows, per feature, for monitoring and as a drift reference.

    Per feature: ``count`` (non-null values), ``nulls`` (NaN included for floats), ``null_rate``; numeric
    features add min, max, mean, std (population), quantiles p01…p99 (linear interpolation), the count of
    infinite values (left out of the other statistics) and a histogram of 20 equal bins between min and max;
    strings and booleans add the distinct count and the top 20 values with their counts; timestamps add min and
    max. With ``reference`` (an earlier profile of the same view), numeric histograms use the reference's bin
    edges and categorical features count the reference's top values, so ``drift`` against it is exact.
    Raises ``ValueError`` naming a key, feature or ``event_ts`` column that is missing or does not read as its
    declared type.
    """
    table = conform(view, table)
    rows = table.num_rows
    ref_features = (reference or {}).get("features", {})
    features: dict[str, Any] = {}
    for name, dtype in view.features:
        col = table.column(name)
        nulls = _missing_count(col)
        stats: dict[str, Any] = {
            "dtype": dtype,
            "count": rows - nulls,
            "nulls": nulls,
            "null_rate": nulls / rows if rows else 0.0,
        }
        ref = ref_features.get(name) if isinstance(ref_features, Mapping) else None
        ref = ref if isinstance(ref, Mapping) and ref.get("dtype") == dtype else None
        if dtype in ("int64", "float64"):
            stats.update(_numeric_stats(col, ref))
        elif dtype in ("string", "bool"):
            stats.update(_categorical_stats(col, ref))
        else:
            mm = pc.min_max(col).as_py()
            stats.update(kind="timestamp", min=_iso(mm["min"]), max=_iso(mm["max"]))
        features[name] = stats
    keys = list(view.key_names)
    entities = table.select(keys).group_by(keys, use_threads=False).aggregate([]).num_rows if rows else 0
    ts = pc.min_max(table.column("event_ts")).as_py()
    return {
        "view": view.name,
        "version": view.version,
        "rows": rows,
        "entities": entities,
        "event_ts": {"min": _iso(ts["min"]), "max": _iso(ts["max"])},
        "features": features,
    }


def psi_severity(psi: float) -> str:
    """The conventional reading of a population stability index.

    The thresholds are the credit-scoring rule of thumb (N. Siddiqi, *Credit Risk Scorecards*, Wiley 2006;
    widely used for model monitoring): below 0.1 no significant shift, 0.1 to 0.25 a moderate shift worth
    a look, above 0.25 a significant shift.
    """
    if psi < 0.1:
        return "none"
    if psi <= 0.25:
        return "moderate"
    return "significant"


def _psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins of proportions, empty bins counted as ``PSI_FLOOR``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _rebin(edges: Sequence[float], counts: Sequence[int], target: Sequence[float]) -> tuple[list[float], bool]:
    """``counts`` over ``edges`` redistributed over ``target``'s bins (outer bins open), assuming values are
    spread evenly within each bin; exact (second value True) when the edges are the same."""
    if list(edges) == list(target):
        return [float(c) for c in counts], True
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=np.float64))])
    total = float(cum[-1])
    inner = np.interp(np.asarray(target[1:-1], dtype=np.float64), np.asarray(edges, dtype=np.float64), cum)
    at = np.concatenate([[0.0], inner, [total]])
    return [float(x) for x in np.diff(at)], False


def _drift_one(ref: Mapping[str, Any], cur: Mapping[str, Any]) -> dict[str, Any]:
    kind = ref.get("kind")
    if kind != cur.get("kind") or ref.get("dtype") != cur.get("dtype"):
        return {"kind": kind, "psi": None, "severity": "unknown", "reason": "the feature's dtype changed"}
    if kind == "timestamp":
        return {"kind": kind, "psi": None, "severity": "unknown", "reason": "no drift measure for timestamps"}
    if not ref.get("count") or not cur.get("count"):
        return {"kind": kind, "psi": None, "severity": "unknown", "reason": "no values to compare"}
    if kind == "numeric":
        ref_hist, cur_hist = ref.get("histogram"), cur.get("histogram")
        if not ref_hist or not cur_hist:
            return {"kind": kind, "psi": None, "severity": "unknown", "reason": "no finite values to compare"}
        expected = [float(c) for c in ref_hist["counts"]]
        actual, exact = _rebin(cur_hist["edges"], cur_hist["counts"], ref_hist["edges"])
    else:
        ref_top = [(t["value"], t["count"]) for t in ref["top"]]
        ref_total = float(ref["count"])
        expected = [float(c) for _, c in ref_top]
        expected.append(ref_total - sum(expected))
        wanted = [v for v, _ in ref_top]
        counted = cur.get("reference_counts")
        if counted is not None and [c["value"] for c in counted] == wanted:
            found = {c["value"]: c["count"] for c in counted}
            exact = True
        else:
            found = {t["value"]: t["count"] for t in cur["top"]}
            exact = cur.get("distinct", math.inf) <= len(cur["top"])  # the current top list is complete
        actual = [float(found.get(v, 0)) for v in wanted]
        actual.append(float(cur["count"]) - sum(actual))
    e_total, a_total = sum(expected), sum(actual)
    psi = _psi([x / e_total for x in expected], [x / a_total for x in actual])
    return {"kind": kind, "psi": psi, "severity": psi_severity(psi), "exact": exact, "bins": len(expected)}


def drift(reference: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per feature of ``reference``, the population stability index of ``current`` against it.

    Numeric features are binned on the reference's histogram edges (outer bins open); categorical ones on the
    reference's top values plus "other". Exact when ``current`` was profiled with ``reference=``, an estimate
    otherwise (``exact`` says which). Each entry has ``psi``, ``severity`` ("none", "moderate", "significant",
    or "unknown" with a ``reason``).
    """
    ref_features = reference.get("features", {})
    cur_features = current.get("features", {})
    out: dict[str, dict[str, Any]] = {}
    for name, ref in ref_features.items():
        cur = cur_features.get(name)
        if cur is None:
            out[name] = {"kind": ref.get("kind"), "psi": None, "severity": "unknown", "reason": "not in current"}
            continue
        out[name] = _drift_one(ref, cur)
    return out
