"""The builtin offline feature store ``parquet-offline``: Parquet files and a SQLite push log per view version,
point-in-time joins in DuckDB.

Layout, per view version, under ``config.home / <tenant> / <table_id> /``:

- ``state.db`` (SQLite, WAL, ``synchronous=FULL``, ``secure_delete``, incremental vacuum): ``meta`` (the
  view's columns, the current source digest and its row count), ``log`` (pushed rows not yet compacted: one
  entry per push, ``seq`` never reused, holding the rows it wrote as one Arrow IPC record batch, so a read
  decodes a few blobs instead of converting every value) and ``ids`` (a 16-byte SHA-256 prefix of every event
  id ever pushed: idempotency across the log and the compacted parts, checked and extended in the push's
  transaction; it holds no subject ids and survives erasure, so a redelivered erased row stays erased).
- ``source/<digest hex>.parquet``: the one current snapshot written by :meth:`write_source`.
- ``pushed/part-<first seq>-<last seq>.parquet``: logged pushes moved out by compaction, which runs when a
  push leaves ``compact_rows`` rows (or 2,000 pushes) in the log, and on :meth:`ParquetOfflineStore.compact`.

Every file is written to a hidden temporary name, fsynced, renamed into place and its folder fsynced.
Compaction writes the part file first and then deletes its log rows; a part file is proof that its seq range
was compacted, so after a crash in between the leftover log rows are deleted (and reads ignore log rows at or
below the highest compacted seq). Stray temporary files and superseded source snapshots are removed when a
view is first touched by a store object, and before every erasure.

Source rows keep their event ids; one missing gets ``source:<digest prefix>:<row>``, and a repeated one keeps
its first row. A pushed row whose event id is also a source row's is shadowed by the source row in reads (the
same event, written twice). Pushed event ids are checked against earlier pushes, not against the source.

Concurrency: one readers-writer lock per view folder, shared by every store object of the process: reads run
together, writes (push, compaction, source replacement, erasure, drop) alone. Not safe for several processes
writing one folder. Each read runs on its own cursor of one in-memory DuckDB database (``TimeZone`` UTC).

Erasure rewrites every Parquet file and log entry holding a subject (atomically, as above), then empties the
WAL, so no page of the database file or its WAL holds the erased rows. Data is not encrypted here: put the
backend's home on an encrypted volume where rows are personal (freed file-system blocks are not wiped).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from falaj.core.errors import BackendError
from falaj.core.features.arrow import arrow_type, conform, to_utc, view_schema
from falaj.core.plugin import BackendConfig, FeatureViewDef, OfflineFeatureStore, PushResult
from falaj.plugins.feature_store.online_sqlite import check_storage_name, check_view

__all__ = ["ParquetOfflineStore"]

#: Pushed rows kept in the SQLite log before they are compacted into a Parquet part (setting ``compact_rows``).
DEFAULT_COMPACT_ROWS = 100_000
#: Pushes kept in the log before compaction whatever their size (each is decoded on every read).
MAX_LOGGED_PUSHES = 2_000
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_PART = re.compile(r"part-(\d{20})-(\d{20})\.parquet")
_STATE = "state.db"
_ROWS_PER_LOG_ENTRY = 100_000
#: A TTL longer than every timestamp Python can hold (10,000 years) excludes nothing.
_TTL_UNBOUNDED_S = 10_000 * 366 * 86_400
_RESERVED = ("event_ts", "created_ts", "event_id", "subject_id")


# ---------------------------------------------------------------------------------------------------------------
# files and locks
# ---------------------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically and durably (temporary file, fsync, rename, fsync folder)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as fh:
            # Dictionary-encode only strings that repeat (keys, subjects, categories): trying it on floats and on
            # unique event ids costs more time than it saves space.
            dictionary = [f.name for f in table.schema if pa.types.is_string(f.type) and f.name != "event_id"]
            pq.write_table(table, fh, compression="zstd", compression_level=1, use_dictionary=dictionary)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    with pq.ParquetFile(path) as pf:
        return pf.read(columns=columns)


class _RWLock:
    """Many readers or one writer; a waiting writer holds back new readers. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_LOCKS: dict[str, _RWLock] = {}
_LOCKS_GUARD = threading.Lock()
#: One idle connection per state database, so that closing a working one never has to checkpoint and remove
#: the WAL (about half the cost of a small push); closed by ``drop``.
_KEEPERS: dict[str, sqlite3.Connection] = {}


def _lock_for(folder: Path) -> _RWLock:
    key = str(folder.resolve())
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = _RWLock()
        return lock


