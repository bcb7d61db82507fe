"""The governed feature store end to end: definitions, materialization, online and historical reads, pushes,
on-demand views, data quality, consent, erasure and lineage, on the real stores and the real databases."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import World

pytest.importorskip("duckdb", reason="the feature store needs the 'features' extra")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REGION = "me-central-1"


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)


def _source_rows(n: int = 20) -> list[list[Any]]:
    """Per customer three observations a day apart; amounts encode (customer, day) so values are checkable."""
    rows = []
    for c in range(n):
        for day in range(3):
            ts = T0 + timedelta(days=day)
            rows.append(
                [f"c{c:02d}", ts.isoformat(), (ts + timedelta(minutes=5)).isoformat(), c * 10 + day, day + 1, "gold"]
            )
    return rows


HEADER = ["customer_id", "event_timestamp", "created", "amount", "txn_count", "segment"]


@pytest.fixture
def fs(tmp_path: Path, database_url: str) -> Iterator[World]:
    from falaj.core.plugin import create_plugin_manager
    from tests.conftest import RecordingCompute, make_world, recording_plugins

    RecordingCompute.jobs.clear()
    registry = create_plugin_manager(load_entrypoints=False, extra=[("recording", recording_plugins())])
    w = make_world(tmp_path, database_url, registry=registry)
    try:
        _populate(w)
        yield w
    finally:
        w.plane.close()


def _populate(w: World) -> None:
    w.principal("eng", ["ml-engineer"])
    w.principal("dpo", ["data-steward"])
    w.principal("ap", ["approver"])
    w.principal("svc", ["service"], kind="service")
    for body in (
        {"name": "offline", "kind": "feature_store", "plugin": "parquet-offline", "region": REGION},
        {"name": "online", "kind": "feature_store", "plugin": "sqlite-online", "region": REGION},
    ):
        r = w.act("backend.register", body)
        assert r.ok, r.message()
    path = w.settings.data_dir / "operator" / "customers.csv"
    _write(path, HEADER, _source_rows())
    body = {
        "name": "customers",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "consent",
        "uri": path.as_uri(),
        "subject_column": "customer_id",
    }
    r = w.act("dataset.register", body, as_="dpo")
    assert r.ok, r.message()
    for c in range(20):
        for purpose in ("feature-serving", "training"):
            assert w.act("consent.record", {"subject_id": f"c{c:02d}", "purpose": purpose}, as_="dpo").ok
    for c in (3, 7):  # withdrawn for both purposes
        for purpose in ("feature-serving", "training"):
            assert w.act("consent.withdraw", {"subject_id": f"c{c:02d}", "purpose": purpose}, as_="dpo").ok
    r = w.act(
        "entity.apply",
        {"name": "customer", "join_keys": [{"name": "customer_id", "dtype": "string"}], "subject": True},
        as_="eng",
    )
    assert r.ok, r.message()
    r = w.act("feature_view.apply", VIEW, as_="eng")
    assert r.ok, r.message()


VIEW: dict[str, Any] = {
    "name": "customer_stats",
    "entities": ["customer"],
    "features": [
        {"name": "amount", "dtype": "float64"},
        {"name": "txn_count", "dtype": "int64"},
        {"name": "segment", "dtype": "string"},
    ],
    "source_dataset": "customers",
    "timestamp_field": "event_timestamp",
    "created_timestamp_field": "created",
    "ttl_seconds": 2 * 86400,
    "offline_store": "offline",
    "online_store": "online",
    "expectations": [
        {"type": "not_null", "column": "amount"},
        {"type": "range", "column": "txn_count", "min": 0, "max": 1000},
        {"type": "allowed_values", "column": "segment", "values": ["gold", "silver"]},
    ],
}


def _online(w: World, entities: list[dict[str, Any]], as_: str = "svc", **kw: Any) -> dict[str, Any]:
    from falaj.core.actions import TokenCredential

    args: dict[str, Any] = {"purpose": "feature-serving", "features": ["customer_stats"]} | kw
    answer: dict[str, Any] = w.plane.features.read(
        TokenCredential(w.tokens[as_]), "operator", entities=entities, **args
    )
    return answer


def test_definitions_are_versioned_and_identical_reapply_changes_nothing(fs: World) -> None:
    again = fs.act("feature_view.apply", VIEW, as_="eng")
    assert again.ok and again.data == {"feature_view": "customer_stats", "version": 1, "changed": False}
    changed = fs.act("feature_view.apply", {**VIEW, "ttl_seconds": 86400}, as_="eng")
    assert changed.ok and changed.data["version"] == 2 and changed.data["changed"]
    assert changed.data["classification"] == "personal" and changed.data["residency"] == ["AE"]
    entity = fs.act(
        "entity.apply",
        {"name": "customer", "join_keys": [{"name": "customer_id", "dtype": "string"}], "subject": True},
        as_="eng",
    )
    assert entity.data["changed"] is False
    service = fs.act("feature_service.apply", {"name": "scoring", "features": ["customer_stats:amount"]}, as_="eng")
    assert service.ok and service.data["features"] == [{"view": "customer_stats", "version": 2, "features": ["amount"]}]
    # Bad definitions are refused with the reason, and nothing is written.
    bad = fs.act(
        "feature_view.apply", {**VIEW, "name": "bad", "features": [{"name": "nope", "dtype": "float64"}]}, as_="eng"
    )
    assert bad.outcome == "failed" and "nope" in bad.error
    bad = fs.act(
        "feature_view.apply", {**VIEW, "name": "bad2", "features": [{"name": "event_id", "dtype": "string"}]}, as_="eng"
    )
    assert bad.outcome == "denied" and "event_id" in bad.message()
    bad = fs.act("feature_service.apply", {"name": "s2", "features": ["customer_stats:ghost"]}, as_="eng")
    assert bad.outcome == "failed" and "ghost" in bad.error
    denied = fs.act("feature_view.apply", {**VIEW, "name": "x"}, as_="ap")
    assert denied.outcome == "denied"


def test_materialize_then_online_reads_with_consent_freshness_and_unknown_keys(fs: World) -> None:
    r = fs.act(
        "feature_view.materialize",
        {"name": "customer_stats", "mode": "full", "end": (T0 + timedelta(days=3)).isoformat()},
        as_="svc",
    )
    assert r.ok, r.message()
    assert r.data["rows_read"] == 60 and r.data["excluded_subjects"] == 2
    assert r.data["entities_written"] == 18
    answer = _online(fs, [{"customer_id": "c01"}, {"customer_id": "c03"}, {"customer_id": "zz"}, {"customer_id": 5}])
    first, withdrawn, unknown, invalid = answer["results"]
    # Day 2 data is months old by now: older than the view's 2-day TTL, so it is reported expired, values null.
    assert first["status"]["customer_stats"]["status"] == "expired"
    assert first["status"]["customer_stats"]["event_ts"] == (T0 + timedelta(days=2)).isoformat()
    assert first["values"] == {"amount": None, "txn_count": None, "segment": None}
    assert withdrawn["status"]["customer_stats"]["status"] == "not_found"  # never materialized: no consent
    assert withdrawn["values"] == {"amount": None, "txn_count": None, "segment": None}
    assert unknown["status"]["customer_stats"]["status"] == "not_found"
    assert invalid["status"]["customer_stats"]["status"] == "invalid_key"
    # Without a TTL the same stored row is served, with its age.
    assert fs.act("feature_view.apply", {**VIEW, "ttl_seconds": None}, as_="eng").ok
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    first = _online(fs, [{"customer_id": "c01"}])["results"][0]
    assert first["values"] == {"amount": 12.0, "txn_count": 3, "segment": "gold"}  # the latest of c01 (day 2)
    assert first["status"]["customer_stats"]["status"] == "present"
    assert first["status"]["customer_stats"]["age_seconds"] > 86400
    # A withdrawal takes effect at the next read, without a new materialization.
    assert fs.act("consent.withdraw", {"subject_id": "c01", "purpose": "feature-serving"}, as_="dpo").ok
    again = _online(fs, [{"customer_id": "c01"}])
    assert again["results"][0]["status"]["customer_stats"]["status"] == "withheld"
    # A reader without the role is denied, and the denial is audited.
    from falaj.core.errors import ReadDenied

    with pytest.raises(ReadDenied) as denied:
        _online(fs, [{"customer_id": "c02"}], as_="ap")
    assert denied.value.audit_seq is not None
    # Reads are remembered as allowed for a second at most; revoking the token ends them at once.
    prefix = fs.tokens["svc"].split("_")[1]
    assert fs.act("token.revoke", {"prefix": prefix}).ok
    with pytest.raises(ReadDenied) as revoked:
        _online(fs, [{"customer_id": "c02"}])
    assert revoked.value.check == "authenticate"


def test_incremental_materialization_is_idempotent(fs: World) -> None:
    assert fs.act("feature_view.apply", {**VIEW, "ttl_seconds": None}, as_="eng").ok
    end = (T0 + timedelta(days=1)).isoformat()
    first = fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full", "end": end}, as_="svc")
    assert first.ok and first.data["entities_written"] == 18
    answer = _online(fs, [{"customer_id": "c02"}], features=["customer_stats:amount"])
    assert answer["results"][0]["values"] == {"amount": 20.0}  # day 0 only, in the first window
    nothing = fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full", "end": end}, as_="svc")
    assert nothing.ok and nothing.data["entities_written"] == 0  # the same rows again change nothing
    more = fs.act(
        "feature_view.materialize", {"name": "customer_stats", "end": (T0 + timedelta(days=5)).isoformat()}, as_="svc"
    )
    assert more.ok and more.data["window"]["start"] == T0.replace(day=2).isoformat()
    assert more.data["entities_written"] == 18
    # The first materialization's profile is the reference the next one's drift is measured against.
    assert first.data["drift"] == {}
    assert set(more.data["drift"]) == {"amount", "txn_count", "segment"}
    assert set(more.data["drift"].values()) <= {"none", "moderate", "significant", "unknown"}
    assert more.data["drift"]["txn_count"] == "significant"  # every key went from 1 to 3 transactions
    assert _online(fs, [{"customer_id": "c02"}], features=["customer_stats:amount"])["results"][0]["values"] == {
        "amount": 22.0
    }


def test_historical_retrieval_is_point_in_time_correct_and_consent_filtered(fs: World) -> None:
    assert fs.act("consent.record", {"subject_id": "c99", "purpose": "training"}, as_="dpo").ok
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    rows = [
        {"customer_id": "c02", "event_timestamp": (T0 + timedelta(hours=30)).isoformat(), "label": 1},
        {"customer_id": "c02", "event_timestamp": (T0 - timedelta(hours=1)).isoformat(), "label": 0},
        {"customer_id": "c02", "event_timestamp": (T0 + timedelta(days=9)).isoformat(), "label": 0},
        {"customer_id": "c03", "event_timestamp": (T0 + timedelta(days=1)).isoformat(), "label": 1},
        {"customer_id": "c99", "event_timestamp": (T0 + timedelta(days=1)).isoformat(), "label": 1},
        {"customer_id": "nobody", "event_timestamp": (T0 + timedelta(days=1)).isoformat(), "label": 1},
        {"customer_id": "c02", "event_timestamp": (T0 + timedelta(hours=30)).isoformat(), "label": 1},
    ]
    r = fs.act(
        "feature.retrieve",
        {"purpose": "training", "features": ["customer_stats:amount", "customer_stats:txn_count"], "entity_rows": rows},
        as_="eng",
    )
    assert r.ok, r.message()
    data = r.data["data"]
    # c03 withdrew consent for training, "nobody" never gave it: their entity rows are left out.
    assert r.data["excluded_rows"] == 2
    assert [d["customer_id"] for d in data] == ["c02", "c02", "c02", "c99", "c02"]
    assert data[0]["amount"] == 21.0 and data[0]["txn_count"] == 2  # day 1 is the latest at +30 h
    assert data[1]["amount"] is None  # before any observation
    assert data[2]["amount"] is None  # 9 days later: beyond the 2-day TTL
    assert data[3]["amount"] is None  # a consenting subject with no features: kept, with nulls
    assert data[4] == data[0]  # duplicate entity rows are all kept
    events = [e for e in fs.plane.lineage.events() if e["job"]["name"].startswith("retrieve.")]
    assert [e["eventType"] for e in events][-2:] == ["START", "COMPLETE"]


def test_on_demand_view_computes_the_same_online_and_offline(fs: World) -> None:
    """No training/serving skew: the on-demand outputs a model trains on (historical) are the ones it is served."""
    assert fs.act("feature_view.apply", {**VIEW, "ttl_seconds": None}, as_="eng").ok
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    r = fs.act(
        "feature_view.apply",
        {
            "name": "customer_ratios",
            "sources": ["customer_stats"],
            "request_fields": [{"name": "basket", "dtype": "float64"}],
            "outputs": [
                {"name": "amount_per_txn", "dtype": "float64", "expr": "amount / txn_count"},
                {"name": "basket_share", "dtype": "float64", "expr": "basket / (amount + 1)"},
                {"name": "big", "dtype": "bool", "expr": "amount > 100"},
            ],
        },
        as_="eng",
    )
    assert r.ok, r.message()
    ids = [f"c{c:02d}" for c in range(20) if c not in (3, 7)]
    baskets = [0.5 + 3.7 * i for i in range(len(ids))]
    now = datetime.now(UTC).isoformat()
    offline = fs.act(
        "feature.retrieve",
        {
            "purpose": "feature-serving",
            "features": ["customer_ratios"],
            "entity_rows": [
                {"customer_id": c, "event_timestamp": now, "basket": b} for c, b in zip(ids, baskets, strict=True)
            ],
        },
        as_="eng",
    )
    assert offline.ok, offline.message()
    online = _online(
        fs,
        [{"customer_id": c, "basket": b} for c, b in zip(ids, baskets, strict=True)],
        features=["customer_ratios"],
    )
    assert {r["status"]["customer_ratios"]["status"] for r in online["results"]} == {"computed"}
    names = ("amount_per_txn", "basket_share", "big")
    served = [tuple(r["values"][n] for n in names) for r in online["results"]]
    trained = [tuple(d[n] for n in names) for d in offline.data["data"]]
    assert served == trained  # bit for bit
    assert served[1] == (4.0, baskets[1] / 13.0, False)  # c01 at day 2: amount 12, 3 transactions
    # A request field missing online is a per-row status, not an error for the batch.
    missing = _online(fs, [{"customer_id": "c01"}], features=["customer_ratios"])["results"][0]
    assert missing["status"]["customer_ratios"]["status"] == "missing_request_field"


def test_push_is_idempotent_by_event_id_and_bad_rows_are_refused(fs: World) -> None:
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    now = datetime.now(UTC)
    rows = [
        {
            "event_id": f"e{i}",
            "customer_id": "c05",
            "event_ts": (now - timedelta(seconds=10 - i)).isoformat(),
            "amount": 100.0 + i,
            "txn_count": 9,
            "segment": "silver",
        }
        for i in range(3)
    ]
    first = fs.act("feature_view.push", {"name": "customer_stats", "rows": rows}, as_="svc")
    assert first.ok, first.message()
    assert first.data["written"] == 3 and first.data["duplicates"] == 0
    again = fs.act("feature_view.push", {"name": "customer_stats", "rows": rows}, as_="svc")
    assert again.ok and again.data["written"] == 0 and again.data["duplicates"] == 3
    assert again.data["online_updated"] == 0
    answer = _online(fs, [{"customer_id": "c05"}])["results"][0]
    assert answer["values"] == {"amount": 102.0, "txn_count": 9, "segment": "silver"}
    assert answer["status"]["customer_stats"]["status"] == "present"
    assert answer["status"]["customer_stats"]["age_seconds"] < 3600
    bad = fs.act(
        "feature_view.push",
        {"name": "customer_stats", "rows": [{**rows[0], "event_id": "e9", "amount": "lots"}, {"customer_id": "c05"}]},
        as_="svc",
    )
    assert bad.outcome == "failed" and "row 0" in bad.error and "row 1" in bad.error
    no_consent = fs.act(
        "feature_view.push",
        {"name": "customer_stats", "rows": [{**rows[0], "event_id": "e10", "customer_id": "c07"}]},
        as_="svc",
    )
    assert no_consent.outcome == "denied" and "consent" in no_consent.message()


def test_failing_expectations_and_schema_drift_deny_materialization(fs: World) -> None:
    folder = fs.settings.data_dir / "operator"
    rows = _source_rows()
    rows[4][3] = ""  # a null amount
    rows[5][5] = "platinum"  # not an allowed value
    _write(folder / "customers-v2.csv", HEADER, rows)
    body = {
        "name": "customers",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "consent",
        "uri": (folder / "customers-v2.csv").as_uri(),
        "subject_column": "customer_id",
    }
    assert fs.act("dataset.register", body, as_="dpo").ok
    r = fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc")
    assert r.outcome == "denied"
    failed = [c for c in r.decision.checks if c.check == "data-quality"]
    assert len(failed) == 2
    assert any("amount" in c.reason for c in failed) and any("platinum" in c.reason for c in failed)
    assert _online(fs, [{"customer_id": "c01"}])["results"][0]["status"]["customer_stats"]["status"] == "not_found"
    fail = [e for e in fs.plane.lineage.events() if e["job"]["name"] == "materialize.customer_stats"][-1]
    assert fail["eventType"] == "FAIL"
    # A new source version without a column the view reads: refused, naming it.
    _write(
        folder / "customers-v3.csv", [h for h in HEADER if h != "txn_count"], [r[:4] + r[5:] for r in _source_rows()]
    )
    assert fs.act("dataset.register", {**body, "uri": (folder / "customers-v3.csv").as_uri()}, as_="dpo").ok
    r = fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc")
    assert r.outcome == "denied"
    schema = [c.reason for c in r.decision.checks if c.check == "source-schema"]
    assert schema and "txn_count" in schema[0]


def test_erasure_removes_the_subject_from_offline_and_online_stores(fs: World) -> None:
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    # The stored row is older than the TTL: "expired" shows it is there.
    assert _online(fs, [{"customer_id": "c04"}])["results"][0]["status"]["customer_stats"]["status"] == "expired"
    request = fs.act("erasure.request", {"subject_id": "c04"}, as_="dpo")
    assert request.ok
    done = fs.act("erasure.execute", {"request_id": request.data["request_id"]}, as_="dpo")
    assert done.ok, done.message()
    stores = {s["backend"]: s for s in done.data["feature_stores"]}
    assert stores["offline"]["rows_removed"] == 3 and stores["offline"]["verified"]
    assert stores["online"]["rows_removed"] == 1
    assert _online(fs, [{"customer_id": "c04"}])["results"][0]["status"]["customer_stats"]["status"] == "not_found"
    r = fs.act(
        "feature.retrieve",
        {
            "purpose": "training",
            "features": ["customer_stats:amount"],
            "entity_rows": [{"customer_id": "c04", "event_timestamp": (T0 + timedelta(days=1)).isoformat()}],
        },
        as_="eng",
    )
    assert (r.ok and r.data["data"] == []) or r.data["data"][0]["amount"] is None


def test_training_from_a_feature_service_records_lineage(fs: World) -> None:
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    assert fs.act(
        "feature_service.apply",
        {"name": "churn", "features": ["customer_stats:amount", "customer_stats:txn_count"]},
        as_="eng",
    ).ok
    labels = fs.settings.data_dir / "operator" / "labels.csv"
    _write(
        labels,
        ["customer_id", "event_timestamp", "churned"],
        [[f"c{c:02d}", (T0 + timedelta(days=2, hours=2)).isoformat(), c % 2] for c in range(20)],
    )
    assert fs.act(
        "dataset.register",
        {
            "name": "labels",
            "classification": "personal",
            "residency": "AE",
            "legal_basis": "consent",
            "uri": labels.as_uri(),
            "subject_column": "customer_id",
        },
        as_="dpo",
    ).ok
    from tests.conftest import RecordingCompute

    assert fs.act(
        "backend.register", {"name": "cpu", "kind": "compute", "plugin": "recording-compute", "region": REGION}
    ).ok
    r = fs.act(
        "training.submit",
        {
            "name": "churn-1",
            "backend": "cpu",
            "purpose": "training",
            "features": {"feature_service": "churn", "entity_dataset": "labels"},
        },
        as_="eng",
    )
    assert r.ok, r.message()
    job = RecordingCompute.jobs[-1]
    (features,) = job["inputs"]
    assert features["feature_service"] == "churn" and features["consent_filtered"]
    assert features["rows"] == 18 and features["excluded_rows"] == 2
    with Path(features["uri"].removeprefix("file://")).open() as fh:
        got = {row["customer_id"]: row for row in csv.DictReader(fh)}
    assert set(got) == {f"c{c:02d}" for c in range(20)} - {"c03", "c07"}
    assert float(got["c05"]["amount"]) == 52.0 and got["c05"]["churned"] == "1"  # day 2 at +2 h, with its label
    from sqlalchemy import select

    from falaj.core.domain import LineageEdge

    with fs.plane.sessions() as s:
        relations = {
            (e.source_type, e.relation)
            for e in s.scalars(select(LineageEdge).where(LineageEdge.target_id == r.data["run_id"]))
        }
    assert relations == {("feature_view", "trained_on_features"), ("dataset", "trained_on")}


def test_a_materialization_killed_midway_is_resumed_by_the_next(fs: World, tmp_path: Path) -> None:
    """A real process materializes in chunks of 4 keys and dies (exit 137) after 2 chunks; the next run resumes
    from the checkpoint and the online store ends complete, with no key written twice."""
    assert fs.act("feature_view.apply", {**VIEW, "ttl_seconds": None}, as_="eng").ok
    env = {
        **os.environ,
        "FALAJ_HOME": str(fs.settings.home),
        "FALAJ_DATABASE_URL": fs.settings.database_url,
        "FALAJ_TOKEN": fs.tokens["svc"],
        "FALAJ_MATERIALIZE_CHUNK_ROWS": "4",
    }
    command = [
        sys.executable,
        "-m",
        "falaj.api.cli",
        "features",
        "materialize",
        "customer_stats",
        "--tenant",
        "operator",
        "--full",
        "--json",
    ]
    crashed = subprocess.run(
        command,
        env={**env, "FALAJ_FAULT_MATERIALIZE_CRASH_AFTER_CHUNKS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 137, crashed.stderr
    # Nothing of the crashed action was committed: no materialization row, the watermark unchanged...
    with fs.plane.sessions() as s:
        from sqlalchemy import func, select

        from falaj.core.domain import Materialization

        assert s.scalar(select(func.count()).select_from(Materialization)) == 0
    # ...but the 8 keys of its two chunks are in the online store already.
    present = [
        r
        for r in _online(fs, [{"customer_id": f"c{c:02d}"} for c in range(20)])["results"]
        if r["status"]["customer_stats"]["status"] == "present"
    ]
    assert len(present) == 8
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(resumed.stdout)["data"]
    assert data["resumed_from_chunk"] == 2
    assert data["entities_in_window"] == 18 and data["entities_written"] == 10
    answers = _online(fs, [{"customer_id": f"c{c:02d}"} for c in range(20) if c not in (3, 7)])["results"]
    assert all(r["status"]["customer_stats"]["status"] == "present" for r in answers)
    assert not list((fs.settings.home / "materializations").rglob("*.json"))  # the checkpoint is gone


def test_the_redis_online_store_serves_and_erases_through_the_control_plane(fs: World) -> None:
    """The same governed flow with the Redis plugin as the online store (the server on loopback)."""
    import secrets

    from tests.test_feature_online import REDIS_URL, _redis_problem

    if problem := _redis_problem():
        pytest.skip(problem)
    prefix = f"falajtest{secrets.token_hex(4)}"
    r = fs.act(
        "backend.register",
        {
            "name": "redis",
            "kind": "feature_store",
            "plugin": "redis-online",
            "region": REGION,
            "settings": {"url": REDIS_URL, "key_prefix": prefix},
        },
    )
    assert r.ok, r.message()
    try:
        view = {**VIEW, "name": "customer_stats_fast", "online_store": "redis", "ttl_seconds": None}
        assert fs.act("feature_view.apply", view, as_="eng").ok
        done = fs.act("feature_view.materialize", {"name": "customer_stats_fast", "mode": "full"}, as_="svc")
        assert done.ok and done.data["entities_written"] == 18, done.message()
        answer = _online(fs, [{"customer_id": "c06"}, {"customer_id": "c07"}], features=["customer_stats_fast"])
        assert answer["results"][0]["values"] == {"amount": 62.0, "txn_count": 3, "segment": "gold"}
        assert answer["results"][1]["status"]["customer_stats_fast"]["status"] == "not_found"  # no consent
        request = fs.act("erasure.request", {"subject_id": "c06"}, as_="dpo")
        done = fs.act("erasure.execute", {"request_id": request.data["request_id"]}, as_="dpo")
        assert done.ok, done.message()
        redis_report = next(s for s in done.data["feature_stores"] if s["backend"] == "redis")
        assert redis_report["rows_removed"] == 1 and redis_report["verified"]
        answer = _online(fs, [{"customer_id": "c06"}], features=["customer_stats_fast"])
        assert answer["results"][0]["status"]["customer_stats_fast"]["status"] == "not_found"
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_an_entity_dataset_is_governed_like_any_source(fs: World) -> None:
    """Entity rows from a registered dataset: its own consent filters its rows, its residency binds the run."""
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    labels = fs.settings.data_dir / "operator" / "outcomes.csv"
    _write(
        labels,
        ["customer_id", "event_timestamp", "churned"],
        [[c, (T0 + timedelta(days=2, hours=2)).isoformat(), 1] for c in ("c01", "c02", "c03", "x1")],
    )
    body = {
        "name": "outcomes",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "consent",
        "uri": labels.as_uri(),
        "subject_column": "customer_id",
    }
    assert fs.act("dataset.register", body, as_="dpo").ok
    r = fs.act(
        "feature.retrieve",
        {"purpose": "training", "features": ["customer_stats:amount"], "entity_dataset": "outcomes"},
        as_="eng",
    )
    assert r.ok, r.message()
    # c03 withdrew and x1 never consented to training: their label rows are not used.
    assert [d["customer_id"] for d in r.data["data"]] == ["c01", "c02"] and r.data["excluded_rows"] == 2
    # Training in Bahrain from these labels leaves the UAE with personal data: denied, naming the dataset.
    assert fs.act(
        "backend.register", {"name": "cpu-bh", "kind": "compute", "plugin": "recording-compute", "region": "me-south-1"}
    ).ok
    assert fs.act("feature_service.apply", {"name": "churn2", "features": ["customer_stats:amount"]}, as_="eng").ok
    denied = fs.act(
        "training.submit",
        {"name": "bh", "backend": "cpu-bh", "features": {"feature_service": "churn2", "entity_dataset": "outcomes"}},
        as_="eng",
    )
    assert denied.outcome == "denied" and "outcomes" in denied.message()


def test_exports_and_training_copies_are_erased_too(fs: World) -> None:
    from tests.conftest import RecordingCompute

    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    rows = [{"customer_id": f"c{c:02d}", "event_timestamp": (T0 + timedelta(days=2)).isoformat()} for c in range(6)]
    out = fs.act(
        "feature.retrieve",
        {"purpose": "training", "features": ["customer_stats:amount"], "entity_rows": rows, "destination": "t1"},
        as_="eng",
    )
    assert out.ok, out.message()
    assert fs.act("feature_service.apply", {"name": "churn3", "features": ["customer_stats:amount"]}, as_="eng").ok
    labels = fs.settings.data_dir / "operator" / "labels3.csv"
    _write(labels, ["customer_id", "event_timestamp"], [[r["customer_id"], r["event_timestamp"]] for r in rows])
    assert fs.act(
        "dataset.register",
        {"name": "labels3", "classification": "internal", "residency": "AE", "uri": labels.as_uri()},
        as_="dpo",
    ).ok
    assert fs.act(
        "backend.register", {"name": "cpu", "kind": "compute", "plugin": "recording-compute", "region": REGION}
    ).ok
    run = fs.act(
        "training.submit",
        {"name": "r", "backend": "cpu", "features": {"feature_service": "churn3", "entity_dataset": "labels3"}},
        as_="eng",
    )
    assert run.ok, run.message()
    training_csv = Path(RecordingCompute.jobs[-1]["inputs"][0]["uri"].removeprefix("file://"))
    assert "c05" in training_csv.read_text()
    request = fs.act("erasure.request", {"subject_id": "c05"}, as_="dpo")
    done = fs.act("erasure.execute", {"request_id": request.data["request_id"]}, as_="dpo")
    assert done.ok, done.message()
    files = {f["file"].split("/")[-1]: f["rows_removed"] for f in done.data["feature_files"]}
    assert files == {training_csv.name: 1, "features.parquet": 1}
    assert "c05" not in training_csv.read_text()
    import pyarrow.parquet as pq

    assert "c05" not in pq.read_table(out.data["path"]).column("customer_id").to_pylist()


def test_an_erased_subjects_redelivered_rows_stay_erased(fs: World) -> None:
    """On a view whose source is not consent-based, a redelivered push of an erased subject's old row is dropped
    (offline and online), while data about them from after the erasure is written."""
    accounts = fs.settings.data_dir / "operator" / "accounts.csv"
    _write(accounts, ["customer_id", "event_timestamp", "balance"], [["a1", T0.isoformat(), 5.0]])
    body = {
        "name": "accounts",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "contract",
        "uri": accounts.as_uri(),
        "subject_column": "customer_id",
    }
    assert fs.act("dataset.register", body, as_="dpo").ok
    view = {
        "name": "balances",
        "entities": ["customer"],
        "features": [{"name": "balance", "dtype": "float64"}],
        "source_dataset": "accounts",
        "offline_store": "offline",
        "online_store": "online",
    }
    assert fs.act("feature_view.apply", view, as_="eng").ok
    before = datetime.now(UTC) - timedelta(minutes=1)
    row = {"event_id": "b1", "customer_id": "a9", "event_ts": before.isoformat(), "balance": 9.0}
    assert fs.act("feature_view.push", {"name": "balances", "rows": [row]}, as_="svc").ok
    request = fs.act("erasure.request", {"subject_id": "a9"}, as_="dpo")
    assert fs.act("erasure.execute", {"request_id": request.data["request_id"]}, as_="dpo").ok
    again = fs.act("feature_view.push", {"name": "balances", "rows": [row]}, as_="svc")
    assert again.ok and again.data["erased_rows_dropped"] == 1
    answer = _online(fs, [{"customer_id": "a9"}], features=["balances"], purpose="analytics")
    assert answer["results"][0]["status"]["balances"]["status"] == "not_found"
    later = {**row, "event_id": "b2", "event_ts": datetime.now(UTC).isoformat(), "balance": 1.0}
    fresh = fs.act("feature_view.push", {"name": "balances", "rows": [later]}, as_="svc")
    assert fresh.ok and fresh.data["erased_rows_dropped"] == 0 and fresh.data["written"] == 1


def test_online_reads_answer_bad_rows_with_statuses_not_errors(fs: World) -> None:
    from falaj.core.errors import ValidationError

    assert fs.act("feature_view.apply", {**VIEW, "ttl_seconds": None}, as_="eng").ok
    assert fs.act("feature_view.materialize", {"name": "customer_stats", "mode": "full"}, as_="svc").ok
    odfv = {
        "name": "ratios",
        "sources": ["customer_stats"],
        "request_fields": [{"name": "basket", "dtype": "float64"}],
        "outputs": [{"name": "share", "expr": "basket / (amount + 1)"}],
    }
    assert fs.act("feature_view.apply", odfv, as_="eng").ok
    rows = [{"customer_id": "c01", "basket": "lots"}, "not a row", {"customer_id": 2**70, "basket": 1.0}]
    answer = _online(fs, rows, features=["ratios"])  # type: ignore[arg-type]
    assert [r["status"]["ratios"]["status"] for r in answer["results"]] == [
        "invalid_request_field",
        "invalid_key",
        "invalid_key",
    ]
    assert fs.act("feature_view.apply", {**VIEW, "name": "customer_stats_copy"}, as_="eng").ok
    with pytest.raises(ValidationError, match="full_feature_names"):
        _online(fs, [{"customer_id": "c01"}], features=["customer_stats", "customer_stats_copy"])
    both = _online(
        fs, [{"customer_id": "c01"}], features=["customer_stats", "customer_stats_copy"], full_feature_names=True
    )
    assert set(both["results"][0]["values"]) >= {"customer_stats__amount", "customer_stats_copy__amount"}
    future = fs.act(
        "feature_view.materialize", {"name": "customer_stats", "end": "2099-01-01T00:00:00+00:00"}, as_="svc"
    )
    assert future.outcome == "failed" and "future" in future.error


def test_residency_holds_for_every_region_a_retrieval_reaches() -> None:
    from falaj.core.decision import CheckOutcome
    from falaj.core.policy.bundle import load_bundle
    from falaj.core.policy.engine import DataProfile, Facts, PolicyEngine, SourceData

    engine = PolicyEngine(load_bundle())
    data = DataProfile("personal", frozenset({"AE"}), ("customers v1",), frozenset({"consent"}),
                       (SourceData("customers v1", "personal", "AE"),))  # fmt: skip
    facts = Facts(kind="feature.retrieve", tenant="t", ruleset="uae-federal", roles=frozenset({"ml-engineer"}),
                  target_region="me-central-1", data=data)  # fmt: skip
    assert all(c.outcome is not CheckOutcome.FAIL for c in engine.checks(facts) if c.check == "residency")
    from dataclasses import replace

    both = replace(facts, other_regions=("eu-west-1",))
    failed = [c for c in engine.checks(both) if c.check == "residency" and c.outcome is CheckOutcome.FAIL]
    assert len(failed) == 1 and "eu-west-1" in failed[0].reason


def test_materializations_of_one_view_run_one_at_a_time(fs: World) -> None:
    """Two at once (two threads; on PostgreSQL two transactions): the second waits for the first, so they never
    share the checkpoint or race on the watermark."""
    import threading

    from sqlalchemy import select

    from falaj.core.domain import Materialization

    big = fs.settings.data_dir / "operator" / "big.csv"
    _write(big, ["shop", "event_timestamp", "sales"], [[f"s{i}", T0.isoformat(), float(i)] for i in range(30_000)])
    assert fs.act(
        "dataset.register", {"name": "big", "classification": "internal", "residency": "AE", "uri": big.as_uri()},
        as_="dpo",
    ).ok  # fmt: skip
    assert fs.act("entity.apply", {"name": "shop", "join_keys": [{"name": "shop", "dtype": "string"}]}, as_="eng").ok
    view = {"name": "shop_sales", "entities": ["shop"], "features": [{"name": "sales", "dtype": "float64"}],
            "source_dataset": "big", "offline_store": "offline", "online_store": "online"}  # fmt: skip
    assert fs.act("feature_view.apply", view, as_="eng").ok
    results: list[Any] = []
    ready = threading.Barrier(2)

    def run(who: str) -> None:
        ready.wait()
        results.append(fs.act("feature_view.materialize", {"name": "shop_sales", "mode": "full"}, as_=who))

    # Two principals (one principal's actions already queue on its token's row).
    threads = [threading.Thread(target=run, args=(who,)) for who in ("svc", "eng")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r.outcome for r in results] == ["succeeded", "succeeded"], [r.message() for r in results]
    with fs.plane.sessions() as s:
        spans = sorted((m.started_at, m.finished_at) for m in s.scalars(select(Materialization)))
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]  # the second started after the first finished
