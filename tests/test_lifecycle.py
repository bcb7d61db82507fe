"""The whole journey on a CPU node, through the control plane with the builtin plugins and real processes:
data in with consent, a torch model trained in its own process on the consented rows only, exported to ONNX,
registered from the run (with its metrics and lineage), signed, approved by two people, rolled out on the
ONNX Runtime data plane, and answering Open Inference Protocol v2 requests like the trained model.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from falaj.core.domain import Backend, Deployment, LineageEdge, ModelVersion

MISSING = [
    m
    for m in ("torch", "onnx", "onnxruntime", "onnxscript", "sklearn")
    if __import__("importlib").util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the model lifecycle needs {', '.join(MISSING)}")


@pytest.fixture
def journey(tmp_path: Path, database_url: str) -> Iterator[Any]:
    from falaj.core.plugin import create_plugin_manager
    from tests.conftest import make_world

    w = make_world(tmp_path, database_url, registry=create_plugin_manager(load_entrypoints=False))
    try:
        for name, roles in (
            ("eng", ["ml-engineer"]),
            ("dpo", ["data-steward"]),
            ("ap1", ["approver"]),
            ("ap2", ["approver"]),
        ):
            w.principal(name, roles)
        backends = [
            {"name": "store", "kind": "storage", "plugin": "local", "region": "me-central-1"},
            {"name": "cpu", "kind": "compute", "plugin": "local", "region": "me-central-1"},
            {
                "name": "ort",
                "kind": "serving",
                "plugin": "onnxruntime",
                "region": "me-central-1",
                "settings": {"max_batch_size": 16, "max_queue_delay_ms": 2},
            },
        ]
        for body in backends:
            r = w.act("backend.register", body)
            assert r.ok, r.message()
        yield w
    finally:
        with w.plane.sessions() as s:
            row = s.scalar(select(Backend).where(Backend.name == "ort"))
        if row is not None:
            runtime = w.plane.backend_instance("operator", row)
            with contextlib.suppress(Exception):
                runtime.undeploy("churn-prod")
        w.plane.close()


def _dataset(w: Any) -> tuple[list[dict[str, str]], set[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    folder = w.settings.data_dir / "operator"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "patients.csv"
    columns = [f"f{i}" for i in range(data.data.shape[1])]
    rows = []
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["pid", *columns, "malignant"])
        for i, (x, y) in enumerate(zip(data.data, data.target, strict=True)):
            row = [f"P{i:04d}", *(f"{v:.6g}" for v in x), str(int(y == 0))]
            out.writerow(row)
            rows.append(dict(zip(["pid", *columns, "malignant"], row, strict=True)))
    body = {
        "name": "patients",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "consent",
        "uri": path.as_uri(),
        "subject_column": "pid",
    }
    assert w.act("dataset.register", body, as_="dpo").ok
    withdrawn = {f"P{i:04d}" for i in range(0, len(rows), 10)}
    for row in rows:
        assert w.act("consent.record", {"subject_id": row["pid"], "purpose": "training"}, as_="dpo").ok
    for pid in sorted(withdrawn):
        assert w.act("consent.withdraw", {"subject_id": pid, "purpose": "training"}, as_="dpo").ok
    return rows, withdrawn


def test_train_sign_approve_serve(journey: Any) -> None:
    w = journey
    rows, withdrawn = _dataset(w)
    spec = {"trainer": "tabular_classifier", "target": "malignant", "subject_column": "pid", "epochs": 15, "seed": 3}
    run = w.act(
        "training.submit", {"name": "triage", "backend": "cpu", "inputs": ["patients"], "spec": spec}, as_="eng"
    )
    assert run.ok, run.message()
    assert run.data["excluded_rows"] == len(withdrawn)
    run_id = run.data["run_id"]

    # Registering before the run ends is refused; once it succeeded, the run's artifact becomes the version.
    assert w.act("model.register", {"name": "triage"}, as_="eng").ok
    deadline = time.monotonic() + 120
    while True:
        register = {"model": "triage", "storage_backend": "store"}
        reg = w.act("model_version.register", {**register, "training_run_id": run_id}, as_="eng")
        if reg.ok or reg.error_type != "conflict":
            break
        assert time.monotonic() < deadline, reg.message()
        time.sleep(0.5)
    assert reg.ok, reg.message()
    assert reg.data["metrics"]["accuracy"] > 0.9
    assert reg.data["metrics"]["train_rows"] + reg.data["metrics"]["validation_rows"] == len(rows) - len(withdrawn)
    with w.plane.sessions() as s:
        edges = {(e.source_type, e.target_type) for e in s.scalars(select(LineageEdge))}
        assert {("dataset", "training_run"), ("training_run", "model_version")} <= edges
        assert s.scalar(select(ModelVersion.training_run_id)) == run_id

    key = w.act("signing_key.create", {"key_name": "release", "owner": "clinical ML release"})
    assert key.ok
    assert w.act("artifact.sign", {"model": "triage", "version": 1, "key_id": key.data["key_id"]}, as_="eng").ok

    traffic = [{"model": "triage", "version": 1, "weight": 100}]
    body = {
        "name": "churn-prod",
        "environment": "production",
        "runtime_backend": "ort",
        "traffic": traffic,
        "human_review_contact": "triage-review@clinic.ae",
    }
    pending = w.act("deployment.request", body, as_="eng")
    assert pending.outcome == "pending", pending.message()
    request_id = pending.data["approval_request_id"]
    own = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "mine"}, as_="eng")
    assert own.outcome == "denied"
    assert w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "AUC fine"}, as_="ap1").ok
    done = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "DPIA done"}, as_="ap2")
    assert done.ok and done.data["transition"] == "approved"
    with w.plane.sessions() as s:
        dep = s.scalar(select(Deployment))
        assert dep.status == "live", dep.status
        endpoint = dep.endpoint

    # The V2 endpoint answers like the trained model (same probabilities as ONNX Runtime in this process).
    import numpy as np
    import onnxruntime as ort

    with w.plane.sessions() as s:
        mv = s.scalar(select(ModelVersion))
        folder = next((w.settings.home / "serving" / "operator" / "churn-prod").iterdir())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    features = [c for c in rows[0] if c.startswith("f")]
    sample = np.array([[float(r[c]) for c in features] for r in rows[:8]], dtype=np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: sample})[0]
    request = {
        "inputs": [
            {
                "name": session.get_inputs()[0].name,
                "shape": list(sample.shape),
                "datatype": "FP32",
                "data": sample.flatten().tolist(),
            }
        ]
    }
    with httpx.Client(base_url=endpoint, timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200
        answer = client.post("/v2/models/churn-prod/infer", json=request)
        assert answer.status_code == 200, answer.text
        out = answer.json()["outputs"][0]
        got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
        assert np.allclose(got, expected, atol=1e-5)
        bad = client.post("/v2/models/churn-prod/infer", json={"inputs": [{**request["inputs"][0], "shape": [8, 3]}]})
        assert bad.status_code == 400 and "error" in bad.json()
    assert mv.artifact_digest.startswith("sha256:")

    # Promotion: a canary of a second version, with approval; an unsigned version is never promoted.
    stored = [{**v, "shadow": False} for v in traffic]
    reg2 = w.act("model_version.register", {**register, "training_run_id": run_id}, as_="eng")
    assert reg2.ok and reg2.data["version"] == 2
    canary = {
        "name": "churn-prod",
        "traffic": [{"model": "triage", "version": 1, "weight": 50}, {"model": "triage", "version": 2, "weight": 50}],
    }
    unsigned = w.act("deployment.promote", canary, as_="eng")
    assert unsigned.outcome == "denied" and "not signed" in unsigned.message(), unsigned.message()
    assert w.act("artifact.sign", {"model": "triage", "version": 2, "key_id": key.data["key_id"]}, as_="eng").ok
    waiting = w.act("deployment.promote", canary, as_="eng")
    assert waiting.outcome == "pending", waiting.message()
    promo = waiting.data["approval_request_id"]
    assert w.act("approval.vote", {"request_id": promo, "vote": "approve", "comment": "canary"}, as_="ap1").ok
    assert w.act("approval.vote", {"request_id": promo, "vote": "approve", "comment": "ok"}, as_="ap2").ok
    with w.plane.sessions() as s:
        dep = s.scalar(select(Deployment))
        assert dep.status == "live" and [v["version"] for v in dep.traffic] == [1, 2]
        assert dep.traffic_history == [stored]
        endpoint = dep.endpoint
    with httpx.Client(base_url=endpoint, timeout=30) as client:
        served = set()
        for i in range(40):
            one = {
                "inputs": [{**request["inputs"][0], "shape": [1, sample.shape[1]], "data": sample[i % 8].tolist()}],
                "parameters": {"route_key": f"k{i}"},
            }
            r = client.post("/v2/models/churn-prod/infer", json=one)
            assert r.status_code == 200, r.text
            served.add(str(r.json()["model_version"]))
        assert served == {"1", "2"}
    # The same approval does not promote twice; rollback needs no approval and restores the earlier split.
    again_promote = w.act("deployment.promote", canary, as_="eng")
    assert again_promote.outcome == "pending"
    back = w.act("deployment.rollback", {"name": "churn-prod"}, as_="eng")
    assert back.ok, back.message()
    with w.plane.sessions() as s:
        dep = s.scalar(select(Deployment))
        assert dep.traffic == stored and dep.traffic_history == []
    nothing_left = w.act("deployment.rollback", {"name": "churn-prod"}, as_="eng")
    assert nothing_left.outcome == "failed" and nothing_left.error_type == "conflict"

    # A stored file changed after signing: the next rollout is refused before anything is loaded.
    with w.plane.sessions() as s:
        store_row = s.scalar(select(Backend).where(Backend.name == "store"))
    store = w.plane.backend_instance("operator", store_row)
    from falaj.core.artifacts import read_manifest

    weights = read_manifest(store, "operator", mv.artifact_digest)["files"]["model.onnx.data"]["digest"]
    blob = store.root / "operator" / "sha256" / weights[7:9] / weights[7:]
    raw = bytearray(blob.read_bytes())
    raw[-20] ^= 0xFF
    blob.write_bytes(bytes(raw))
    again = w.act("deployment.request", {**body, "name": "second", "environment": "dev"}, as_="eng")
    assert again.outcome == "denied" and "no valid signature" in again.message(), again.message()
    # The data plane checks again on its side: a changed file in the folder it serves from stops a restart.
    runtime_row = w.plane.backend_instance("operator", ort_row(w))
    served = next((w.settings.home / "serving" / "operator" / "churn-prod").iterdir())
    (served / "model.onnx.data").write_bytes(b"tampered" + (served / "model.onnx.data").read_bytes()[8:])
    runtime_row.undeploy("churn-prod")
    spec = {
        "name": "churn-prod",
        "tenant": "operator",
        "environment": "production",
        "variants": [
            {
                **traffic[0],
                "artifact_path": str(served),
                "manifest": read_manifest(store, "operator", mv.artifact_digest),
                "signatures": [{"key_id": key.data["key_id"], "bundle": mv.signature_bundle}],
                "trusted_keys": {key.data["key_id"]: key.data["public_key_pem"]},
            }
        ],
        "sticky_salt": "00",
        "settings": {},
    }
    with pytest.raises(Exception, match=r"model\.onnx\.data"):
        runtime_row.deploy(spec)


def ort_row(w: Any) -> Backend:
    with w.plane.sessions() as s:
        row = s.scalar(select(Backend).where(Backend.name == "ort"))
    assert row is not None
    return row
