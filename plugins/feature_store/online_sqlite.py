"""The embedded online store ``sqlite-online``: the latest feature values per entity key in one SQLite file.

Layout: ``config.home / "online.db"``, one table per view version (``"fv:<tenant>:<table_id>"``) with a typed
column per join key and feature (``INTEGER``/``REAL``/``TEXT``; booleans as 0/1, timestamps as microseconds
since the epoch, UTC) beside ``event_ts``, ``created_ts``, ``event_id`` and ``subject_id``. The join keys are
the primary key of a ``WITHOUT ROWID`` table, so a read is one index probe per key; a partial index on
``subject_id`` serves erasure. The registry table ``falaj_online_views`` records each view's definition.

Writes are one transaction (WAL, ``synchronous=FULL``: durable when ``write`` returns) of one prepared
upsert whose ``DO UPDATE ... WHERE`` keeps the stored row unless the new one has a greater
(``event_ts``, ``created_ts``), so writes are idempotent and order-independent. Reads use a connection per
thread and cached prepared statements: one query per call.

The part shared with ``falaj.plugins.redis_online`` (identifier checks, key coercion, batch preparation,
value decoding) lives here too, under "shared".

Floating-point NaN is stored as a missing value: it reads back as ``None`` (in every online store).
"""

from __future__ import annotations

import json
import operator
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from falaj.core.features.arrow import conform
from falaj.core.plugin import (
    FEATURE_DTYPES,
    RESERVED_COLUMNS,
    BackendConfig,
    FeatureViewDef,
    OnlineFeatureStore,
    OnlineRow,
)

__all__ = [
    "UNKNOWN",
    "PreparedBatch",
    "SQLiteOnlineStore",
    "check_storage_name",
    "check_view",
    "key_coercer",
    "prepare_batch",
    "row_decoder",
    "select_features",
]

# ---------------------------------------------------------------------------------------------------------------
# shared: identifiers, key coercion, batch preparation, value decoding (used by falaj.plugins.redis_online too)
# ---------------------------------------------------------------------------------------------------------------

#: Join key and feature names: SQL-safe identifiers (compared case-insensitively, as SQLite does).
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Tenants and table ids as they appear in table names and Redis keys (never ``"`` or ``:``).
STORAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,159}$")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
#: Below every real timestamp (in microseconds): a null ``created_ts`` ranks under any non-null one.
NULL_RANK = -(2**63)
#: The answer for a key the store does not hold.
UNKNOWN = OnlineRow(values=None)


def check_storage_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not STORAGE_NAME.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_', '@', '-' (start with a letter or digit, "
            "at most 160 characters)"
        )
    return value


def check_view(view: FeatureViewDef, tenant: str) -> None:
    """Refuse a view this store cannot hold safely: another tenant's, bad names, unknown dtypes, no keys."""
    if view.tenant != tenant:
        raise ValueError(
            f"feature view {view.name!r} belongs to tenant {view.tenant!r}, but this store is bound to tenant "
            f"{tenant!r}: use the tenant's own backend"
        )
    check_storage_name("feature view table id", view.table_id)
    if not view.join_keys:
        raise ValueError(f"feature view {view.name!r} has no join keys: a feature store needs at least one")
    seen: set[str] = set()
    for column, dtype in (*view.join_keys, *view.features):
        if not isinstance(column, str) or not IDENTIFIER.match(column):
            raise ValueError(
                f"feature view {view.name!r}: invalid column name {column!r}: use letters, digits and '_', "
                "starting with a letter or '_' (at most 63 characters)"
            )
        if column.lower() in RESERVED_COLUMNS:
            raise ValueError(f"feature view {view.name!r}: column name {column!r} is reserved")
        if column.lower() in seen:
            raise ValueError(
                f"feature view {view.name!r}: column {column!r} appears twice (names are case-insensitive)"
            )
        seen.add(column.lower())
        if dtype not in FEATURE_DTYPES:
            raise ValueError(
                f"feature view {view.name!r}: column {column!r} has unknown dtype {dtype!r}: use one of "
                f"{', '.join(FEATURE_DTYPES)}"
            )