@dataclass(frozen=True, slots=True)
class _Folder:
    """One view version's storage."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / _STATE

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def pushed(self) -> Path:
        return self.root / "pushed"

    @property
    def lock(self) -> _RWLock:
        return _lock_for(self.root)

    def exists(self) -> bool:
        return self.schema() is not None

    def release(self) -> None:
        """Close the idle connection kept to the state database (before the folder is removed)."""
        with _LOCKS_GUARD:
            keeper = _KEEPERS.pop(str(self.db.resolve()), None)
        if keeper is not None:
            keeper.close()

    def parts(self) -> list[tuple[int, int, Path]]:
        """Compacted part files as (first seq, last seq, path), in seq order."""
        found = []
        if self.pushed.is_dir():
            for path in self.pushed.iterdir():
                m = _PART.fullmatch(path.name)
                if m:
                    found.append((int(m.group(1)), int(m.group(2)), path))
        return sorted(found)

    def watermark(self) -> int:
        """The highest compacted seq (0 when nothing was compacted): log rows at or below it are in a part."""
        parts = self.parts()
        return max(last for _, last, _ in parts) if parts else 0

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA journal_size_limit=67108864")
            key = str(self.db.resolve())
            with _LOCKS_GUARD:
                if key not in _KEEPERS:
                    keeper = sqlite3.connect(self.db, check_same_thread=False, isolation_level=None)
                    keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()  # now it holds the WAL open
                    _KEEPERS[key] = keeper
            yield conn
        finally:
            conn.close()

    def schema(self) -> str | None:
        """The stored view columns, or None where the folder was never (completely) created."""
        if not self.db.is_file():
            return None
        with self.connect() as conn:
            try:
                return self.meta(conn, "schema")
            except sqlite3.OperationalError:  # created but its tables never committed
                return None

    def meta(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def arrow_schema(self, conn: sqlite3.Connection) -> pa.Schema:
        text = self.meta(conn, "arrow_schema")
        assert text is not None, "created folders record their Arrow schema"
        return _decode_schema(text)

    def current_source(self, conn: sqlite3.Connection) -> Path | None:
        digest = self.meta(conn, "source_digest")
        if digest is None:
            return None
        path = self.source / f"{digest.removeprefix('sha256:')}.parquet"
        return path if path.is_file() else None

    def recover(self) -> None:
        """Finish what a crash interrupted (call with the write lock held): drop temporary files, superseded
        source snapshots and log rows already in a part file."""
        with self.connect() as conn:
            current = self.current_source(conn)
            for folder in (self.source, self.pushed):
                if not folder.is_dir():
                    continue
                changed = False
                for path in folder.iterdir():
                    stale = path.name.endswith(".tmp") or (folder == self.source and path != current)
                    if stale and path.is_file():
                        path.unlink()
                        changed = True
                if changed:
                    _fsync_dir(folder)
            conn.execute("DELETE FROM log WHERE seq <= ?", (self.watermark(),))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ---------------------------------------------------------------------------------------------------------------
# the push log: one SQLite row per push, the rows it wrote as an Arrow record batch
# ---------------------------------------------------------------------------------------------------------------
def _encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _encode_batch(table: pa.Table) -> bytes:
    (batch,) = table.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    return bytes(batch.serialize().to_pybytes())


def _decode_batch(blob: bytes, schema: pa.Schema) -> pa.RecordBatch:
    return pa.ipc.read_record_batch(pa.py_buffer(blob), schema)


def _load_log(conn: sqlite3.Connection, schema: pa.Schema, after: int) -> tuple[pa.Table, list[int]]:
    """Logged rows of pushes with ``seq > after``, in push order, and those pushes' seqs (ascending)."""
    found = conn.execute("SELECT seq, data FROM log WHERE seq > ? ORDER BY seq", (after,)).fetchall()
    batches = [_decode_batch(blob, schema) for _, blob in found]
    return pa.Table.from_batches(batches, schema=schema), [seq for seq, _ in found]


def _event_hash(event_id: str) -> bytes:
    return hashlib.sha256(event_id.encode("utf-8")).digest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------------
def _as_table(obj: Any, what: str) -> pa.Table:
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if hasattr(obj, "__arrow_c_stream__"):
        return pa.table(obj)
    raise ValueError(f"{what} must be a pyarrow Table (or RecordBatch), not {type(obj).__name__}")


