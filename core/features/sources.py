"""Reading a feature view's source dataset (and entity datasets) as Arrow tables, through DuckDB.

Only local files under the tenant's data folder are read, and only when their bytes still match the digest
recorded at registration: a source that changed since is refused, so what was governed is what is read.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from falaj.core.datasets import file_digest, local_path
from falaj.core.errors import ValidationError


def source_path(uri: str | None, root: Path, expected_digest: str | None) -> Path:
    """The local file behind a dataset URI, checked against the registered digest."""
    path = local_path(uri, root) if uri else None
    if path is None:
        raise ValidationError(f"the dataset's file {uri!r} is not a local file Falaj can read (file:// under {root})")
    if any(c in str(path) for c in "*?[{"):
        # DuckDB would read such a name as a pattern over other files (unchecked, unerased): never.
        raise ValidationError(f"dataset file names may not contain * ? [ or {{: {path.name}")
    if not path.is_file():
        raise ValidationError(f"the dataset's file {path.name} is gone: register the dataset again")
    if expected_digest is not None and file_digest(path) != expected_digest:
        raise ValidationError(
            f"the dataset's file {path.name} changed since it was registered ({expected_digest}): "
            "register the new content as a new dataset version"
        )
    return path


def _relation(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyRelation:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return con.read_parquet(str(path))
    if suffix in (".csv", ".tsv", ".txt"):
        return con.read_csv(str(path), header=True)
    raise ValidationError(f"cannot read {path.name}: sources are CSV or Parquet files")


def read_table(path: Path) -> pa.Table:
    """The whole file as an Arrow table (Parquet as written; CSV with types as DuckDB infers them)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValidationError(f"cannot read {path.name}: {exc}") from exc
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        return _relation(con, path).to_arrow_table()
    except duckdb.Error as exc:
        raise ValidationError(f"cannot read {path.name}: {exc}") from exc
    finally:
        con.close()


def read_schema(path: Path) -> pa.Schema:
    """The file's columns and types without reading its rows."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        return _relation(con, path).limit(0).to_arrow_table().schema
    except duckdb.Error as exc:
        raise ValidationError(f"cannot read {path.name}: {exc}") from exc
    finally:
        con.close()