def to_micros(value: datetime) -> int:
    """A datetime as microseconds since the epoch (naive datetimes are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(microseconds=1)


def _key_int(value: Any) -> Any:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError("a bool is not an int64")
    return operator.index(value)


def _key_str(value: Any) -> Any:
    if type(value) is str:
        return value
    raise TypeError("not a string")


def _key_float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    result = float(value) + 0.0  # -0.0 and 0.0 are one key
    if result != result:
        raise TypeError("NaN is not a key")
    return result


def _key_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise TypeError("not a bool")


def _key_timestamp(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, str):
        return to_micros(datetime.fromisoformat(value))  # ValueError when it is not ISO 8601
    raise TypeError("not a datetime")


_KEY_COERCERS: dict[str, Callable[[Any], Any]] = {
    "int64": _key_int,
    "string": _key_str,
    "float64": _key_float,
    "bool": _key_bool,
    "timestamp": _key_timestamp,
}


def key_coercer(view: FeatureViewDef) -> Callable[[Sequence[Sequence[Any]]], list[tuple[Any, ...]]]:
    """A function turning request keys into the stored form (tuples; timestamps in microseconds).

    A key of the wrong length or with a value of the wrong type raises ``ValueError`` naming it.
    """
    names = view.key_names
    coercers = tuple(_KEY_COERCERS[dtype] for _, dtype in view.join_keys)
    width = len(coercers)
    dtypes = tuple(dtype for _, dtype in view.join_keys)

    def explain(position: int, key: Any) -> ValueError:
        if not isinstance(key, tuple | list) or len(key) != width:
            return ValueError(f"key {position} ({key!r}): expected a tuple of {width} value(s) for {', '.join(names)}")
        for name, dtype, coerce, value in zip(names, dtypes, coercers, key, strict=True):
            try:
                coerce(value)
            except (TypeError, ValueError):
                return ValueError(f"key {position}: {name} must be a {dtype}, got {value!r}")
        return ValueError(f"key {position} ({key!r}) is invalid")

    if width == 1:
        (only,) = coercers

        def coerce_one(keys: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            append = out.append
            try:
                for key in keys:
                    if type(key) is not tuple and type(key) is not list:
                        raise TypeError
                    (value,) = key
                    append((only(value),))
            except (TypeError, ValueError):
                raise explain(len(out), keys[len(out)]) from None
            return out

        return coerce_one

    def coerce_many(keys: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        append = out.append
        try:
            for key in keys:
                if (type(key) is not tuple and type(key) is not list) or len(key) != width:
                    raise TypeError
                append(tuple([coerce(value) for coerce, value in zip(coercers, key, strict=True)]))
        except (TypeError, ValueError):
            raise explain(len(out), keys[len(out)]) from None
        return out

    return coerce_many


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A write batch ready for a store: one row per key (the greatest (event_ts, created_ts) of the batch).

    ``rows`` hold the view's columns in schema order (join keys, features, ``event_ts``, ``created_ts``,
    ``event_id``, ``subject_id``); timestamps are microseconds since the epoch, NaN is None.
    """

    keys: list[tuple[Any, ...]]
    rows: list[tuple[Any, ...]]


def prepare_batch(view: FeatureViewDef, table: Any) -> PreparedBatch:
    """Conform ``table`` to the view, check it, and keep the greatest row per key."""
    if not isinstance(table, pa.Table):
        raise ValueError(f"expected a pyarrow.Table, got {type(table).__name__}")
    table = conform(view, table)
    nkeys = len(view.join_keys)
    columns: list[list[Any]] = []
    for index, field in enumerate(table.schema):
        column = table.column(index)
        if index < nkeys and column.null_count:
            raise ValueError(f"join key {field.name!r} is null in {column.null_count} row(s): every row needs a key")
        if field.name == "event_ts" and column.null_count:
            raise ValueError(f"event_ts is null in {column.null_count} row(s): every row needs an event time")
        if pa.types.is_timestamp(field.type):
            column = column.cast(pa.int64())
            if len(column) - column.null_count:
                bounds = pc.min_max(column).as_py()
                if bounds["min"] < _MIN_US or bounds["max"] > _MAX_US:
                    raise ValueError(f"column {field.name!r} holds a timestamp outside years 1 to 9999")
        elif pa.types.is_floating(field.type) and index >= nkeys:
            nan = pc.is_nan(column)
            if pc.any(nan).as_py():
                column = pc.if_else(nan, pa.scalar(None, field.type), column)
        elif pa.types.is_floating(field.type):
            if pc.any(pc.is_nan(column)).as_py():
                raise ValueError(f"join key {field.name!r} holds NaN, which is not a key")
            column = pc.add(column, 0.0)  # -0.0 and 0.0 are one key
        columns.append(column.to_pylist())
    keys = [(value,) for value in columns[0]] if nkeys == 1 else list(zip(*columns[:nkeys], strict=True))
    rows = list(zip(*columns, strict=True))
    if len(set(keys)) < len(keys):
        ets = nkeys + len(view.features)
        best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for key, row in zip(keys, rows, strict=True):
            held = best.get(key)
            if held is None or _rank(row, ets) > _rank(held, ets):
                best[key] = row
        keys = list(best)
        rows = list(best.values())
    return PreparedBatch(keys=keys, rows=rows)


