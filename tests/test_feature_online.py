"""The online feature stores, ``sqlite-online`` and ``redis-online``: one behavioural suite run on both.

Redis is the server at FALAJ_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); each test uses its own key
prefix and deletes its keys afterwards. Where no Redis answers, the Redis runs are skipped with the reason.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow", reason="the feature stores need pyarrow (the features extra)")

from falaj.core.errors import BackendError  # noqa: E402
from falaj.core.plugin import BackendConfig, FeatureViewDef, OnlineRow  # noqa: E402

REDIS_URL = os.environ.get("FALAJ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TENANT = "acme"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

DRIVERS = FeatureViewDef(
    tenant=TENANT,
    name="drivers",
    version=1,
    join_keys=(("driver_id", "int64"),),
    features=(("rating", "float64"), ("trips", "int64"), ("city", "string")),
)
ORDERS = FeatureViewDef(
    tenant=TENANT,
    name="orders.daily",
    version=2,
    join_keys=(("shop_id", "int64"), ("sku", "string")),
    features=(
        ("amount", "float64"),
        ("count", "int64"),
        ("label", "string"),
        ("flag", "bool"),
        ("last_seen", "timestamp"),
    ),
)


def _redis_problem() -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return f"Redis not reachable at {REDIS_URL}: {exc}"


def _config(plugin: str, home: Path, **settings: Any) -> BackendConfig:
    return BackendConfig(
        name="online",
        plugin=plugin,
        kind="feature_store",
        region="me-central-1",
        node_class="cpu",
        tenant=TENANT,
        home=home,
        settings=settings,
    )


class Backend:
    """Builds stores of one kind sharing one place (a folder, or a Redis key prefix)."""

    def __init__(self, kind: str, home: Path) -> None:
        self.kind = kind
        self.home = home
        self.prefix = f"falajtest-{secrets.token_hex(6)}"
        self.built: list[Any] = []

    def settings(self) -> dict[str, Any]:
        return {"url": REDIS_URL, "key_prefix": self.prefix} if self.kind == "redis" else {}

    def make(self, **settings: Any) -> Any:
        if self.kind == "sqlite":
            from falaj.plugins.feature_store.online_sqlite import SQLiteOnlineStore

            store: Any = SQLiteOnlineStore(_config("sqlite-online", self.home, **{**self.settings(), **settings}))
        else:
            from falaj.plugins.redis_online.store import RedisOnlineStore

            store = RedisOnlineStore(_config("redis-online", self.home, **{**self.settings(), **settings}))
        self.built.append(store)
        return store

    def cleanup(self) -> None:
        for store in self.built:
            store.close()
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            client.close()

    def stored_keys(self) -> list[bytes]:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
        finally:
            client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "redis":
        problem = _redis_problem()
        if problem:
            pytest.skip(problem)
    made = Backend(request.param, tmp_path / "online")
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def store(backend: Backend) -> Any:
    made = backend.make()
    made.apply(DRIVERS)
    made.apply(ORDERS)
    return made


def drivers(rows: list[dict[str, Any]]) -> Any:
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("driver_id", pa.int64()),
                ("rating", pa.float64()),
                ("trips", pa.int64()),
                ("city", pa.string()),
                ("event_ts", pa.timestamp("us", tz="UTC")),
                ("created_ts", pa.timestamp("us", tz="UTC")),
                ("event_id", pa.string()),
                ("subject_id", pa.string()),
            ]
        ),
    )


def driver(driver_id: int, rating: float, at: datetime = T0, created: datetime | None = None, **more: Any) -> Any:
    return {
        "driver_id": driver_id,
        "rating": rating,
        "trips": more.get("trips", 1),
        "city": more.get("city", "Al Ain"),
        "event_ts": at,
        "created_ts": created,
        "event_id": more.get("event_id"),
        "subject_id": more.get("subject_id"),
    }


def ratings(store: Any, ids: list[int]) -> list[float | None]:
    return [None if r.values is None else r.values["rating"] for r in store.read(DRIVERS, [(i,) for i in ids])]


# -- latest wins, idempotence ---------------------------------------------------------------------------------
def test_newer_rows_replace_older_ones_and_reads_return_plain_values(store: Any) -> None:
    assert store.write(DRIVERS, drivers([driver(1, 4.5), driver(2, 3.0, trips=7, city="Dubai")])) == 2
    assert store.write(DRIVERS, drivers([driver(1, 4.9, at=T0 + timedelta(minutes=1))])) == 1

    first, second = store.read(DRIVERS, [(1,), (2,)])
    assert first == OnlineRow({"rating": 4.9, "trips": 1, "city": "Al Ain"}, T0 + timedelta(minutes=1), None)
    assert second.values == {"rating": 3.0, "trips": 7, "city": "Dubai"}
    assert type(second.values["trips"]) is int and type(second.values["rating"]) is float
    assert second.event_ts == T0 and second.event_ts.tzinfo is not None and second.event_ts.utcoffset() == timedelta(0)


def test_writing_a_batch_again_changes_nothing(store: Any) -> None:
    batch = drivers([driver(i, float(i), subject_id=f"p{i}") for i in range(1, 6)])
    assert store.write(DRIVERS, batch) == 5
    before = store.read(DRIVERS, [(i,) for i in range(1, 6)])
    assert store.write(DRIVERS, batch) == 0
    assert store.read(DRIVERS, [(i,) for i in range(1, 6)]) == before
    assert store.count_subject(TENANT, "p3") == 1


def test_an_older_batch_after_a_newer_one_is_ignored(store: Any) -> None:
    assert store.write(DRIVERS, drivers([driver(1, 9.0, at=T0 + timedelta(hours=1)), driver(2, 9.0)])) == 2
    # key 1's row is older than the stored one; key 2's is newer; key 3 is new
    late = drivers([driver(1, 1.0), driver(2, 2.0, at=T0 + timedelta(seconds=1)), driver(3, 3.0)])
    assert store.write(DRIVERS, late) == 2
    assert ratings(store, [1, 2, 3]) == [9.0, 2.0, 3.0]


def test_equal_event_times_are_decided_by_created_ts_and_null_loses(store: Any) -> None:
    c1, c2 = T0 + timedelta(seconds=5), T0 + timedelta(seconds=6)
    assert store.write(DRIVERS, drivers([driver(1, 1.0, created=c1), driver(2, 1.0, created=None)])) == 2
    # same event time: a null created_ts loses to a set one, a smaller one loses to a greater one
    assert store.write(DRIVERS, drivers([driver(1, 2.0, created=None), driver(2, 2.0, created=c1)])) == 1
    assert ratings(store, [1, 2]) == [1.0, 2.0]
    assert store.write(DRIVERS, drivers([driver(1, 3.0, created=c2), driver(2, 3.0, created=c1)])) == 1
    assert ratings(store, [1, 2]) == [3.0, 2.0]  # an exact tie keeps the stored row
    (row,) = store.read(DRIVERS, [(1,)])
    assert row.created_ts == c2


def test_within_one_batch_the_greatest_row_per_key_wins(store: Any) -> None:
    later = T0 + timedelta(minutes=2)
    batch = drivers(
        [
            driver(1, 1.0),
            driver(1, 3.0, at=later),
            driver(1, 2.0, at=later - timedelta(minutes=1)),
            driver(2, 5.0, at=later, created=None),
            driver(2, 6.0, at=later, created=later),
            driver(2, 4.0, at=later, created=None),
        ]
    )
    assert store.write(DRIVERS, batch) == 2  # keys changed, not rows
    assert ratings(store, [1, 2]) == [3.0, 6.0]


# -- reads -----------------------------------------------------------------------------------------------------
def test_unknown_keys_answer_none_each_in_request_order(store: Any) -> None:
    store.write(DRIVERS, drivers([driver(1, 1.5), driver(3, 3.5)]))
    rows = store.read(DRIVERS, [(9,), (3,), (1,), (9,), (2,), (3,)])
    assert [r.values and r.values["rating"] for r in rows] == [None, 3.5, 1.5, None, None, 3.5]
    assert rows[0] == OnlineRow(values=None) and rows[0].event_ts is None
    assert store.read(DRIVERS, []) == []
    assert store.read(DRIVERS, [(404,)]) == [OnlineRow(values=None)]


def test_a_feature_subset_is_returned_in_request_order_and_unknown_names_are_refused(store: Any) -> None:
    store.write(DRIVERS, drivers([driver(1, 4.0, trips=3, city="Sharjah")]))
    (row,) = store.read(DRIVERS, [(1,)], features=["city", "rating"])
    assert list(row.values) == ["city", "rating"] and row.values == {"city": "Sharjah", "rating": 4.0}
    rows = store.read(DRIVERS, [(1,), (2,)], features=["trips"])
    assert rows[0].values == {"trips": 3} and rows[1].values is None
    assert store.read(DRIVERS, [(1,)], features=[])[0].values == {}
    with pytest.raises(ValueError, match=r"no feature\(s\) 'speed'"):
        store.read(DRIVERS, [(1,)], features=["rating", "speed"])
    with pytest.raises(ValueError, match="not one string"):
        store.read(DRIVERS, [(1,)], features="rating")


def order(shop: int, sku: str, amount: float | None, at: datetime = T0, **more: Any) -> dict[str, Any]:
    return {
        "shop_id": shop,
        "sku": sku,
        "amount": amount,
        "count": more.get("count"),
        "label": more.get("label"),
        "flag": more.get("flag"),
        "last_seen": more.get("last_seen"),
        "event_ts": at,
        "created_ts": more.get("created"),
        "subject_id": more.get("subject_id"),
    }


def orders(rows: list[dict[str, Any]]) -> Any:
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("shop_id", pa.int64()),
                ("sku", pa.string()),
                ("amount", pa.float64()),
                ("count", pa.int64()),
                ("label", pa.string()),
                ("flag", pa.bool_()),
                ("last_seen", pa.timestamp("us", tz="UTC")),
                ("event_ts", pa.timestamp("us", tz="UTC")),
                ("created_ts", pa.timestamp("us", tz="UTC")),
                ("subject_id", pa.string()),
            ]
        ),
    )


def test_multi_column_keys_with_int_and_string(store: Any) -> None:
    store.write(
        ORDERS,
        orders([order(1, "a", 1.0), order(1, "b", 2.0), order(2, "a", 3.0), order(10, "1", 4.0), order(1, "10", 5.0)]),
    )
    keys: list[Any] = [(1, "a"), (1, "b"), (2, "a"), (2, "b"), [10, "1"], (1, "10"), (1, "é")]
    amounts = [r.values and r.values["amount"] for r in store.read(ORDERS, keys, features=["amount"])]
    assert amounts == [1.0, 2.0, 3.0, None, 4.0, 5.0, None]
    # keys are checked: their width and the type of each value
    with pytest.raises(ValueError, match=r"key 1 .*2 value\(s\) for shop_id, sku"):
        store.read(ORDERS, [(1, "a"), (1,)])
    with pytest.raises(ValueError, match="key 0: shop_id must be a int64, got '1'"):
        store.read(ORDERS, [("1", "a")])
    with pytest.raises(ValueError, match="key 0: sku must be a string"):
        store.read(ORDERS, [(1, 2)])
    with pytest.raises(ValueError, match="key 2"):
        store.read(DRIVERS, [(1,), (2,), 3])
    with pytest.raises(ValueError, match="driver_id must be a int64"):
        store.read(DRIVERS, [(1.5,)])


def test_every_dtype_round_trips_and_timestamps_come_back_in_utc(store: Any) -> None:
    seen = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    old = datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)  # before the epoch
    gulf = timezone_plus_four()
    rows = [
        order(1, "x", 2.5, count=2**53 + 1, label="نخلة", flag=True, last_seen=seen, created=T0, subject_id="p1"),
        order(1, "y", float("nan"), count=-3, label="", flag=False, last_seen=old),
        order(1, "z", None, at=datetime(2025, 3, 1, 16, 0, tzinfo=gulf)),  # 12:00 UTC
        order(1, "w", float("inf")),
    ]
    assert store.write(ORDERS, orders(rows)) == 4
    x, y, z, w = store.read(ORDERS, [(1, "x"), (1, "y"), (1, "z"), (1, "w")])
    assert x.values == {"amount": 2.5, "count": 2**53 + 1, "label": "نخلة", "flag": True, "last_seen": seen}
    assert type(x.values["flag"]) is bool and x.values["last_seen"].utcoffset() == timedelta(0)
    assert (x.event_ts, x.created_ts, x.subject_id) == (T0, T0, "p1")
    assert y.values == {"amount": None, "count": -3, "label": "", "flag": False, "last_seen": old}  # NaN: None
    assert type(y.values["flag"]) is bool
    assert z.values == {"amount": None, "count": None, "label": None, "flag": None, "last_seen": None}
    assert z.event_ts == T0 and z.event_ts.tzinfo is not None
    assert w.values is not None and math.isinf(w.values["amount"])


def timezone_plus_four() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=4))


def test_naive_timestamps_are_utc_on_write_and_in_keys(backend: Backend) -> None:
    store = backend.make()
    events = FeatureViewDef(
        tenant=TENANT, name="events", version=1, join_keys=(("at", "timestamp"),), features=(("n", "int64"),)
    )
    naive = datetime(2025, 1, 2, 3, 4, 5, 6)
    table = pa.table(
        {
            "at": pa.array([naive], pa.timestamp("us")),
            "n": pa.array([7], pa.int64()),
            "event_ts": pa.array([naive], pa.timestamp("us")),
        }
    )
    assert store.write(events, table) == 1
    aware = naive.replace(tzinfo=UTC)
    (by_naive,) = store.read(events, [(naive,)])
    (by_aware,) = store.read(events, [(aware,)])
    (by_text,) = store.read(events, [("2025-01-02T07:04:05.000006+04:00",)])
    assert by_naive == by_aware == by_text == OnlineRow({"n": 7}, aware, None)
    with pytest.raises(ValueError, match="at must be a timestamp"):
        store.read(events, [("yesterday",)])


def test_float_and_bool_keys(backend: Backend) -> None:
    store = backend.make()
    scores = FeatureViewDef(
        tenant=TENANT,
        name="scores",
        version=3,
        join_keys=(("score", "float64"), ("ok", "bool")),
        features=(("n", "int64"),),
    )
    table = pa.table(
        {
            "score": pa.array([-0.0, 1.5, 1.5]),
            "ok": pa.array([True, False, True]),
            "n": pa.array([1, 2, 3], pa.int64()),
            "event_ts": pa.array([T0] * 3, pa.timestamp("us", tz="UTC")),
        }
    )
    assert store.write(scores, table) == 3
    rows = store.read(scores, [(0.0, True), (1.5, False), (1.5, True), (1, True), (0.0, False)])
    assert [r.values and r.values["n"] for r in rows] == [1, 2, 3, None, None]
    with pytest.raises(ValueError, match="ok must be a bool"):
        store.read(scores, [(1.5, 1)])
    with pytest.raises(ValueError, match="join key 'score' holds NaN"):
        store.write(scores, table.set_column(0, "score", pa.array([float("nan"), 1.0, 2.0])))


def test_reads_and_writes_larger_than_one_statement(store: Any) -> None:
    n = 2600  # past the stores' chunk sizes
    assert store.write(DRIVERS, drivers([driver(i, float(i)) for i in range(n)])) == n
    wanted = [*range(n - 1, -1, -2), n + 5]
    assert ratings(store, wanted) == [*(float(i) for i in range(n - 1, -1, -2)), None]


# -- erasure ---------------------------------------------------------------------------------------------------
def test_erasure_removes_a_subjects_rows_from_every_view(store: Any) -> None:
    store.write(DRIVERS, drivers([driver(1, 1.0, subject_id="p1"), driver(2, 2.0, subject_id="p2"), driver(3, 3.0)]))
    store.write(ORDERS, orders([order(5, "a", 1.0, subject_id="p1"), order(5, "b", 1.0, subject_id="p1")]))
    assert store.count_subject(TENANT, "p1") == 3
    assert store.count_subject(TENANT, "p2") == 1
    assert store.count_subject(TENANT, "nobody") == 0
    assert [r.subject_id for r in store.read(DRIVERS, [(1,), (2,), (3,)], features=["rating"])] == ["p1", "p2", None]

    assert store.delete_subjects(TENANT, ["p1", "nobody"]) == 3
    assert store.count_subject(TENANT, "p1") == 0
    assert ratings(store, [1, 2, 3]) == [None, 2.0, 3.0]
    assert [r.values for r in store.read(ORDERS, [(5, "a"), (5, "b")])] == [None, None]
    assert store.count_subject(TENANT, "p2") == 1
    assert store.delete_subjects(TENANT, ["p1"]) == 0
    assert store.delete_subjects(TENANT, []) == 0
    # an erased key can be written again (a later, consented row)
    assert store.write(DRIVERS, drivers([driver(1, 7.0, subject_id="p3")])) == 1
    assert ratings(store, [1]) == [7.0] and store.count_subject(TENANT, "p3") == 1


def test_a_newer_row_moves_the_key_to_its_own_subject(backend: Backend, store: Any) -> None:
    store.write(DRIVERS, drivers([driver(1, 1.0, subject_id="old"), driver(2, 1.0, subject_id="old")]))
    store.write(DRIVERS, drivers([driver(1, 2.0, at=T0 + timedelta(seconds=1), subject_id="new")]))
    store.write(DRIVERS, drivers([driver(2, 2.0, at=T0 + timedelta(seconds=1))]))  # now about nobody
    assert store.count_subject(TENANT, "old") == 0
    assert store.count_subject(TENANT, "new") == 1
    if backend.kind == "redis":  # the subject index holds no stale entries
        assert f"{backend.prefix}:{TENANT}:subject:old".encode() not in backend.stored_keys()
    assert store.delete_subjects(TENANT, ["old"]) == 0
    assert ratings(store, [1, 2]) == [2.0, 2.0]
    assert store.delete_subjects(TENANT, ["new"]) == 1
    assert ratings(store, [1, 2]) == [None, 2.0]


def test_another_tenant_is_refused(store: Any) -> None:
    theirs = FeatureViewDef(
        tenant="other", name="drivers", version=1, join_keys=DRIVERS.join_keys, features=DRIVERS.features
    )
    with pytest.raises(ValueError, match="belongs to tenant 'other'"):
        store.apply(theirs)
    with pytest.raises(ValueError, match="belongs to tenant 'other'"):
        store.write(theirs, drivers([driver(1, 1.0)]))
    with pytest.raises(ValueError, match="belongs to tenant 'other'"):
        store.read(theirs, [(1,)])
    with pytest.raises(ValueError, match="bound to tenant 'acme'"):
        store.delete_subjects("other", ["p1"])
    with pytest.raises(ValueError, match="bound to tenant 'acme'"):
        store.count_subject("other", "p1")
    with pytest.raises(ValueError, match="not one string"):
        store.delete_subjects(TENANT, "p1")


# -- definitions and bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "join_keys", "features", "message"),
    [
        ("v", (('id"; DROP TABLE x; --', "int64"),), (("f", "int64"),), "invalid column name"),
        ("v", (("id", "int64"),), (("bad name", "int64"),), "invalid column name"),
        ("v", (("id", "int64"),), (("f]", "int64"),), "invalid column name"),
        ("v", (("id", "int64"),), (("event_ts", "int64"),), "is reserved"),
        ("v", (("id", "int64"),), (("Subject_ID", "string"),), "is reserved"),
        ("v", (("id", "int64"),), (("ID", "float64"),), "appears twice"),
        ("v", (("id", "int64"),), (("f", "decimal"),), "unknown dtype"),
        ("v", (), (("f", "int64"),), "no join keys"),
        ('v"x', (("id", "int64"),), (("f", "int64"),), "invalid feature view table id"),
        ("v:x", (("id", "int64"),), (("f", "int64"),), "invalid feature view table id"),
        ("../v", (("id", "int64"),), (("f", "int64"),), "invalid feature view table id"),
    ],
)
def test_bad_identifiers_are_refused_before_anything_is_stored(
    backend: Backend, name: str, join_keys: Any, features: Any, message: str
) -> None:
    store = backend.make()
    bad = FeatureViewDef(tenant=TENANT, name=name, version=1, join_keys=join_keys, features=features)
    with pytest.raises(ValueError, match=message):
        store.apply(bad)
    with pytest.raises(ValueError, match=message):
        store.read(bad, [(1,)])
    if backend.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(backend.home / "online.db") as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert names == ["falaj_online_views"]
    else:
        assert backend.stored_keys() == []


def test_apply_is_idempotent_and_a_changed_definition_needs_a_new_version(backend: Backend) -> None:
    store = backend.make()
    store.apply(DRIVERS)
    store.apply(DRIVERS)
    store.write(DRIVERS, drivers([driver(1, 1.0)]))
    changed = FeatureViewDef(
        tenant=TENANT, name="drivers", version=1, join_keys=DRIVERS.join_keys, features=(("rating", "string"),)
    )
    fresh = backend.make()  # another process's view of the same store
    with pytest.raises(ValueError, match="needs a new version"):
        fresh.apply(changed)
    fresh.apply(DRIVERS)
    assert ratings(fresh, [1]) == [1.0]


def test_bad_rows_are_refused_and_nothing_of_the_batch_is_written(store: Any) -> None:
    store.write(DRIVERS, drivers([driver(1, 1.0)]))
    later = T0 + timedelta(hours=1)
    with pytest.raises(ValueError, match="join key 'driver_id' is null in 1 row"):
        store.write(DRIVERS, drivers([driver(1, 5.0, at=later), {**driver(2, 5.0), "driver_id": None}]))
    with pytest.raises(ValueError, match="event_ts is null"):
        store.write(DRIVERS, drivers([driver(1, 5.0, at=later), driver(2, 5.0, at=None)]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="column 'city' is missing"):
        store.write(DRIVERS, drivers([driver(1, 5.0, at=later)]).drop_columns(["city"]))
    with pytest.raises(ValueError, match="column 'trips'"):
        bad = drivers([driver(1, 5.0, at=later)]).set_column(2, "trips", pa.array(["many"]))
        store.write(DRIVERS, bad)
    with pytest.raises(ValueError, match=r"expected a pyarrow\.Table"):
        store.write(DRIVERS, [driver(1, 5.0, at=later)])
    assert ratings(store, [1, 2]) == [1.0, None]
    assert store.write(DRIVERS, drivers([])) == 0


def test_stored_rows_outlive_the_store_object(backend: Backend) -> None:
    first = backend.make()
    first.write(DRIVERS, drivers([driver(1, 1.25, subject_id="p1")]))
    first.close()
    again = backend.make()
    assert ratings(again, [1]) == [1.25]
    assert again.count_subject(TENANT, "p1") == 1


def test_threads_share_a_store(store: Any) -> None:
    keys = 50
    barrier = threading.Barrier(4)

    def work(worker: int) -> list[int]:
        barrier.wait()
        changed = []
        for step in range(5):
            at = T0 + timedelta(seconds=worker * 10 + step)
            batch = drivers([driver(k, float(worker * 10 + step), at=at) for k in range(keys)])
            changed.append(store.write(DRIVERS, batch))
            rows = store.read(DRIVERS, [(k,) for k in range(keys)])
            assert all(r.values is not None for r in rows)
        return changed

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert all(0 <= c <= keys for changed in results for c in changed)
    # whatever the interleaving, every key ends with the greatest event time written: worker 3, step 4
    assert ratings(store, list(range(keys))) == [34.0] * keys
    assert all(r.event_ts == T0 + timedelta(seconds=34) for r in store.read(DRIVERS, [(k,) for k in range(keys)]))


# -- settings and plugins ------------------------------------------------------------------------------------------
def test_sqlite_settings_are_checked(tmp_path: Path) -> None:
    from falaj.plugins.feature_store.online_sqlite import SQLiteOnlineStore

    with pytest.raises(ValueError, match="unknown setting"):
        SQLiteOnlineStore(_config("sqlite-online", tmp_path, url="x"))
    with pytest.raises(ValueError, match="busy_timeout_s"):
        SQLiteOnlineStore(_config("sqlite-online", tmp_path, busy_timeout_s="soon"))
    store = SQLiteOnlineStore(_config("sqlite-online", tmp_path / "db"))
    store.apply(DRIVERS)
    store.close()
    assert (tmp_path / "db" / "online.db").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "must be a redis:// or rediss:// URL"),
        ("unix:///tmp/redis.sock", "must be a redis:// or rediss:// URL"),
        ("127.0.0.1:6379", "must be a redis:// or rediss:// URL"),
        (6379, "must be a redis:// or rediss:// URL"),
        ("redis://127.0.0.1:port/0", "not a usable Redis URL"),
    ],
)
def test_redis_refuses_a_url_that_is_not_redis(tmp_path: Path, url: Any, message: str) -> None:
    pytest.importorskip("redis", reason="the redis-online plugin needs redis-py (the redis extra)")
    from falaj.plugins.redis_online.store import RedisOnlineStore

    with pytest.raises(ValueError, match=message):
        RedisOnlineStore(_config("redis-online", tmp_path, url=url))


def test_redis_settings_are_checked(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="the redis-online plugin needs redis-py (the redis extra)")
    from falaj.plugins.redis_online.store import RedisOnlineStore

    with pytest.raises(ValueError, match="unknown setting"):
        RedisOnlineStore(_config("redis-online", tmp_path, host="x"))
    with pytest.raises(ValueError, match="key_prefix"):
        RedisOnlineStore(_config("redis-online", tmp_path, key_prefix="a:b"))
    with pytest.raises(ValueError, match="socket_timeout_s"):
        RedisOnlineStore(_config("redis-online", tmp_path, socket_timeout_s=0))


def test_redis_that_does_not_answer_is_reported_at_construction(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="the redis-online plugin needs redis-py (the redis extra)")
    from falaj.plugins.redis_online.store import RedisOnlineStore

    port = _free_port()
    url = f"redis://falaj:s3cret@127.0.0.1:{port}/0"
    with pytest.raises(BackendError, match=rf"cannot reach Redis at redis://falaj:\*\*\*@127.0.0.1:{port}/0") as info:
        RedisOnlineStore(_config("redis-online", tmp_path, url=url, socket_timeout_s=2))
    assert "s3cret" not in str(info.value)


def test_the_plugins_register_their_stores(backend: Backend) -> None:
    from falaj.core.plugin import OnlineFeatureStore
    from falaj.plugins import feature_store, redis_online

    module = redis_online if backend.kind == "redis" else feature_store
    name = "redis-online" if backend.kind == "redis" else "sqlite-online"
    (spec,) = [s for s in module.falaj_feature_stores() if s.name == name]
    assert spec.capabilities == frozenset({"online"})
    made = spec.factory(_config(name, backend.home, **backend.settings()))
    backend.built.append(made)
    assert isinstance(made, OnlineFeatureStore)
    made.apply(DRIVERS)
    assert made.write(DRIVERS, drivers([driver(1, 2.0)])) == 1


def test_falaj_starts_without_importing_redis_or_pyarrow() -> None:
    code = (
        "import sys, falaj.plugins.redis_online, falaj.plugins.feature_store; "
        "print(sorted(m for m in ('redis', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_sqlite_reads_and_erasure_use_indexes_not_scans(tmp_path: Path) -> None:
    from falaj.plugins.feature_store.online_sqlite import SQLiteOnlineStore

    store = SQLiteOnlineStore(_config("sqlite-online", tmp_path))
    store.write(ORDERS, orders([order(1, "a", 1.0, subject_id="p1")]))
    store.write(DRIVERS, drivers([driver(1, 1.0)]))
    conn = store._conn()  # the calling thread's connection
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.read(ORDERS, [(1, "a")])
    store.read(ORDERS, [(1, "a"), (2, "b"), (1, "a")])
    store.read(DRIVERS, [(1,), (2,)])
    store.count_subject(TENANT, "p1")
    store.delete_subjects(TENANT, ["p1"])
    conn.set_trace_callback(None)
    checked = 0
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH", "DELETE")) or "falaj_online_views" in sql:
            continue
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SEARCH" in plan and "SCAN fv:" not in plan and "SCAN t" not in plan, (sql, plan)
        checked += 1
    assert checked >= 7
