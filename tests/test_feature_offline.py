"""The builtin offline feature store ``parquet-offline``: point-in-time joins (hand-written cases for every rule
and a brute-force reference under hypothesis), idempotent source writes and pushes, compaction and its crash
safety, erasure in every place rows live, concurrency and bad input."""

from __future__ import annotations

import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falaj.core.features.arrow import TIMESTAMP
from falaj.core.plugin import BackendConfig, FeatureViewDef, PushResult
from falaj.plugins.feature_store import falaj_feature_stores
from falaj.plugins.feature_store.offline import ParquetOfflineStore

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
NAIVE = pa.timestamp("us")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def make_store(home: Path, tenant: str = "acme", **settings: Any) -> ParquetOfflineStore:
    return ParquetOfflineStore(
        BackendConfig(
            name="offline",
            plugin="parquet-offline",
            kind="feature_store",
            region="me-central-1",
            node_class="cpu-smb",
            tenant=tenant,
            home=home,
            settings=settings,
        )
    )


def make_view(name: str = "users", ttl: int | None = None, version: int = 1) -> FeatureViewDef:
    return FeatureViewDef(
        tenant="acme",
        name=name,
        version=version,
        join_keys=(("uid", "int64"),),
        features=(("score", "float64"), ("label", "string")),
        ttl_seconds=ttl,
    )


def rows(*items: tuple[Any, ...]) -> pa.Table:
    """Feature rows from (uid, event minute, score, event_id[, created minute[, subject[, label]]]) tuples."""
    cols: dict[str, list[Any]] = {k: [] for k in ("uid", "event_ts", "score", "event_id", "created_ts", "subject_id")}
    labels: list[Any] = []
    for item in items:
        uid, minute, score, event_id, *rest = item
        created = rest[0] if rest else None
        cols["uid"].append(uid)
        cols["event_ts"].append(at(minute))
        cols["score"].append(score)
        cols["event_id"].append(event_id)
        cols["created_ts"].append(None if created is None else at(created))
        cols["subject_id"].append(rest[1] if len(rest) > 1 else None)
        labels.append(rest[2] if len(rest) > 2 else None)
    table = pa.table(
        {
            "uid": pa.array(cols["uid"], pa.int64()),
            "event_ts": pa.array(cols["event_ts"], TIMESTAMP),
            "score": pa.array(cols["score"], pa.float64()),
            "label": pa.array(labels, pa.string()),
            "created_ts": pa.array(cols["created_ts"], TIMESTAMP),
            "event_id": pa.array(cols["event_id"], pa.string()),
            "subject_id": pa.array(cols["subject_id"], pa.string()),
        }
    )
    return table


def entities(*items: tuple[int | None, float | None]) -> pa.Table:
    """Entity rows (uid, minute) with naive (UTC) timestamps."""
    return pa.table(
        {
            "uid": pa.array([u for u, _ in items], pa.int64()),
            "event_timestamp": pa.array([None if m is None else at(m).replace(tzinfo=None) for _, m in items], NAIVE),
        }
    )


def replace(table: pa.Table, name: str, values: Any) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def scores(table: pa.Table, column: str = "score") -> list[Any]:
    return table.column(column).to_pylist()  # type: ignore[no-any-return]


@pytest.fixture
def store(tmp_path: Path) -> ParquetOfflineStore:
    return make_store(tmp_path)


@pytest.fixture
def view(store: ParquetOfflineStore) -> FeatureViewDef:
    v = make_view()
    store.apply(v)
    return v