def _rank(row: tuple[Any, ...], ets: int) -> tuple[int, int]:
    created = row[ets + 1]
    return row[ets], NULL_RANK if created is None else created


def select_features(view: FeatureViewDef, features: Sequence[str] | None) -> tuple[str, ...]:
    """The requested features in request order; an unknown name raises ``ValueError``."""
    if features is None:
        return view.feature_names
    if isinstance(features, str):
        raise ValueError("features must be a list of feature names, not one string")
    names = tuple(features)
    known = set(view.feature_names)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"feature view {view.name!r} has no feature(s) {', '.join(map(repr, unknown))}: it has "
            f"{', '.join(view.feature_names) or 'none'}"
        )
    return names


def row_decoder(view: FeatureViewDef, names: Sequence[str], *, first: int = 0) -> Callable[[Sequence[Any]], OnlineRow]:
    """Build ``decode(stored) -> OnlineRow`` for stored sequences laid out as
    ``(event_ts, created_ts, subject_id, *values)`` from index ``first`` on, ``values`` being the features
    ``names`` (timestamps in microseconds, booleans as 0/1 or bools)."""
    dtypes = dict(view.features)
    fixes: list[tuple[str, Callable[[Any], Any]]] = []
    for name in names:
        if dtypes[name] == "bool":
            fixes.append((name, bool))
        elif dtypes[name] == "timestamp":
            fixes.append((name, _to_datetime))
    name_tuple = tuple(names)
    ets, cts, subject, values_at = first, first + 1, first + 2, first + 3
    make = OnlineRow
    epoch = EPOCH
    micro = timedelta(microseconds=1)

    def decode(stored: Sequence[Any]) -> OnlineRow:
        values = dict(zip(name_tuple, stored[values_at:], strict=False))
        for name, fix in fixes:
            value = values[name]
            if value is not None:
                values[name] = fix(value)
        created = stored[cts]
        return make(
            values, epoch + stored[ets] * micro, None if created is None else epoch + created * micro, stored[subject]
        )

    return decode


