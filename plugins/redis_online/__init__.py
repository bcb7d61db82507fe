"""Feature store plugin ``redis-online``: the latest feature values per entity key in a Redis server.

Settings: ``url`` (``redis://`` or ``rediss://``, default ``redis://127.0.0.1:6379/0``), ``key_prefix``
(default ``falaj``) and ``socket_timeout_s`` (default 5). The ``redis`` package is imported when a store is
built, not when Falaj starts; building one checks that the server answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falaj.core.plugin import BackendConfig, FeatureStoreSpec, hookimpl

__all__ = ["falaj_feature_stores"]


def _factory(config: BackendConfig) -> Any:
    from falaj.plugins.redis_online.store import RedisOnlineStore

    return RedisOnlineStore(config)


@hookimpl
def falaj_feature_stores() -> Iterable[FeatureStoreSpec]:
    yield FeatureStoreSpec(
        name="redis-online",
        factory=_factory,
        description=(
            "Online store in Redis: one packed value per entity key, batch reads in one round trip (MGET), "
            "atomic latest-wins writes (Lua), a subject index for erasure"
        ),
        capabilities=frozenset({"online"}),
    )
