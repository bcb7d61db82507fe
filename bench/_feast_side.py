"""The Feast half of bench/feature_store.py. Runs INSIDE Feast's own virtualenv (``--feast-python``), as a
subprocess of the driver, so Feast's dependency pins never meet Falaj's venv. Standard library, Feast and
what Feast installs (pandas, pyarrow) only.

    /tmp/feast-venv/bin/python bench/_feast_side.py --work DIR --features F.parquet --entities E.parquet \
        --online-keys K.json --ttl-seconds S --start ISO --end ISO --result OUT.json

A feature repository is built programmatically (no feature_store.yaml): provider ``local``, Feast's DuckDB
offline store (``type: duckdb``, the ``feast[duckdb]`` extra) reading the Parquet file in place, the SQLite
online store in ``DIR``, a file registry, entity key serialization version 3. Then, in this order:

- ``materialize(start, end)`` over the whole range: seconds, and the entity keys in the SQLite table after;
- ``get_historical_features(entity_df, features).to_df()`` ``--hist-runs`` times: seconds per run; the first
  run's result is written to ``DIR/historical.parquet`` for the driver's equality check;
- ``get_online_features(features, entity_rows).to_dict()`` for each batch size in the keys file, after a
  warm-up: one latency per call (ms), every call returned so the driver computes the quantiles;
- every entity of the data (and the absent ones the driver lists) read online in batches, written to
  ``DIR/online.parquet`` for the driver's check of what materialization wrote;
- with ``--default-offline-runs N`` (N > 0), the same historical retrieval N times on Feast's default offline
  store (dask) in ``DIR/dask``, the first result written to ``DIR/historical_dask.parquet``.

The result (JSON) goes to ``--result``: Feast prints its own progress to stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

VIEW = "customer_stats"
PROJECT = "bench"


def build_store(
    work: Path, features_path: Path, feature_names: list[str], ttl_seconds: int, offline: str = "duckdb"
) -> tuple[Any, list[Any]]:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Float64, Int64

    work.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(work / "registry.db"),
        online_store={"type": "sqlite", "path": str(work / "online.db")},
        offline_store={"type": offline},
        entity_key_serialization_version=3,
        repo_path=str(work),
    )
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    source = FileSource(
        name="customer_stats_source",
        path=str(features_path),
        timestamp_field="event_ts",
        created_timestamp_column="created_ts",
    )
    view = FeatureView(
        name=VIEW,
        entities=[customer],
        ttl=timedelta(seconds=ttl_seconds),
        schema=[Field(name="customer_id", dtype=Int64)] + [Field(name=f, dtype=Float64) for f in feature_names],
        source=source,
        online=True,
    )
    return FeatureStore(config=config), [customer, view]


def online_keys_in_sqlite(db: Path) -> tuple[str, int]:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        name = next(t for t in tables if t.endswith(VIEW))
        (count,) = conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{name}"').fetchone()
    return name, int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--entities", type=Path, required=True)
    parser.add_argument("--online-keys", type=Path, required=True)
    parser.add_argument("--ttl-seconds", type=int, required=True)
    parser.add_argument("--start", required=True, help="materialization start (ISO, with offset)")
    parser.add_argument("--end", required=True, help="materialization end (ISO, with offset)")
    parser.add_argument("--hist-runs", type=int, default=3)
    parser.add_argument(
        "--default-offline-runs",
        type=int,
        default=1,
        help="historical retrievals on Feast's default offline store (dask) too, for correctness (0: none)",
    )
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    import pandas as pd
    import pyarrow.parquet as pq

    t = time.perf_counter()
    import feast

    import_s = time.perf_counter() - t
    keys = json.loads(args.online_keys.read_text())
    feature_names: list[str] = keys["features"]
    refs = [f"{VIEW}:{f}" for f in feature_names]
    out: dict[str, Any] = {
        "versions": {p: version(p) for p in ("feast", "duckdb", "ibis-framework", "pandas", "pyarrow")},
        "python": sys.version.split()[0],
        "import_s": round(import_s, 3),
    }

    store, objects = build_store(args.work, args.features, feature_names, args.ttl_seconds)
    t = time.perf_counter()
    store.apply(objects)
    out["apply_s"] = round(time.perf_counter() - t, 3)

    # -- materialization -------------------------------------------------------------------------------------
    start, end = datetime.fromisoformat(args.start), datetime.fromisoformat(args.end)
    t = time.perf_counter()
    store.materialize(start_date=start, end_date=end)
    out["materialize_s"] = time.perf_counter() - t
    out["online_table"], out["materialized_entities"] = online_keys_in_sqlite(args.work / "online.db")

    # -- historical retrieval ----------------------------------------------------------------------------------
    entity_df = pq.read_table(args.entities).to_pandas()
    runs: list[float] = []
    for i in range(args.hist_runs):
        frame = entity_df.copy()  # Feast converts the timestamp column of the frame it is given in place
        t = time.perf_counter()
        result = store.get_historical_features(entity_df=frame, features=refs).to_df()
        runs.append(time.perf_counter() - t)
        if i == 0:
            out["historical_rows"] = len(result)
            out["historical_columns"] = [str(c) for c in result.columns]
            out["historical_dtypes"] = {str(c): str(d) for c, d in result.dtypes.items()}
            result.to_parquet(args.work / "historical.parquet", index=False)
        del result
    out["historical_s"] = runs

    # -- online reads ----------------------------------------------------------------------------------------
    latencies: dict[str, list[float]] = {}
    for batch, calls in keys["calls"].items():
        rows = [[{"customer_id": k} for k in call] for call in calls]
        for call in rows[: max(20, len(rows) // 10)]:  # warm-up
            store.get_online_features(features=refs, entity_rows=call).to_dict()
        ms: list[float] = []
        for call in rows:
            t = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=call).to_dict()
            ms.append((time.perf_counter() - t) * 1000)
        latencies[batch] = ms
    out["online_ms"] = latencies

    # -- everything online, for the driver's check of materialization -----------------------------------------
    everyone: list[int] = keys["all_entities"]
    columns: dict[str, list[Any]] = {}
    for i in range(0, len(everyone), 500):
        chunk = [{"customer_id": k} for k in everyone[i : i + 500]]
        for name, values in store.get_online_features(features=refs, entity_rows=chunk).to_dict().items():
            columns.setdefault(name, []).extend(values)
    pd.DataFrame(columns).astype({f: "float64" for f in feature_names}).to_parquet(
        args.work / "online.parquet", index=False
    )

    # -- Feast's default offline store (dask, "file"), same query: for the correctness check ---------------------
    if args.default_offline_runs > 0:
        default_store, objects = build_store(
            args.work / "dask", args.features, feature_names, args.ttl_seconds, offline="dask"
        )
        default_store.apply(objects)
        runs = []
        for i in range(args.default_offline_runs):
            frame = entity_df.copy()
            t = time.perf_counter()
            result = default_store.get_historical_features(entity_df=frame, features=refs).to_df()
            runs.append(time.perf_counter() - t)
            if i == 0:
                out["dask_historical_rows"] = len(result)
                result.to_parquet(args.work / "historical_dask.parquet", index=False)
        out["dask_historical_s"] = runs
    out["feast_version"] = feast.__version__
    args.result.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