def _to_datetime(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


# ---------------------------------------------------------------------------------------------------------------
# the SQLite store
# ---------------------------------------------------------------------------------------------------------------

_SQL_TYPES = {"int64": "INTEGER", "float64": "REAL", "string": "TEXT", "bool": "INTEGER", "timestamp": "INTEGER"}
_REGISTRY = "falaj_online_views"
#: Keys per read query and rows per erasure statement (well under SQLite's limit on bound parameters).
_CHUNK = 500


def _quote(identifier: str) -> str:
    # Every identifier was checked against IDENTIFIER or STORAGE_NAME first; quoting is the second guard.
    if '"' in identifier or "\x00" in identifier:
        raise ValueError(f"invalid identifier {identifier!r}")
    return f'"{identifier}"'


def _definition(view: FeatureViewDef) -> str:
    return json.dumps({"join_keys": view.join_keys, "features": view.features}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Table:
    """What the store prepared once per view version: the quoted table name and its write statement."""

    name: str
    upsert: str


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    one: str  # the query for one key
    many: Callable[[int], str]  # the query for n keys (returns the key columns first)
    decode: Callable[[Sequence[Any]], OnlineRow]
    decode_many: Callable[[Sequence[Any]], OnlineRow]
    coerce: Callable[[Sequence[Sequence[Any]]], list[tuple[Any, ...]]]
    nkeys: int


class SQLiteOnlineStore(OnlineFeatureStore):
    """The latest row per entity key of each view version, in ``config.home / "online.db"``.

    Bound to ``config.tenant``: views and subjects of another tenant are refused. Safe to share between
    threads (each thread gets its own connection).
    """

    def __init__(self, config: BackendConfig) -> None:
        self.tenant = check_storage_name("tenant", config.tenant)
        settings = dict(config.settings or {})
        unknown = sorted(set(settings) - {"busy_timeout_s"})
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} for sqlite-online: it takes busy_timeout_s")
        timeout = settings.get("busy_timeout_s", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ValueError("setting 'busy_timeout_s' must be a number of seconds between 0 and 3600")
        self._timeout = float(timeout)
        home = Path(config.home)
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / "online.db"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._tables: dict[FeatureViewDef, _Table] = {}
        self._plans: dict[tuple[FeatureViewDef, tuple[str, ...] | None], _ReadPlan] = {}
        conn = self._conn()
        with self._lock:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_REGISTRY} (tenant TEXT NOT NULL, table_id TEXT NOT NULL, "
                "definition TEXT NOT NULL, PRIMARY KEY (tenant, table_id)) WITHOUT ROWID"
            )

    # -- connections ------------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False, cached_statements=512
            )
            conn.execute("PRAGMA synchronous=FULL")  # with WAL: a commit is on disk when it returns
            self._local.conn = conn
            with self._lock:
                # a finished thread's connection is closed here, when another thread connects
                ended = [c for thread, c in self._connections if not thread.is_alive()]
                self._connections = [(t, c) for t, c in self._connections if t.is_alive()]
                self._connections.append((threading.current_thread(), conn))
            for old in ended:
                old.close()
        return conn

    def close(self) -> None:
        """Close every thread's connection (the store can be used again afterwards: it reconnects)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for _, conn in connections:
            conn.close()
        self._local = threading.local()

    # -- definitions -------------------------------------------------------------------------------------------
    def apply(self, view: FeatureViewDef) -> None:
        self._table(view)

    def _table(self, view: FeatureViewDef) -> _Table:
        table = self._tables.get(view)
        if table is not None:
            return table
        check_view(view, self.tenant)
        name = _quote(f"fv:{self.tenant}:{view.table_id}")
        index = _quote(f"fv:{self.tenant}:{view.table_id}:subject")
        keys = [_quote(k) for k in view.key_names]
        columns = [f"{_quote(c)} {_SQL_TYPES[t]} NOT NULL" for c, t in view.join_keys]
        columns += [f"{_quote(c)} {_SQL_TYPES[t]}" for c, t in view.features]
        columns += ["event_ts INTEGER NOT NULL", "created_ts INTEGER", "event_id TEXT", "subject_id TEXT"]
        definition = _definition(view)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            held = conn.execute(
                f"SELECT definition FROM {_REGISTRY} WHERE tenant = ? AND table_id = ?",  # noqa: S608 (a constant)
                (self.tenant, view.table_id),
            ).fetchone()
            if held is not None and held[0] != definition:
                raise ValueError(
                    f"feature view {view.table_id!r} is already stored with other columns ({held[0]}): a changed "
                    "definition needs a new version"
                )
            if held is None:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)}, PRIMARY KEY ({', '.join(keys)})) "
                    "WITHOUT ROWID"
                )
                conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {name} (subject_id) WHERE subject_id IS NOT NULL")
                conn.execute(
                    f"INSERT INTO {_REGISTRY} (tenant, table_id, definition) VALUES (?, ?, ?)",  # noqa: S608 (quoted, checked identifiers)
                    (self.tenant, view.table_id, definition),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        all_columns = [*view.key_names, *view.feature_names, *RESERVED_COLUMNS]
        updated = [*view.feature_names, *RESERVED_COLUMNS]
        upsert = (
            f"INSERT INTO {name} ({', '.join(map(_quote, all_columns))}) VALUES ({', '.join('?' * len(all_columns))}) "  # noqa: S608 (quoted, checked identifiers)
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
            + ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in updated)
            + f" WHERE (excluded.event_ts, coalesce(excluded.created_ts, {NULL_RANK})) > "
            f"({name}.event_ts, coalesce({name}.created_ts, {NULL_RANK}))"
        )
        table = _Table(name=name, upsert=upsert)
        with self._lock:
            self._tables[view] = table
        return table

    # -- writes ------------------------------------------------------------------------------------------------
    def write(self, view: FeatureViewDef, table: Any) -> int:
        stored = self._table(view)
        batch = prepare_batch(view, table)
        if not batch.rows:
            return 0
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            changed = conn.executemany(stored.upsert, batch.rows).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return changed

    # -- reads -------------------------------------------------------------------------------------------------
    def read(
        self, view: FeatureViewDef, keys: Sequence[tuple[Any, ...]], features: Sequence[str] | None = None
    ) -> list[OnlineRow]:
        plan = self._plans.get((view, None if features is None else tuple(features)))
        if plan is None:
            plan = self._plan(view, features)
        coerced = plan.coerce(keys)
        conn = self._conn()
        if len(coerced) == 1:
            found = conn.execute(plan.one, coerced[0]).fetchone()
            return [UNKNOWN if found is None else plan.decode(found)]
        if not coerced:
            return []
        nkeys = plan.nkeys
        by_key: dict[tuple[Any, ...], Any] = {}
        unique = list(dict.fromkeys(coerced))
        if len(unique) > _CHUNK:
            conn.execute("BEGIN")  # one snapshot across the chunks
        try:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                params = [value for key in chunk for value in key] if nkeys > 1 else [key[0] for key in chunk]
                cursor = conn.execute(plan.many(len(chunk)), params)
                if nkeys == 1:
                    for found in cursor:
                        by_key[found[:1]] = found
                else:
                    for found in cursor:
                        by_key[found[:nkeys]] = found
        finally:
            if len(unique) > _CHUNK:
                conn.execute("COMMIT")
        decode = plan.decode_many
        out: list[OnlineRow] = []
        for key in coerced:
            found = by_key.get(key)
            out.append(UNKNOWN if found is None else decode(found))
        return out

    def _plan(self, view: FeatureViewDef, features: Sequence[str] | None) -> _ReadPlan:
        stored = self._table(view)
        names = select_features(view, features)
        nkeys = len(view.join_keys)
        keys = [_quote(k) for k in view.key_names]
        columns = ["event_ts", "created_ts", "subject_id", *map(_quote, names)]
        selected = ", ".join(columns)
        one = f"SELECT {selected} FROM {stored.name} WHERE " + " AND ".join(f"{k} = ?" for k in keys)  # noqa: S608 (quoted, checked identifiers)
        head = f"SELECT {', '.join(keys)}, {selected} FROM {stored.name} WHERE "  # noqa: S608 (quoted, checked identifiers)
        if nkeys == 1:

            def many(n: int) -> str:
                return f"{head}{keys[0]} IN ({', '.join('?' * n)})"

        else:
            # the requested keys as the outer loop, one primary key probe each (a row-value IN would scan)
            marks = f"({', '.join('?' * nkeys)})"
            wanted = ", ".join(f"k{i}" for i in range(nkeys))
            match = " AND ".join(f"t.{k} = w.k{i}" for i, k in enumerate(keys))
            probe = f"SELECT {', '.join(f't.{k}' for k in keys)}, {', '.join(f't.{c}' for c in columns)} "
            probe += f"FROM w CROSS JOIN {stored.name} AS t ON {match}"

            def many(n: int) -> str:
                return f"WITH w({wanted}) AS (VALUES {', '.join([marks] * n)}) {probe}"

        plan = _ReadPlan(
            one=one,
            many=many,
            decode=row_decoder(view, names),
            decode_many=row_decoder(view, names, first=nkeys),
            coerce=key_coercer(view),
            nkeys=nkeys,
        )
        with self._lock:
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[(view, None if features is None else tuple(features))] = plan
        return plan

    # -- erasure -----------------------------------------------------------------------------------------------
    def _tenant_tables(self, tenant: str) -> list[str]:
        if tenant != self.tenant:
            raise ValueError(f"this store is bound to tenant {self.tenant!r}, not {tenant!r}")
        rows = self._conn().execute(f"SELECT table_id FROM {_REGISTRY} WHERE tenant = ?", (tenant,)).fetchall()  # noqa: S608 (quoted, checked identifiers)
        return [_quote(f"fv:{tenant}:{check_storage_name('table id', table_id)}") for (table_id,) in rows]

    def delete_subjects(self, tenant: str, subject_ids: Iterable[str]) -> int:
        ids = _subject_list(subject_ids)
        tables = self._tenant_tables(tenant)
        if not ids or not tables:
            return 0
        conn = self._conn()
        deleted = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name in tables:
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    sql = f"DELETE FROM {name} WHERE subject_id IN ({', '.join('?' * len(chunk))})"  # noqa: S608 (quoted, checked identifiers)
                    deleted += conn.execute(sql, chunk).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def count_subject(self, tenant: str, subject_id: str) -> int:
        (subject,) = _subject_list([subject_id])
        conn = self._conn()
        return sum(
            conn.execute(f"SELECT count(*) FROM {name} WHERE subject_id = ?", (subject,)).fetchone()[0]  # noqa: S608 (quoted, checked identifiers)
            for name in self._tenant_tables(tenant)
        )


def _subject_list(subject_ids: Iterable[str]) -> list[str]:
    if isinstance(subject_ids, str):
        raise ValueError("subject_ids must be a list of subject ids, not one string")
    ids = list(dict.fromkeys(subject_ids))
    bad = [s for s in ids if not isinstance(s, str)]
    if bad:
        raise ValueError(f"subject ids must be strings, got {bad[0]!r}")
    return ids