def _rows(view: FeatureViewDef, table: Any, what: str) -> pa.Table:
    """``table`` conformed to the view; refuses missing columns, values that do not cast and null keys/times."""
    table = _as_table(table, what)
    try:
        data = conform(view, table)
    except ValueError as exc:
        raise ValueError(f"{what} for feature view {view.name!r} v{view.version}: {exc}") from None
    for name in (*view.key_names, "event_ts"):
        nulls = data.column(name).null_count
        if nulls:
            raise ValueError(
                f"{what} for feature view {view.name!r} v{view.version}: column {name!r} is null in {nulls} "
                "row(s): every row needs its join keys and the time its values were true (event_ts)"
            )
    return data


def _subjects(values: Any, what: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{what} must be a collection of subject ids, not one string: wrap it in a list")
    out = list(values)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{what}: subject ids are strings, got {bad[0]!r}")
    return out


def _utc(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _schema_record(view: FeatureViewDef) -> str:
    return json.dumps({"join_keys": [list(k) for k in view.join_keys], "features": [list(f) for f in view.features]})


# ---------------------------------------------------------------------------------------------------------------
# DuckDB
# ---------------------------------------------------------------------------------------------------------------
_DUCKDB: list[duckdb.DuckDBPyConnection] = []


def _duckdb() -> duckdb.DuckDBPyConnection:
    """A new connection (a cursor) to the process's one in-memory DuckDB database: its registrations and
    temporary views are its own, it costs a millisecond where a new database costs tens."""
    with _LOCKS_GUARD:
        if not _DUCKDB:
            _DUCKDB.append(duckdb.connect(":memory:"))
        con = _DUCKDB[0].cursor()
    con.execute("SET TimeZone='UTC'")
    return con


def _internal_names(view: FeatureViewDef) -> list[str]:
    """Column names inside queries: ``k<i>`` per join key, ``f<i>`` per feature, then the reserved columns."""
    return [f"k{i}" for i in range(len(view.join_keys))] + [f"f{i}" for i in range(len(view.features))] + [*_RESERVED]


def _register_rows(con: duckdb.DuckDBPyConnection, folder: _Folder, view: FeatureViewDef, n: int) -> str:
    """Create the view ``rows<n>`` over every effective row of ``view`` (call with the read lock held).

    Source rows, then pushed rows (parts and the log past the watermark) whose event id no source row has.
    """
    schema = view_schema(view)
    internal = _internal_names(view)
    select = ", ".join(f'"{field.name}" AS {alias}' for field, alias in zip(schema, internal, strict=True))
    plain = ", ".join(internal)
    with folder.connect() as conn:
        source = folder.current_source(conn)
        parts = folder.parts()
        watermark = max((last for _, last, _ in parts), default=0)
        log, _ = _load_log(conn, schema, watermark)
    pieces = []
    con.register(f"log{n}", log)
    # every name below is internal or a checked identifier (IDENTIFIER in online_sqlite)
    pushed = [f"SELECT {select} FROM log{n}"]  # noqa: S608
    if parts:
        files = ", ".join(_sql_literal(str(p)) for _, _, p in parts)
        con.execute(f"CREATE TEMP VIEW parts{n} AS SELECT * FROM read_parquet([{files}])")  # noqa: S608
        pushed.append(f"SELECT {select} FROM parts{n}")  # noqa: S608
    pushed_sql = " UNION ALL ".join(pushed)
    if source is not None:
        # TEMP views: each cursor's own (relation.create_view would put them in the shared catalog, where two
        # concurrent reads of one view collide on the name).
        prefix = _sql_literal(f"source:{source.stem[:16]}:")
        con.execute(
            f"CREATE TEMP VIEW src{n} AS SELECT * REPLACE (coalesce(event_id, {prefix} || "  # noqa: S608
            f"CAST(file_row_number AS VARCHAR)) AS event_id) "
            f"FROM read_parquet({_sql_literal(str(source))}, file_row_number = true)"
        )
        pieces.append(f"SELECT {select} FROM src{n}")  # noqa: S608
        pieces.append(
            f"SELECT {plain} FROM ({pushed_sql}) p WHERE NOT EXISTS "  # noqa: S608
            f"(SELECT 1 FROM src{n} s WHERE s.event_id = p.event_id)"
        )
    else:
        pieces.append(pushed_sql)
    con.execute(f"CREATE TEMP VIEW rows{n} AS " + " UNION ALL ".join(pieces))
    return f"rows{n}"


def _sql_literal(text: str) -> str:
    """A SQL string literal (the store's own file paths only)."""
    return "'" + text.replace("'", "''") + "'"


def _allowed_clause(con: duckdb.DuckDBPyConnection, allowed: list[str] | None) -> str:
    if allowed is None:
        return "TRUE"
    con.register("allowed_subjects", pa.table({"s": pa.array(allowed, pa.string())}))
    return "(subject_id IS NULL OR subject_id IN (SELECT s FROM allowed_subjects))"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    result = con.sql(sql, params=params).to_arrow_table()
    assert result is not None
    return result


def _as_view_table(view: FeatureViewDef, result: pa.Table) -> pa.Table:
    schema = view_schema(view)
    arrays = [result.column(i).cast(field.type) for i, field in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------
class ParquetOfflineStore(OfflineFeatureStore):
    """``parquet-offline``: see the module's docstring. Bound to ``config.tenant``.

    Setting: ``compact_rows`` (default 100,000): pushed rows kept in the SQLite log before a push compacts
    them into a Parquet part file.
    """

    def __init__(self, config: BackendConfig) -> None:
        compact_rows = config.settings.get("compact_rows", DEFAULT_COMPACT_ROWS)
        if isinstance(compact_rows, bool) or not isinstance(compact_rows, int) or compact_rows < 1:
            raise ValueError(f"setting 'compact_rows' must be a positive integer, not {compact_rows!r}")
        self.tenant = check_storage_name("tenant", config.tenant)
        self.compact_rows = compact_rows
        self.root = Path(config.home) / self.tenant
        self._recovered: set[str] = set()
        self._recovered_guard = threading.Lock()

    # -- folders -------------------------------------------------------------------------------------------------
    def _folder(self, view: FeatureViewDef) -> _Folder:
        check_view(view, self.tenant)
        return _Folder(self.root / view.table_id)

    def _check_tenant(self, tenant: str) -> None:
        if tenant != self.tenant:
            raise ValueError(f"this store is bound to tenant {self.tenant!r}, not {tenant!r}")

    def _recover_once(self, folder: _Folder, *, locked: bool) -> None:
        key = str(folder.root)
        with self._recovered_guard:
            if key in self._recovered:
                return
        if locked:
            folder.recover()
        else:
            with folder.lock.write():
                if folder.exists():
                    folder.recover()
        with self._recovered_guard:
            self._recovered.add(key)

    def _check_schema(self, view: FeatureViewDef, stored: str | None) -> None:
        if stored is not None and stored != _schema_record(view):
            raise ValueError(
                f"feature view {view.name!r} v{view.version} is stored with other columns ({stored}): a view "
                "version's columns cannot change; register a new version"
            )

    def _create(self, folder: _Folder, view: FeatureViewDef) -> None:
        """Create the folder and its state database (call with the write lock held)."""
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.source.mkdir(exist_ok=True)
        folder.pushed.mkdir(exist_ok=True)
        if not folder.db.exists():  # before WAL mode and the first table, or it does not take
            with contextlib.closing(sqlite3.connect(folder.db)) as raw:
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        with folder.connect() as conn, _transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS log "
                "(seq INTEGER PRIMARY KEY AUTOINCREMENT, rows INTEGER NOT NULL, data BLOB NOT NULL)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS ids (h BLOB PRIMARY KEY) WITHOUT ROWID")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('arrow_schema', ?)", (_encode_schema(view_schema(view)),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (_schema_record(view),))
        _fsync_dir(folder.root)
        _fsync_dir(folder.root.parent)

    def _writable(self, view: FeatureViewDef) -> _Folder:
        """The view's folder, created if needed, checked and recovered (call with the write lock held)."""
        folder = self._folder(view)
        stored = folder.schema()
        if stored is None:
            self._create(folder, view)
        self._check_schema(view, stored)
        self._recover_once(folder, locked=True)
        return folder

    def _readable(self, view: FeatureViewDef) -> _Folder:
        folder = self._folder(view)
        stored = folder.schema()
        if stored is None:
            raise ValueError(f"feature view {view.name!r} v{view.version} has no storage in this store: apply it first")
        self._check_schema(view, stored)
        self._recover_once(folder, locked=False)
        return folder

    def _tenant_folders(self, tenant: str) -> list[_Folder]:
        self._check_tenant(tenant)
        if not self.root.is_dir():
            return []
        return [_Folder(p) for p in sorted(self.root.iterdir()) if _Folder(p).exists()]

    # -- FeatureStore --------------------------------------------------------------------------------------------
    def apply(self, view: FeatureViewDef) -> None:
        folder = self._folder(view)
        with folder.lock.write():
            self._writable(view)

    def drop(self, view: FeatureViewDef) -> None:
        """Remove one view version's storage (every source, pushed and logged row, and its event-id index)."""
        folder = self._folder(view)
        with folder.lock.write():
            if folder.root.exists():
                folder.release()
                shutil.rmtree(folder.root)
                _fsync_dir(folder.root.parent)
            with self._recovered_guard:
                self._recovered.discard(str(folder.root))

    def delete_subjects(self, tenant: str, subject_ids: Iterable[str]) -> int:
        subjects = _subjects(subject_ids, "subject_ids")
        if not subjects:
            self._check_tenant(tenant)
            return 0
        return sum(self._erase(folder, subjects) for folder in self._tenant_folders(tenant))

    def count_subject(self, tenant: str, subject_id: str) -> int:
        (subject,) = _subjects([subject_id], "subject_id")
        total = 0
        for folder in self._tenant_folders(tenant):
            self._recover_once(folder, locked=False)
            with folder.lock.read():
                if not folder.db.is_file():
                    continue
                with folder.connect() as conn:
                    files = [p for _, _, p in folder.parts()]
                    source = folder.current_source(conn)
                    if source is not None:
                        files.append(source)
                    logged, _ = _load_log(conn, folder.arrow_schema(conn), 0)
                total += int(pc.sum(pc.equal(logged.column("subject_id"), subject)).as_py() or 0)
                for path in files:
                    column = _read_parquet(path, ["subject_id"]).column("subject_id")
                    total += int(pc.sum(pc.equal(column, subject)).as_py() or 0)
        return total

    def _erase(self, folder: _Folder, subjects: list[str]) -> int:
        value_set = pa.array(subjects, pa.string())
        removed = 0
        with folder.lock.write():
            if not folder.exists():
                return 0
            folder.recover()
            with folder.connect() as conn:
                source = folder.current_source(conn)
                files = [p for _, _, p in folder.parts()] + ([source] if source is not None else [])
                for path in files:
                    table = _read_parquet(path)
                    hit = pc.fill_null(pc.is_in(table.column("subject_id"), value_set=value_set), False)
                    count = int(pc.sum(hit).as_py() or 0)
                    if not count:
                        continue
                    kept = table.filter(pc.invert(hit))
                    _write_parquet(kept, path)  # an emptied part stays: its name records the compacted range
                    removed += count
                    if path == source:
                        with _transaction(conn):
                            conn.execute("UPDATE meta SET value = ? WHERE key = 'source_rows'", (str(kept.num_rows),))
                schema = folder.arrow_schema(conn)
                with _transaction(conn):
                    for seq, blob in conn.execute("SELECT seq, data FROM log ORDER BY seq").fetchall():
                        batch = _decode_batch(blob, schema)
                        hit = pc.fill_null(pc.is_in(batch.column("subject_id"), value_set=value_set), False)
                        count = int(pc.sum(hit).as_py() or 0)
                        if not count:
                            continue
                        kept = pa.Table.from_batches([batch.filter(pc.invert(hit))])
                        if kept.num_rows:
                            conn.execute(
                                "UPDATE log SET rows = ?, data = ? WHERE seq = ?",
                                (kept.num_rows, _encode_batch(kept), seq),
                            )
                        else:
                            conn.execute("DELETE FROM log WHERE seq = ?", (seq,))
                        removed += count
                conn.executescript("PRAGMA incremental_vacuum;")
                # the WAL still holds the pages as they were before the delete: write them back and empty it
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    raise BackendError(
                        f"erasure in {folder.root.name}: rows deleted, but the write-ahead log still holds old pages "
                        "(another process has the database open): run the erasure again"
                    )
        return removed

    # -- writes --------------------------------------------------------------------------------------------------
    def write_source(self, view: FeatureViewDef, table: Any, *, source_digest: str) -> int:
        m = _DIGEST.fullmatch(source_digest) if isinstance(source_digest, str) else None
        if m is None:
            raise ValueError(f"source_digest must be 'sha256:' and 64 lowercase hex digits, not {source_digest!r}")
        hexdigest = m.group(1)
        folder = self._folder(view)
        with folder.lock.write():
            stored = folder.schema()
            if stored is not None:
                self._check_schema(view, stored)
                with folder.connect() as conn:
                    if folder.meta(conn, "source_digest") == source_digest and folder.current_source(conn):
                        return int(folder.meta(conn, "source_rows") or 0)
            data = self._source_rows(view, table, hexdigest)
            folder = self._writable(view)
            path = folder.source / f"{hexdigest}.parquet"
            _write_parquet(data, path)
            try:
                with folder.connect() as conn, _transaction(conn):
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('source_digest', ?)", (source_digest,))
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('source_rows', ?)", (str(data.num_rows),))
            except BaseException:
                path.unlink(missing_ok=True)  # not current: nothing may keep its rows
                raise
            for old in folder.source.iterdir():
                if old != path:
                    old.unlink()
            _fsync_dir(folder.source)
        return int(data.num_rows)

    @staticmethod
    def _source_rows(view: FeatureViewDef, table: Any, hexdigest: str) -> pa.Table:
        """Checked source rows, each with an event id (made up where missing), one row per event id."""
        data = _rows(view, table, "source rows")
        ids = data.column("event_id")
        if ids.null_count == data.num_rows:
            # No ids in the source: left null in the file, and made up from the row number when it is read
            # (`_register_rows`: unique by construction, and nothing to write or compress).
            return data
        if ids.null_count:
            prefix = f"source:{hexdigest[:16]}:"
            filled = [v if v is not None else f"{prefix}{i}" for i, v in enumerate(ids.to_pylist())]
            data = data.set_column(data.schema.get_field_index("event_id"), "event_id", pa.array(filled, pa.string()))
            ids = data.column("event_id")
        if data.num_rows and pc.count_distinct(ids).as_py() < data.num_rows:
            index = pa.table({"id": ids, "i": pa.array(range(data.num_rows), pa.int64())})
            first = index.group_by("id", use_threads=False).aggregate([("i", "min")]).column("i_min")
            data = data.take(first.take(pc.sort_indices(first)))
        return data

    def push(self, view: FeatureViewDef, table: Any) -> PushResult:
        data = _rows(view, table, "pushed rows")
        ids = data.column("event_id")
        if ids.null_count:
            raise ValueError(
                f"pushed rows for feature view {view.name!r} v{view.version}: {ids.null_count} row(s) have no "
                "event_id: every pushed row needs a unique event id (a redelivered row is recognised by it)"
            )
        if not data.num_rows:
            return PushResult(written=0, duplicates=0)
        staged: dict[bytes, int] = {}
        for n, event_id in enumerate(ids.to_pylist()):
            staged.setdefault(_event_hash(event_id), n)  # a repeat within the batch duplicates its first row
        folder = self._folder(view)
        with folder.lock.write():
            folder = self._writable(view)
            with folder.connect() as conn:
                conn.execute("CREATE TEMP TABLE staging (n INTEGER PRIMARY KEY, h BLOB NOT NULL)")
                with _transaction(conn):
                    conn.executemany("INSERT INTO temp.staging VALUES (?, ?)", ((n, h) for h, n in staged.items()))
                    fresh = [
                        n
                        for (n,) in conn.execute(
                            "SELECT n FROM temp.staging WHERE h NOT IN (SELECT h FROM ids) ORDER BY n"
                        )
                    ]
                    if fresh:
                        for at in range(0, len(fresh), _ROWS_PER_LOG_ENTRY):  # a SQLite value holds < 1 GB
                            chunk = fresh[at : at + _ROWS_PER_LOG_ENTRY]
                            rows = data.take(pa.array(chunk, pa.int64()))
                            conn.execute(
                                "INSERT INTO log (rows, data) VALUES (?, ?)", (len(chunk), _encode_batch(rows))
                            )
                        conn.execute("INSERT OR IGNORE INTO ids (h) SELECT h FROM temp.staging")
                pending, pushes = conn.execute("SELECT coalesce(sum(rows), 0), count(*) FROM log").fetchone()
            if pending >= self.compact_rows or pushes >= MAX_LOGGED_PUSHES:
                self._compact(folder)
        return PushResult(written=len(fresh), duplicates=data.num_rows - len(fresh))

    def compact(self, view: FeatureViewDef) -> int:
        """Move every logged pushed row into one Parquet part file; returns the number of rows moved."""
        folder = self._folder(view)
        with folder.lock.write():
            return self._compact(self._writable(view))

    def _compact(self, folder: _Folder) -> int:
        with folder.connect() as conn:
            watermark = folder.watermark()
            self._forget_compacted(conn, watermark)
            table, seqs = _load_log(conn, folder.arrow_schema(conn), watermark)
            if not seqs:
                return 0
            first, last = seqs[0], seqs[-1]
            if table.num_rows:
                _write_parquet(table, folder.pushed / f"part-{first:020d}-{last:020d}.parquet")
                # a crash here leaves the part and its log rows: recovery (or the next compaction) deletes them
            self._forget_compacted(conn, last)
            conn.executescript("PRAGMA incremental_vacuum;")  # the freed log pages back (executescript: all steps)
        return int(table.num_rows)

    @staticmethod
    def _forget_compacted(conn: sqlite3.Connection, last: int) -> None:
        """Delete the logged pushes a part file now holds (seq up to ``last``)."""
        conn.execute("DELETE FROM log WHERE seq <= ?", (last,))

    # -- reads ---------------------------------------------------------------------------------------------------
    def scan(self, view: FeatureViewDef) -> Any:
        folder = self._readable(view)
        con = _duckdb()
        try:
            with folder.lock.read():
                if not folder.db.is_file():  # dropped meanwhile
                    return view_schema(view).empty_table()
                rows = _register_rows(con, folder, view, 0)
                result = _fetch(con, f"SELECT * FROM {rows} ORDER BY event_ts, event_id")  # noqa: S608
        finally:
            con.close()
        return _as_view_table(view, result)

    def latest(
        self,
        view: FeatureViewDef,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        allowed_subjects: Collection[str] | None = None,
    ) -> Any:
        lo, hi = _utc(start, "start"), _utc(end, "end")
        allowed = None if allowed_subjects is None else _subjects(allowed_subjects, "allowed_subjects")
        folder = self._readable(view)
        keys = ", ".join(f"k{i}" for i in range(len(view.join_keys)))
        con = _duckdb()
        try:
            conditions = [_allowed_clause(con, allowed)]
            params: list[Any] = []
            if lo is not None:
                conditions.append("event_ts >= ?")
                params.append(lo)
            if hi is not None:
                conditions.append("event_ts < ?")
                params.append(hi)
            with folder.lock.read():
                if not folder.db.is_file():  # dropped meanwhile
                    return view_schema(view).empty_table()
                rows = _register_rows(con, folder, view, 0)
                # Per key the row with the greatest (event_ts, created_ts, event_id), nulls losing: an arg_max
                # aggregate, about twice as fast as a row_number() window over the same rows.
                sql = (
                    "SELECT * FROM (SELECT unnest(r) FROM (SELECT arg_max(t, (t.event_ts, "  # noqa: S608
                    "coalesce(t.created_ts, '-infinity'::TIMESTAMPTZ), coalesce(t.event_id, ''))) AS r "
                    f"FROM {rows} t WHERE {' AND '.join(conditions)} GROUP BY {keys})) "
                    f"ORDER BY {keys}"
                )
                result = _fetch(con, sql, params)
        finally:
            con.close()
        return _as_view_table(view, result)

    def historical(
        self,
        requests: Sequence[tuple[FeatureViewDef, Sequence[str]]],
        entity_rows: Any,
        *,
        timestamp_column: str = "event_timestamp",
        allowed_subjects: Collection[str] | None = None,
        full_feature_names: bool = False,
    ) -> Any:
        entities = _as_table(entity_rows, "entity_rows")
        allowed = None if allowed_subjects is None else _subjects(allowed_subjects, "allowed_subjects")
        if not requests:
            raise ValueError("historical needs at least one (feature view, feature names) request")
        if timestamp_column not in entities.column_names:
            raise ValueError(
                f"entity rows have no column {timestamp_column!r} (timestamp_column): they have "
                f"{', '.join(entities.column_names) or 'no columns'}"
            )
        try:
            ts = to_utc(entities.column(timestamp_column))
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"entity column {timestamp_column!r} must hold timestamps or ISO 8601 strings (naive ones are "
                f"UTC): {exc}"
            ) from None

        # what to fetch: per request, the features' positions; output names checked for clashes
        ent_columns: dict[str, Any] = {"__row": pa.array(range(entities.num_rows), pa.int64()), "__ts": ts}
        plans: list[tuple[FeatureViewDef, list[int], list[str]]] = []
        taken = {name: "the entity rows" for name in entities.column_names}
        for i, request in enumerate(requests):
            if not (isinstance(request, tuple | list) and len(request) == 2 and isinstance(request[0], FeatureViewDef)):
                raise ValueError(f"request {i} must be a (FeatureViewDef, [feature names]) pair, not {request!r}")
            view, names = request
            self._folder(view)  # checks the view
            if view.ttl_seconds is not None and (isinstance(view.ttl_seconds, bool) or view.ttl_seconds < 0):
                raise ValueError(f"feature view {view.name!r}: ttl_seconds must be a non-negative integer or None")
            if isinstance(names, str) or not names:
                raise ValueError(f"request {i} ({view.name!r}): give a non-empty list of feature names")
            positions = []
            out_names = []
            for name in names:
                if name not in view.feature_names:
                    raise ValueError(
                        f"feature view {view.name!r} v{view.version} has no feature {name!r}: it has "
                        f"{', '.join(view.feature_names)}"
                    )
                out = f"{view.name}__{name}" if full_feature_names else name
                if out in taken:
                    hint = "" if full_feature_names else " (full_feature_names=True prefixes the view's name)"
                    raise ValueError(f"output column {out!r} would appear twice: it is in {taken[out]}{hint}")
                taken[out] = f"feature view {view.name!r}"
                positions.append(view.feature_names.index(name))
                out_names.append(out)
            for j, (key, dtype) in enumerate(view.join_keys):
                if key not in entities.column_names:
                    raise ValueError(
                        f"entity rows have no column {key!r}, a join key of feature view {view.name!r}: they have "
                        f"{', '.join(entities.column_names)}"
                    )
                column = entities.column(key)
                try:
                    ent_columns[f"e{i}_{j}"] = (
                        to_utc(column) if dtype == "timestamp" else column.cast(arrow_type(dtype))
                    )
                except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ValueError(
                        f"entity column {key!r} cannot be read as {dtype} (feature view {view.name!r}): {exc}"
                    ) from None
            plans.append((view, positions, out_names))

        folders = {view.table_id: self._readable(view) for view, _, _ in plans}
        con = _duckdb()
        try:
            con.register("ent", pa.table(ent_columns))
            subject_filter = _allowed_clause(con, allowed)
            with contextlib.ExitStack() as stack:
                for table_id in sorted(folders):
                    stack.enter_context(folders[table_id].lock.read())
                registered: dict[str, str] = {}
                for table_id, folder in folders.items():
                    if not folder.db.is_file():
                        raise ValueError(f"feature view storage {table_id!r} was dropped while reading")
                    view = next(v for v, _, _ in plans if v.table_id == table_id)
                    registered[table_id] = _register_rows(con, folder, view, len(registered))
                ctes, selects, joins = [], [], []
                for i, (view, positions, _) in enumerate(plans):
                    ctes.append(self._pit_cte(i, view, positions, registered[view.table_id], subject_filter))
                    selects += [f"j{i}.v{i}_{p}" for p in range(len(positions))]
                    joins.append(f"LEFT JOIN j{i} ON j{i}.__row = ent.__row")
                sql = (
                    f"WITH {', '.join(ctes)} SELECT {', '.join(selects)} FROM ent {' '.join(joins)} "  # noqa: S608
                    "ORDER BY ent.__row"
                )
                result = _fetch(con, sql)
        finally:
            con.close()
        if result.num_rows != entities.num_rows:  # one ASOF match at most per entity row
            raise BackendError(f"point-in-time join returned {result.num_rows} rows for {entities.num_rows}")
        out = entities
        column = 0
        for view, positions, out_names in plans:
            for position, name in zip(positions, out_names, strict=True):
                type_ = arrow_type(view.features[position][1])
                out = out.append_column(pa.field(name, type_), result.column(column).cast(type_))
                column += 1
        return out

    @staticmethod
    def _pit_cte(i: int, view: FeatureViewDef, positions: list[int], rows: str, subject_filter: str) -> str:
        """Two CTEs for request ``i``: ``d<i>``, the view's rows with ties on (keys, event_ts) settled, and
        ``j<i>``, each entity row's ASOF match (``v<i>_<n>`` per requested feature, null past the TTL)."""
        keys = [f"k{j}" for j in range(len(view.join_keys))]
        features = [f"f{p}" for p in positions]
        partition = ", ".join([*keys, "event_ts"])
        dedupe = (
            f"d{i} AS (SELECT {', '.join([*keys, 'event_ts', *features])} FROM {rows} WHERE {subject_filter} "  # noqa: S608
            f"QUALIFY row_number() OVER (PARTITION BY {partition} "
            "ORDER BY created_ts DESC NULLS LAST, event_id DESC NULLS LAST) = 1)"
        )
        on = [f"ent.e{i}_{j} = d.{k}" for j, k in enumerate(keys)] + ["ent.__ts >= d.event_ts"]
        if view.ttl_seconds is not None and view.ttl_seconds < _TTL_UNBOUNDED_S:
            ttl = int(view.ttl_seconds)
            live = f"d.event_ts >= ent.__ts - to_microseconds({ttl * 1_000_000}::BIGINT)"
            values = [f"CASE WHEN {live} THEN d.{f} END AS v{i}_{n}" for n, f in enumerate(features)]
        else:
            values = [f"d.{f} AS v{i}_{n}" for n, f in enumerate(features)]
        join = (
            f"j{i} AS (SELECT ent.__row, {', '.join(values)} FROM ent "  # noqa: S608
            f"ASOF LEFT JOIN d{i} d ON {' AND '.join(on)})"
        )
        return f"{dedupe}, {join}"
