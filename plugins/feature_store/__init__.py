"""The builtin feature stores: ``parquet-offline`` (Parquet files, point-in-time joins through DuckDB) and
``sqlite-online`` (the embedded online store). Redis is a separate plugin (``falaj.plugins.redis_online``).

DuckDB and pyarrow (the ``features`` extra) are imported when a store is built, not when Falaj starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falaj.core.plugin import BackendConfig, FeatureStoreSpec, hookimpl


def _offline(config: BackendConfig) -> Any:
    from falaj.plugins.feature_store.offline import ParquetOfflineStore

    return ParquetOfflineStore(config)


def _online(config: BackendConfig) -> Any:
    from falaj.plugins.feature_store.online_sqlite import SQLiteOnlineStore

    return SQLiteOnlineStore(config)


@hookimpl
def falaj_feature_stores() -> Iterable[FeatureStoreSpec]:
    yield FeatureStoreSpec(
        name="parquet-offline",
        factory=_offline,
        description="Offline store: Parquet files in the backend's folder, point-in-time joins through DuckDB",
        capabilities=frozenset({"offline"}),
    )
    yield FeatureStoreSpec(
        name="sqlite-online",
        factory=_online,
        description="Online store: one SQLite file in the backend's folder (the embedded default)",
        capabilities=frozenset({"online"}),
    )
