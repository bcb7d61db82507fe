"""Streaming ingestion, governed, end to end: NATS JetStream -> `falaj features stream` (a real process) ->
`feature_view.push` actions -> the offline and online stores. The consumer is killed mid-stream and
restarted: nothing is lost, nothing is duplicated, and messages that can never be stored go to the dead-letter
subject with their reason while the stream goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import World
from tests.test_features import REGION, _online, _populate
from tests.test_nats_stream import Names, acked_all, make_streams, names, publish, stored  # noqa: F401

pytest.importorskip("duckdb", reason="the feature store needs the 'features' extra")

#: Rows in the stream: in batches of 10, each an audited action, the first consumer needs seconds for them, so
#: it is surely killed mid-stream (after 100 rows).
TOTAL = 900


@pytest.fixture
def world_sqlite(tmp_path: Path) -> Iterator[World]:
    from falaj.core.plugin import create_plugin_manager
    from tests.conftest import make_world

    w = make_world(
        tmp_path, f"sqlite:///{tmp_path / 'falaj.db'}", registry=create_plugin_manager(load_entrypoints=False)
    )
    try:
        _populate(w)
        yield w
    finally:
        w.plane.close()


def _wait(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pushed(w: World) -> Any:
    """Every effective row the offline store holds for the view (there is no source data: only pushes)."""
    from sqlalchemy import select

    from falaj.core.domain import Backend
    from falaj.core.features import registry as reg

    with w.plane.sessions() as s:
        view = reg.latest_view(s, _tenant_id(w), "customer_stats")
        backend = s.scalar(select(Backend).where(Backend.name == "offline"))
        store = w.plane.backend_instance("operator", backend)
        return store.scan(reg.view_def(view, "operator"))


def _tenant_id(w: World) -> str:
    from sqlalchemy import select

    from falaj.core.domain import Tenant

    with w.plane.sessions() as s:
        return str(s.scalar(select(Tenant.id).where(Tenant.slug == "operator")))


def test_a_killed_stream_consumer_loses_nothing_and_duplicates_nothing(world_sqlite: World, names: Names) -> None:  # noqa: F811
    w = world_sqlite
    make_streams(names)
    r = w.act(
        "backend.register", {"name": "nats", "kind": "stream_source", "plugin": "nats-jetstream", "region": REGION}
    )
    assert r.ok, r.message()
    start = datetime.now(UTC) - timedelta(hours=1)
    consented = [c for c in range(20) if c not in (3, 7)]
    good = [
        {
            "event_id": f"evt-{i}",
            "customer_id": f"c{consented[i % len(consented)]:02d}",
            "event_ts": (start + timedelta(seconds=i)).isoformat(),
            "amount": float(i),
            "txn_count": i % 50,
            "segment": "gold",
        }
        for i in range(TOTAL)
    ]
    bad: list[bytes] = [
        b"{not json",
        json.dumps({**good[0], "event_id": "evt-bad-type", "amount": "lots"}).encode(),
        json.dumps({**good[0], "event_id": "evt-no-consent", "customer_id": "c03"}).encode(),
    ]
    payloads = [json.dumps(g).encode() for g in good[:300]] + bad + [json.dumps(g).encode() for g in good[300:]]
    publish(names.subject, payloads)
    env = {
        **os.environ,
        "FALAJ_HOME": str(w.settings.home),
        "FALAJ_DATABASE_URL": w.settings.database_url,
        "FALAJ_TOKEN": w.tokens["svc"],
    }
    command = [
        sys.executable, "-m", "falaj.api.cli", "features", "stream", "customer_stats", "--tenant", "operator",
        "--source", "nats", "--stream", names.stream, "--subject", names.subject, "--durable", names.consumer,
        "--dead-letter", names.dead_subject, "--batch", "10",
    ]  # fmt: skip
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait("the first consumer to write some rows", lambda: _pushed(w).num_rows >= 100)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    written_before = _pushed(w).num_rows
    assert 100 <= written_before < TOTAL, "the consumer must be killed mid-stream"
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait("every row to be written and acknowledged", lambda: _pushed(w).num_rows >= TOTAL and acked_all(names))
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output
    rows = _pushed(w)
    ids = rows.column("event_id").to_pylist()
    assert len(ids) == TOTAL and set(ids) == {g["event_id"] for g in good}  # nothing lost, nothing twice
    dead = stored(names.dead_stream)
    reasons = {m.headers["Falaj-Dead-Letter-Reason"] for m in dead}
    assert len(dead) == 3
    assert any("malformed JSON" in r for r in reasons)
    assert any("'amount' must be float64" in r for r in reasons)
    assert any("no valid consent" in r for r in reasons)
    # The online store holds each customer's latest pushed row.
    latest = max((g for g in good if g["customer_id"] == "c05"), key=lambda g: g["event_ts"])
    answer = _online(w, [{"customer_id": "c05"}])["results"][0]
    assert answer["values"]["amount"] == latest["amount"]
    # Every batch was a governed, audited push.
    with w.plane.sessions() as s:
        from sqlalchemy import func, select

        from falaj.core.domain import Operation

        pushes = s.scalar(
            select(func.count())
            .select_from(Operation)
            .where(Operation.kind == "feature_view.push", Operation.outcome == "succeeded")
        )
    assert pushes is not None and pushes >= TOTAL // 10