# -- point-in-time rules, one by one ---------------------------------------------------------------------------------
def test_pit_takes_latest_row_at_or_before_each_entity_time(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(view, rows((1, 10, 1.0, "a"), (1, 20, 2.0, "b"), (2, 15, 5.0, "c")), source_digest=DIGEST_A)
    ent = entities((1, 5), (1, 10), (1, 19), (1, 20), (1, 99), (2, 15), (3, 50), (None, 50), (1, None))
    out = store.historical([(view, ["score"])], ent)
    # before the first row: null; exactly at a row's time: that row; later rows never leak backwards
    assert scores(out) == [None, 1.0, 1.0, 2.0, 2.0, 5.0, None, None, None]
    assert out.column_names == ["uid", "event_timestamp", "score"]
    assert out.column("uid").equals(ent.column("uid")) and out.column("event_timestamp").equals(
        ent.column("event_timestamp")
    )


def test_pit_ttl_bounds_are_inclusive(store: ParquetOfflineStore) -> None:
    view = make_view(ttl=600)  # ten minutes
    store.apply(view)
    store.write_source(view, rows((1, 0, 1.0, "a")), source_digest=DIGEST_A)
    micro = 1 / 60_000_000
    ent = entities((1, 0), (1, 10), (1, 10 + micro), (1, 5))
    assert scores(store.historical([(view, ["score"])], ent)) == [1.0, 1.0, None, 1.0]
    # without a TTL the same row answers forever
    forever = make_view(version=2)
    store.apply(forever)
    store.write_source(forever, rows((1, 0, 1.0, "a")), source_digest=DIGEST_A)
    assert scores(store.historical([(forever, ["score"])], entities((1, 10_000)))) == [1.0]


def test_pit_ttl_expired_latest_row_is_not_replaced_by_an_older_one(store: ParquetOfflineStore) -> None:
    view = make_view(ttl=60)
    store.apply(view)
    store.write_source(view, rows((1, 0, 1.0, "a"), (1, 10, 2.0, "b")), source_digest=DIGEST_A)
    assert scores(store.historical([(view, ["score"])], entities((1, 10.5), (1, 12)))) == [2.0, None]


def test_pit_ties_go_to_latest_created_and_null_created_loses(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(
        view,
        rows(
            (1, 10, 1.0, "a", 11),
            (1, 10, 2.0, "b", 12),  # same event time, created later: wins
            (1, 10, 3.0, "c", None),  # null created loses to any created time
            (2, 10, 4.0, "d", None),
            (2, 10, 5.0, "e", 1),
        ),
        source_digest=DIGEST_A,
    )
    assert scores(store.historical([(view, ["score"])], entities((1, 10), (2, 30)))) == [2.0, 5.0]


def test_pit_keeps_order_and_duplicate_entity_rows(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(view, rows((1, 1, 1.0, "a"), (2, 1, 2.0, "b"), (3, 1, 3.0, "c")), source_digest=DIGEST_A)
    ent = entities((3, 5), (1, 5), (3, 5), (2, 0), (2, 5), (1, 5))
    ent = ent.append_column("row_id", pa.array(["r0", "r1", "r2", "r3", "r4", "r5"]))
    out = store.historical([(view, ["score", "label"])], ent)
    assert out.num_rows == 6
    assert out.column("row_id").to_pylist() == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert scores(out) == [3.0, 1.0, 3.0, None, 2.0, 1.0]
    assert out.schema.field("score").type == pa.float64() and out.schema.field("label").type == pa.string()


def test_pit_entity_timestamps_naive_aware_and_strings_are_utc(
    store: ParquetOfflineStore, view: FeatureViewDef
) -> None:
    store.write_source(view, rows((1, 60, 1.0, "a"), (1, 120, 2.0, "b")), source_digest=DIGEST_A)
    # 05:30 in Dubai (UTC+4), 01:30 naive, "01:30" as text: all 01:30 UTC, after the 01:00 row, before 02:00's
    dubai = pa.array([datetime(2024, 1, 1, 5, 30, tzinfo=ZoneInfo("Asia/Dubai"))], pa.timestamp("us", tz="Asia/Dubai"))
    naive = pa.array([datetime(2024, 1, 1, 1, 30)], NAIVE)
    text = pa.array(["2024-01-01T01:30:00"])
    text_with_offset = pa.array(["2024-01-01T05:30:00+04:00"])
    for column in (dubai, naive, text, text_with_offset):
        ent = pa.table({"uid": [1], "event_timestamp": column})
        assert scores(store.historical([(view, ["score"])], ent)) == [1.0], column.type


def test_pit_several_views_and_full_feature_names(store: ParquetOfflineStore) -> None:
    users = make_view("users")
    risk = FeatureViewDef("acme", "risk", 3, (("uid", "int64"),), (("score", "float64"), ("flag", "bool")), 60)
    store.apply(users)
    store.apply(risk)
    store.write_source(users, rows((1, 0, 1.0, "a")), source_digest=DIGEST_A)
    risk_rows = pa.table(
        {"uid": [1], "event_ts": pa.array([at(5)], TIMESTAMP), "score": [9.0], "flag": [True], "event_id": ["r1"]}
    )
    store.push(risk, risk_rows)
    ent = entities((1, 5), (1, 6), (1, 7))
    out = store.historical([(users, ["score"]), (risk, ["score", "flag"])], ent, full_feature_names=True)
    assert out.column_names == ["uid", "event_timestamp", "users__score", "risk__score", "risk__flag"]
    assert scores(out, "users__score") == [1.0, 1.0, 1.0]
    assert scores(out, "risk__score") == [9.0, 9.0, None]  # risk's TTL is one minute
    assert out.column("risk__flag").to_pylist() == [True, True, None]
    with pytest.raises(ValueError, match=r"'score' would appear twice: .* \(full_feature_names=True"):
        store.historical([(users, ["score"]), (risk, ["score"])], ent)


def test_pit_allowed_subjects(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(
        view,
        rows(
            (1, 0, 1.0, "a", None, "alice"),
            (1, 5, 2.0, "b", None, "bob"),  # newer, but bob is not allowed: must not hide alice's row
            (2, 0, 3.0, "c", None, None),  # not personal: always matches
            (3, 0, 4.0, "d", None, "bob"),
        ),
        source_digest=DIGEST_A,
    )
    ent = entities((1, 10), (2, 10), (3, 10))
    assert scores(store.historical([(view, ["score"])], ent, allowed_subjects={"alice"})) == [1.0, 3.0, None]
    assert scores(store.historical([(view, ["score"])], ent, allowed_subjects=[])) == [None, 3.0, None]
    assert scores(store.historical([(view, ["score"])], ent)) == [2.0, 3.0, 4.0]


def test_pit_pushed_and_source_rows_together(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(view, rows((1, 0, 1.0, "a"), (1, 10, 2.0, "same")), source_digest=DIGEST_A)
    store.push(view, rows((1, 5, 5.0, "p1"), (1, 20, 7.0, "same")))  # "same": the source's copy is the one kept
    out = store.historical([(view, ["score"])], entities((1, 6), (1, 15), (1, 25)))
    assert scores(out) == [5.0, 2.0, 2.0]
    assert sorted(store.scan(view).column("event_id").to_pylist()) == ["a", "p1", "same"]


def test_historical_bad_requests_name_the_problem(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    ent = entities((1, 5))
    with pytest.raises(ValueError, match="no feature 'nope'"):
        store.historical([(view, ["score", "nope"])], ent)
    with pytest.raises(ValueError, match="no column 'uid', a join key"):
        store.historical([(view, ["score"])], ent.drop_columns(["uid"]))
    with pytest.raises(ValueError, match="no column 'ts'"):
        store.historical([(view, ["score"])], ent, timestamp_column="ts")
    with pytest.raises(ValueError, match="must hold timestamps"):
        store.historical([(view, ["score"])], pa.table({"uid": [1], "event_timestamp": [3]}))
    with pytest.raises(ValueError, match="'uid' cannot be read as int64"):
        store.historical([(view, ["score"])], pa.table({"uid": ["x"], "event_timestamp": ent.column(1)}))
    with pytest.raises(ValueError, match="non-empty list of feature names"):
        store.historical([(view, [])], ent)
    with pytest.raises(ValueError, match="one string"):
        store.historical([(view, ["score"])], ent, allowed_subjects="alice")
    with pytest.raises(ValueError, match="pyarrow Table"):
        store.historical([(view, ["score"])], [{"uid": 1}])
    with pytest.raises(ValueError, match="apply it first"):
        store.historical([(make_view("never"), ["score"])], ent)


# -- the brute-force reference ------------------------------------------------------------------------------------
FeatureRow = tuple[int, int, int | None, str | None, float, str, bool]  # uid, minute, created, subject, value, id, src


def reference_pit(
    feature_rows: list[FeatureRow], ents: list[tuple[int, datetime]], ttl: int | None, allowed: set[str] | None
) -> list[float | None]:
    out: list[float | None] = []
    for uid, ts in ents:
        best: tuple[Any, float] | None = None
        for key, minute, created, subject, value, event_id, _ in feature_rows:
            event_ts = at(minute)
            if key != uid or event_ts > ts:
                continue
            if ttl is not None and event_ts < ts - timedelta(seconds=ttl):
                continue
            if allowed is not None and subject is not None and subject not in allowed:
                continue
            rank = (event_ts, created is not None, created or 0, event_id)
            if best is None or rank > best[0]:
                best = (rank, value)
        out.append(None if best is None else best[1])
    return out


feature_rows_st = st.lists(
    st.tuples(
        st.integers(0, 2),  # uid
        st.integers(0, 6),  # event minute: few values, many ties
        st.none() | st.integers(0, 3),  # created minute
        st.sampled_from([None, "alice", "bob"]),  # subject
        st.integers(-5, 5).map(float),  # value
        st.booleans(),  # from the source (else pushed)
    ),
    max_size=14,
).map(lambda items: [(u, m, c, s, v, f"e{i}", src) for i, (u, m, c, s, v, src) in enumerate(items)])
entities_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-1, 8), st.sampled_from([0, 30, 59])), min_size=0, max_size=10
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feature_rows=feature_rows_st,
    ents=entities_st,
    ttl=st.sampled_from([None, 0, 60, 90, 180]),
    allowed=st.none() | st.sets(st.sampled_from(["alice", "bob"])),
    tz=st.sampled_from(["naive", "UTC", "Asia/Dubai", "string"]),
    compact=st.booleans(),
)
def test_pit_matches_brute_force_reference(
    feature_rows: list[FeatureRow],
    ents: list[tuple[int, int, int]],
    ttl: int | None,
    allowed: set[str] | None,
    tz: str,
    compact: bool,
) -> None:
    view = make_view(ttl=ttl)
    entity_times = [at(m) + timedelta(seconds=s) for _, m, s in ents]
    if tz == "naive":
        ts_col = pa.array([t.replace(tzinfo=None) for t in entity_times], NAIVE)
    elif tz == "string":
        ts_col = pa.array([t.strftime("%Y-%m-%dT%H:%M:%S") for t in entity_times], pa.string())
    else:
        ts_col = pa.array([t.astimezone(ZoneInfo(tz)) for t in entity_times], pa.timestamp("us", tz=tz))
    entity_table = pa.table({"uid": pa.array([u for u, _, _ in ents], pa.int64()), "event_timestamp": ts_col})

    def table_of(subset: list[FeatureRow]) -> pa.Table:
        return rows(*[(u, m, v, eid, c, s) for u, m, c, s, v, eid, _ in subset])

    with tempfile.TemporaryDirectory() as home:
        store = make_store(Path(home))
        store.apply(view)
        store.write_source(view, table_of([r for r in feature_rows if r[6]]), source_digest=DIGEST_A)
        store.push(view, table_of([r for r in feature_rows if not r[6]]))
        if compact:
            store.compact(view)
        out = store.historical([(view, ["score"])], entity_table, allowed_subjects=allowed)
    expected = reference_pit(
        feature_rows, [(u, t) for (u, _, _), t in zip(ents, entity_times, strict=True)], ttl, allowed
    )
    assert scores(out) == expected
    assert out.column("event_timestamp").equals(entity_table.column("event_timestamp"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feature_rows=feature_rows_st,
    start=st.none() | st.integers(0, 6),
    end=st.none() | st.integers(0, 7),
    allowed=st.none() | st.sets(st.sampled_from(["alice", "bob"])),
)
def test_latest_matches_brute_force_reference(
    feature_rows: list[FeatureRow], start: int | None, end: int | None, allowed: set[str] | None
) -> None:
    view = make_view()
    expected: dict[int, tuple[Any, float]] = {}
    for uid, minute, created, subject, value, event_id, _ in feature_rows:
        if (start is not None and minute < start) or (end is not None and minute >= end):
            continue
        if allowed is not None and subject is not None and subject not in allowed:
            continue
        rank = (minute, created is not None, created or 0, event_id)
        if uid not in expected or rank > expected[uid][0]:
            expected[uid] = (rank, value)
    with tempfile.TemporaryDirectory() as home:
        store = make_store(Path(home))
        store.apply(view)
        store.push(view, rows(*[(u, m, v, eid, c, s) for u, m, c, s, v, eid, _ in feature_rows]))
        out = store.latest(
            view,
            start=None if start is None else at(start),
            end=None if end is None else at(end).replace(tzinfo=None),  # naive: UTC
            allowed_subjects=allowed,
        )
    assert dict(zip(out.column("uid").to_pylist(), scores(out), strict=True)) == {
        uid: value for uid, (_, value) in expected.items()
    }


def test_latest_returns_view_schema_rows(store: ParquetOfflineStore, view: FeatureViewDef) -> None:
    store.write_source(view, rows((1, 0, 1.0, "a", None, "alice", "x"), (1, 5, 2.0, "b")), source_digest=DIGEST_A)
    store.push(view, rows((2, 3, 3.0, "p", 4, None, "y")))
    out = store.latest(view, start=at(0), end=at(5))
    assert out.column_names == ["uid", "score", "label", "event_ts", "created_ts", "event_id", "subject_id"]
    assert out.schema.field("event_ts").type == TIMESTAMP
    assert out.to_pylist() == [
        {
            "uid": 1,
            "score": 1.0,
            "label": "x",
            "event_ts": at(0),
            "created_ts": None,
            "event_id": "a",
            "subject_id": "alice",
        },
        {
            "uid": 2,
            "score": 3.0,
            "label": "y",
            "event_ts": at(3),
            "created_ts": at(4),
            "event_id": "p",
            "subject_id": None,
        },
    ]


# -- writes --------------------------------------------------------------------------------------------------------
def source_files(home: Path, view: FeatureViewDef) -> list[str]:
    return sorted(p.name for p in (home / "acme" / view.table_id / "source").iterdir())


def test_write_source_is_idempotent_per_digest_and_keeps_pushed_rows(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    first = rows((1, 0, 1.0, "a"), (2, 0, 2.0, "b"))
    assert store.write_source(view, first, source_digest=DIGEST_A) == 2
    path = tmp_path / "acme" / view.table_id / "source" / ("a" * 64 + ".parquet")
    stamp = path.stat().st_mtime_ns
    # the same digest again changes nothing, even if the rows handed over differ
    assert store.write_source(view, rows((9, 0, 9.0, "z")), source_digest=DIGEST_A) == 2
    assert path.stat().st_mtime_ns == stamp
    assert sorted(store.scan(view).column("event_id").to_pylist()) == ["a", "b"]
    store.push(view, rows((3, 1, 3.0, "p1")))
    # a new digest replaces the source rows; pushed rows are kept; the old snapshot is gone
    assert store.write_source(view, rows((4, 0, 4.0, "c")), source_digest=DIGEST_B) == 1
    assert sorted(store.scan(view).column("event_id").to_pylist()) == ["c", "p1"]
    assert source_files(tmp_path, view) == ["b" * 64 + ".parquet"]
    # and a fresh store object over the same folder sees the same
    assert sorted(make_store(tmp_path).scan(view).column("event_id").to_pylist()) == ["c", "p1"]


def test_write_source_fills_missing_event_ids_and_keeps_first_of_repeats(
    store: ParquetOfflineStore, view: FeatureViewDef
) -> None:
    table = replace(rows((1, 0, 1.0, "a"), (1, 1, 2.0, "a"), (2, 0, 3.0, "b")), "event_id", pa.array(["a", "a", None]))
    assert store.write_source(view, table, source_digest=DIGEST_A) == 2
    scanned = store.scan(view)
    assert scanned.num_rows == 2
    ids = dict(zip(scanned.column("event_id").to_pylist(), scores(scanned), strict=True))
    assert ids["a"] == 1.0
    (made_up,) = [k for k in ids if k != "a"]
    assert made_up.startswith("source:aaaaaaaaaaaaaaaa:") and ids[made_up] == 3.0


def test_push_is_idempotent_across_compaction(tmp_path: Path) -> None:
    store = make_store(tmp_path, compact_rows=3)
    view = make_view()
    store.apply(view)
    assert store.push(view, rows((1, 0, 1.0, "e1"), (1, 1, 2.0, "e2"))) == PushResult(written=2, duplicates=0)
    # a repeat within a batch is a duplicate of its first row; this push reaches 3 logged rows and compacts
    assert store.push(view, rows((1, 2, 3.0, "e3"), (1, 2, 30.0, "e3"), (1, 0, 1.0, "e1"))) == PushResult(1, 2)
    parts = sorted((tmp_path / "acme" / view.table_id / "pushed").glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_table(parts[0]).num_rows == 3
    # redelivery after compaction: every id is known
    assert store.push(view, rows((1, 0, 1.0, "e1"), (1, 1, 2.0, "e2"), (1, 2, 3.0, "e3"))) == PushResult(0, 3)
    assert store.push(view, rows((1, 3, 4.0, "e4"), (1, 1, 2.0, "e2"))) == PushResult(1, 1)
    assert store.compact(view) == 1
    assert store.compact(view) == 0
    assert make_store(tmp_path).push(view, rows((1, 3, 4.0, "e4"))) == PushResult(0, 1)
    scanned = store.scan(view)
    assert scanned.column("event_id").to_pylist() == ["e1", "e2", "e3", "e4"]
    assert scores(scanned) == [1.0, 2.0, 3.0, 4.0]


def test_large_pushes_are_split_and_many_small_pushes_compact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import falaj.plugins.feature_store.offline as offline

    monkeypatch.setattr(offline, "_ROWS_PER_LOG_ENTRY", 2)
    monkeypatch.setattr(offline, "MAX_LOGGED_PUSHES", 4)
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    pushed = tmp_path / "acme" / view.table_id / "pushed"
    # five new rows (and one repeat) in one push: three log entries, one transaction
    batch = rows(*[(1, i, float(i), f"e{i}", None, "alice" if i % 2 else None) for i in range(5)], (1, 0, 0.0, "e0"))
    assert store.push(view, batch) == PushResult(5, 1)
    assert not list(pushed.iterdir())
    assert store.delete_subjects("acme", ["alice"]) == 2  # e1 and e3, in two of the three entries
    assert store.scan(view).column("event_id").to_pylist() == ["e0", "e2", "e4"]
    assert store.push(view, rows((2, 0, 1.0, "x"))) == PushResult(1, 0)  # the fourth entry: compacts
    (part,) = pushed.iterdir()
    assert pq.read_table(part).column("event_id").to_pylist() == ["e0", "e2", "e4", "x"]
    assert store.scan(view).column("event_id").to_pylist() == ["e0", "x", "e2", "e4"]


def test_push_keeps_values_exactly(store: ParquetOfflineStore) -> None:
    view = FeatureViewDef(
        "acme",
        "typed",
        1,
        (("name", "string"), ("day", "timestamp")),
        (("f", "float64"), ("i", "int64"), ("b", "bool"), ("t", "timestamp")),
    )
    store.apply(view)
    table = pa.table(
        {
            "name": ["x", "ü"],
            "day": pa.array([at(0), at(1440)], TIMESTAMP),
            "f": [float("nan"), 0.1 + 0.2],
            "i": [2**62, None],
            "b": [True, None],
            "t": pa.array([None, datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)], TIMESTAMP),
            "event_ts": pa.array([at(0), at(1)], TIMESTAMP),
            "event_id": ["1", "2"],
        }
    )
    store.push(view, table)
    for _ in range(2):  # from the log, then from a part
        got = store.scan(view)
        assert got.column("name").to_pylist() == ["x", "ü"]
        assert pc.is_nan(got.column("f")).to_pylist() == [True, False]
        assert got.column("f")[1].as_py() == 0.1 + 0.2
        assert got.column("i").to_pylist() == [2**62, None]
        assert got.column("b").to_pylist() == [True, None]
        assert got.column("t")[1].as_py() == datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC)
        store.compact(view)


def test_compaction_crash_leaves_results_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    store.push(view, rows((1, 0, 1.0, "e1"), (2, 0, 2.0, "e2")))
    before = store.scan(view)

    def crash(conn: Any, last: int) -> None:
        if last > 0:
            raise RuntimeError("power cut")

    monkeypatch.setattr(ParquetOfflineStore, "_forget_compacted", staticmethod(crash))
    with pytest.raises(RuntimeError, match="power cut"):
        store.compact(view)
    monkeypatch.undo()
    folder = tmp_path / "acme" / view.table_id
    assert len(list((folder / "pushed").glob("part-*.parquet"))) == 1  # the part was written...
    (folder / "pushed" / ".part-x.parquet.dead.tmp").write_bytes(b"half a file")  # ...and a write cut short
    # reopen: the same rows, once each, although they are in the part and still in the log
    reopened = make_store(tmp_path)
    assert reopened.scan(view).equals(before)
    assert not list((folder / "pushed").glob("*.tmp"))
    out = reopened.historical([(view, ["score"])], entities((1, 1), (2, 1)))
    assert scores(out) == [1.0, 2.0]
    assert reopened.push(view, rows((1, 0, 1.0, "e1"), (3, 0, 3.0, "e3"))) == PushResult(1, 1)
    assert reopened.compact(view) == 1
    assert reopened.scan(view).column("event_id").to_pylist() == ["e1", "e2", "e3"]


def test_crash_in_the_log_cleanup_seen_by_a_live_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same crash, but the store object lives on: reads skip the logged rows that a part holds."""
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    store.push(view, rows((1, 0, 1.0, "e1")))
    store.scan(view)  # the folder was recovered once by this object: recovery will not run again
    monkeypatch.setattr(ParquetOfflineStore, "_forget_compacted", staticmethod(lambda conn, last: None))
    store.compact(view)
    monkeypatch.undo()
    assert store.scan(view).column("event_id").to_pylist() == ["e1"]
    assert store.count_subject("acme", "nobody") == 0


# -- erasure ---------------------------------------------------------------------------------------------------------
def test_erasure_removes_the_subject_everywhere(tmp_path: Path) -> None:
    subject = "subject-erase-me-7f3a"
    store = make_store(tmp_path)
    view, other = make_view(), make_view("orders")
    store.apply(view)
    store.apply(other)
    store.write_source(
        view, rows((1, 0, 1.0, "s1", None, subject), (2, 0, 2.0, "s2", None, "keep")), source_digest=DIGEST_A
    )
    store.push(view, rows((1, 1, 3.0, "p1", None, subject), (2, 1, 4.0, "p2", None, None)))
    store.compact(view)  # now in a part file
    store.push(view, rows((1, 2, 5.0, "l1", None, subject), (2, 2, 6.0, "l2", None, "keep")))  # in the log
    store.push(view, rows((1, 3, 7.0, "l3", None, subject)))  # a logged push holding only the subject
    store.push(other, rows((7, 0, 1.0, "o1", None, subject)))
    assert store.count_subject("acme", subject) == 5
    assert store.delete_subjects("acme", [subject, "nobody"]) == 5
    assert store.count_subject("acme", subject) == 0
    assert store.count_subject("acme", "keep") == 2
    assert sorted(store.scan(view).column("event_id").to_pylist()) == ["l2", "p2", "s2"]
    assert store.scan(other).num_rows == 0
    assert scores(store.historical([(view, ["score"])], entities((1, 10), (2, 10)))) == [None, 6.0]
    # nothing on disk holds it any more: not the Parquet files, not the SQLite pages or its WAL
    for path in (tmp_path / "acme").rglob("*"):
        if path.is_file():
            assert subject.encode() not in path.read_bytes(), path
            if path.suffix == ".parquet":
                assert subject not in pq.read_table(path).column("subject_id").to_pylist()
    # erased rows stay erased: a redelivery is a duplicate, the same source digest is a no-op
    assert store.push(view, rows((1, 2, 5.0, "l1", None, subject))) == PushResult(0, 1)
    store.write_source(view, rows((1, 0, 1.0, "s1", None, subject)), source_digest=DIGEST_A)
    assert store.count_subject("acme", subject) == 0
    assert store.delete_subjects("acme", [subject]) == 0
    assert store.delete_subjects("acme", []) == 0


def test_erasure_is_per_tenant(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ValueError, match="bound to tenant 'acme'"):
        store.delete_subjects("bank", ["x"])
    with pytest.raises(ValueError, match="bound to tenant 'acme'"):
        store.count_subject("bank", "x")
    with pytest.raises(ValueError, match="not one string"):
        store.delete_subjects("acme", "alice")
    assert store.count_subject("acme", "x") == 0  # no views yet


# -- concurrency ------------------------------------------------------------------------------------------------------
def test_concurrent_pushes_and_reads(tmp_path: Path) -> None:
    store = make_store(tmp_path, compact_rows=120)
    view = make_view()
    store.apply(view)
    store.write_source(view, rows(*[(u, 0, 0.0, f"s{u}") for u in range(20)]), source_digest=DIGEST_A)
    results: list[PushResult] = []
    errors: list[BaseException] = []
    done = threading.Event()
    reads = 0

    def pusher(first: int) -> None:
        try:
            for start in range(first, first + 600, 40):
                batch = rows(*[(i % 20, 1 + i % 50, float(i), f"e{i}") for i in range(start, start + 40)])
                results.append(store.push(view, batch))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        nonlocal reads
        other = make_store(tmp_path)  # a second store object over the same folder shares the locks
        try:
            while not done.is_set() or reads < 3:
                ids = other.scan(view).column("event_id")
                assert pc.count_distinct(ids).as_py() == len(ids), "an event id appeared twice"
                out = other.historical([(view, ["score"])], entities(*[(u, 100) for u in range(20)]))
                assert out.num_rows == 20 and out.column("score").null_count == 0
                reads += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(0,)), threading.Thread(target=pusher, args=(300,))]
    read_thread = threading.Thread(target=reader)
    read_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    read_thread.join()
    assert not errors, errors
    assert sum(r.written for r in results) == 900 and sum(r.duplicates for r in results) == 300
    scanned = store.scan(view)
    assert scanned.num_rows == 920 and pc.count_distinct(scanned.column("event_id")).as_py() == 920


def test_concurrent_reads_of_one_view_do_not_collide(tmp_path: Path) -> None:
    """Reads run side by side on one store (a shared DuckDB database): each query's views are its own."""
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    store.write_source(view, rows(*[(u, 0, 0.0, f"s{u}") for u in range(200)]), source_digest=DIGEST_A)
    store.push(view, rows(*[(u, 1, 1.0, f"p{u}") for u in range(50)]))
    store.compact(view)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def read(kind: str) -> None:
        try:
            start.wait()
            for _ in range(15):
                if kind == "latest":
                    assert store.latest(view).num_rows == 200
                else:
                    out = store.historical([(view, ["score"])], entities(*[(u, 100) for u in range(200)]))
                    assert out.num_rows == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(k,)) for k in ("latest", "latest", "historical", "historical")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_bad_pushes_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    view = make_view()
    with pytest.raises(ValueError, match="no event_id"):
        store.push(view, rows((1, 0, 1.0, "a")).drop_columns(["event_id"]))
    with pytest.raises(ValueError, match="column 'score' is missing"):
        store.push(view, rows((1, 0, 1.0, "a")).drop_columns(["score"]))
    with pytest.raises(ValueError, match="'event_ts' is null in 1 row"):
        store.push(view, replace(rows((1, 0, 1.0, "a")), "event_ts", pa.nulls(1, TIMESTAMP)))
    with pytest.raises(ValueError, match="'uid' is null"):
        store.push(view, rows((None, 0, 1.0, "a")))
    with pytest.raises(ValueError, match=r"column 'score': cannot read string"):
        store.push(view, replace(rows((1, 0, 1.0, "a")), "score", pa.array(["high"])))
    with pytest.raises(ValueError, match="pyarrow Table"):
        store.push(view, {"uid": [1]})
    assert not (tmp_path / "acme").exists()  # nothing was created for refused rows
    store.apply(view)
    store.push(view, rows((1, 0, 1.0, "a")))
    with pytest.raises(ValueError, match="no event_id"):
        store.push(view, rows((1, 1, 2.0, "b"), (1, 2, 3.0, None)))
    assert store.scan(view).column("event_id").to_pylist() == ["a"]  # the good row of a refused batch too
    assert store.push(view, rows((1, 1, 2.0, "b"))) == PushResult(1, 0)


def test_bad_views_settings_and_digests(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    with pytest.raises(ValueError, match="belongs to tenant 'bank'"):
        store.apply(FeatureViewDef("bank", "users", 1, (("uid", "int64"),), (("score", "float64"),)))
    changed = FeatureViewDef("acme", "users", 1, (("uid", "int64"),), (("score", "string"),))
    with pytest.raises(ValueError, match="columns cannot change"):
        store.apply(changed)
    with pytest.raises(ValueError, match="columns cannot change"):
        store.scan(changed)
    with pytest.raises(ValueError, match="invalid column name"):
        store.apply(FeatureViewDef("acme", "odd", 1, (("uid", "int64"),), (('a"b', "float64"),)))
    with pytest.raises(ValueError, match="source_digest must be"):
        store.write_source(view, rows((1, 0, 1.0, "a")), source_digest="")
    with pytest.raises(ValueError, match="source_digest must be"):
        store.write_source(view, rows((1, 0, 1.0, "a")), source_digest="sha256:XYZ")
    with pytest.raises(ValueError, match="must be a datetime"):
        store.latest(view, start="2024-01-01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="apply it first"):
        store.scan(make_view("never"))
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="compact_rows"):
            make_store(tmp_path, compact_rows=bad)
    with pytest.raises(ValueError, match="invalid tenant"):
        make_store(tmp_path, tenant="../x")


def test_write_failure_leaves_the_old_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    view = make_view()
    store.apply(view)
    store.write_source(view, rows((1, 0, 1.0, "a")), source_digest=DIGEST_A)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.write_source(view, rows((2, 0, 2.0, "b")), source_digest=DIGEST_B)
    monkeypatch.undo()
    assert store.scan(view).column("event_id").to_pylist() == ["a"]
    assert source_files(tmp_path, view) == ["a" * 64 + ".parquet"]


def test_drop_and_factory(tmp_path: Path) -> None:
    (spec,) = [s for s in falaj_feature_stores() if s.name == "parquet-offline"]
    store = spec.factory(
        BackendConfig("offline", "parquet-offline", "feature_store", "me-central-1", "cpu-smb", "acme", tmp_path)
    )
    assert isinstance(store, ParquetOfflineStore)
    view = make_view()
    store.apply(view)
    store.apply(view)  # idempotent
    store.push(view, rows((1, 0, 1.0, "a", None, "alice")))
    store.drop(view)
    assert not (tmp_path / "acme" / view.table_id).exists()
    assert store.count_subject("acme", "alice") == 0
    store.apply(view)  # a new, empty storage
    assert store.scan(view).num_rows == 0
    assert store.push(view, rows((1, 0, 1.0, "a"))) == PushResult(1, 0)
