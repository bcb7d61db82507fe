"""Policies on every action, end to end: residency, consent, erasure, signatures, approvals, reload."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from falaj.core import Action, PrincipalRef
from falaj.core.artifacts import put_folder
from falaj.core.domain import (
    ApprovalRequest,
    AuditEvent,
    Backend,
    Dataset,
    DatasetSubject,
    Deployment,
    ErasureRequest,
    ModelVersion,
    Principal,
)
from tests.conftest import RecordingCompute, RecordingServing


def write_customers(path: Path, n: int = 40) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cid", "age", "churned"])
        for i in range(n):
            w.writerow([f"C{i:03d}", 20 + i, i % 2])
    return path.as_uri()


def data_file(w, name: str) -> Path:
    folder = w.settings.data_dir / w.tenant
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.csv"


def register_dataset(w, tmp_path: Path, name="customers", classification="personal", n=40, basis="consent"):
    uri = write_customers(data_file(w, name), n)
    r = w.act(
        "dataset.register",
        {
            "name": name,
            "classification": classification,
            "residency": "AE",
            "legal_basis": basis,
            "uri": uri,
            "subject_column": "cid",
        },
        as_="dpo",
    )
    assert r.ok, r.message()
    assert r.data["subjects"] == n
    return uri


def consent_all(w, n=40, withdraw=(), purpose="training"):
    for i in range(n):
        assert w.act("consent.record", {"subject_id": f"C{i:03d}", "purpose": purpose}, as_="dpo").ok
    for i in withdraw:
        assert w.act("consent.withdraw", {"subject_id": f"C{i:03d}", "purpose": purpose}, as_="dpo").ok


def failure(result, check):
    found = [c for c in result.decision.checks if c.check == check]
    assert found, result.decision.as_dict()
    return found[0]


# -- residency ------------------------------------------------------------------------------------------
def test_backend_in_an_unknown_region_is_denied_naming_it(lifecycle):
    r = lifecycle.act("backend.register", {"name": "x", "kind": "storage", "plugin": "local", "region": "mars-1"})
    assert r.outcome == "denied" and "unknown region 'mars-1'" in r.message()


def test_personal_data_leaves_the_uae_only_with_a_transfer_basis(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path)
    consent_all(w)
    job = {"name": "run-bh", "backend": "gpu-bh", "inputs": ["customers"], "purpose": "training"}
    denied = w.act("training.submit", job, as_="eng")
    assert denied.outcome == "denied"
    reason = failure(denied, "residency").reason
    assert "me-south-1 (BH)" in reason and "PDPL Art. 22" in reason
    assert RecordingCompute.jobs == []

    basis = w.act(
        "transfer_basis.record",
        {
            "destination_country": "BH",
            "basis": "contract",
            "dataset": "customers",
            "evidence": {"contract": "DPA-2026-17"},
        },
        as_="dpo",
    )
    assert basis.ok, basis.message()
    allowed = w.act("training.submit", job, as_="eng")
    assert allowed.ok, allowed.message()
    assert failure(allowed, "residency").outcome == "pass"
    assert len(RecordingCompute.jobs) == 1


def test_adequacy_refused_under_the_federal_rule_set(lifecycle):
    r = lifecycle.act("transfer_basis.record", {"destination_country": "IE", "basis": "adequacy"}, as_="dpo")
    assert r.outcome == "failed" and "not an adequate country under uae-federal" in r.error


def test_health_data_stays_in_the_uae_unless_an_exception_is_recorded(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path, name="patients", classification="health")
    consent_all(w)
    assert w.act("transfer_basis.record", {"destination_country": "BH", "basis": "contract"}, as_="dpo").ok
    job = {"name": "run", "backend": "gpu-bh", "inputs": ["patients"]}
    denied = w.act("training.submit", job, as_="eng")
    assert denied.outcome == "denied" and "Federal Law 2/2019 Art. 13" in failure(denied, "residency").reason
    exception = w.act(
        "residency_exception.record",
        {"destination_country": "BH", "dataset": "patients", "exception": "MoHAP 51/2021: research"},
        as_="dpo",
    )
    assert exception.ok, exception.message()
    assert w.act("training.submit", job, as_="eng").ok
    assert w.act("training.submit", dict(job, backend="gpu-ae", name="run-ae"), as_="eng").ok


def test_a_record_for_one_source_never_lets_another_source_through(lifecycle, tmp_path):
    """A health exception for Bahrain on one dataset must not carry personal data of another to Bahrain."""
    w = lifecycle
    register_dataset(w, tmp_path, name="customers")
    register_dataset(w, tmp_path, name="patients", classification="health")
    consent_all(w)
    assert w.act(
        "residency_exception.record",
        {"destination_country": "BH", "dataset": "patients", "exception": "MoHAP 51/2021: research"},
        as_="dpo",
    ).ok
    mixed = w.act(
        "training.submit", {"name": "mix", "backend": "gpu-bh", "inputs": ["customers", "patients"]}, as_="eng"
    )
    assert mixed.outcome == "denied"
    assert "personal data from customers v1" in failure(mixed, "residency").reason
    assert w.act(
        "transfer_basis.record", {"destination_country": "BH", "basis": "contract", "dataset": "customers"}, as_="dpo"
    ).ok
    assert w.act(
        "training.submit", {"name": "mix", "backend": "gpu-bh", "inputs": ["customers", "patients"]}, as_="eng"
    ).ok


def test_derived_model_inherits_residency_through_lineage(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path)
    consent_all(w)
    run = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    digest, _, _ = signed_version(w, tmp_path, name="lineaged", sign=False)
    mv = w.act(
        "model_version.register",
        {
            "model": "lineaged",
            "storage_backend": "store-ae",
            "artifact_digest": digest,
            "training_run_id": run.data["run_id"],
        },
        as_="eng",
    )
    assert mv.ok and mv.data["version"] == 2
    key = w.act("signing_key.create", {"key_name": "k", "owner": "o"})
    assert w.act("artifact.sign", {"model": "lineaged", "version": 2, "key_id": key.data["key_id"]}, as_="eng").ok
    r = w.act(
        "deployment.request",
        {
            "name": "abroad",
            "environment": "dev",
            "runtime_backend": "serve-qa",
            "traffic": [{"model": "lineaged", "version": 2, "weight": 100}],
        },
        as_="eng",
    )
    assert r.outcome == "denied"
    assert "personal data from customers v1 (residency AE)" in failure(r, "residency").reason


# -- consent --------------------------------------------------------------------------------------------------
def test_training_gets_only_consented_subjects(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path, n=40)
    consent_all(w, n=40, withdraw=range(0, 40, 5))  # 8 withdrawn
    assert w.act("consent.record", {"subject_id": "C001", "purpose": "marketing"}, as_="dpo").ok
    r = w.act("training.submit", {"name": "r1", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert r.ok, r.message()
    assert "32 of 40" in failure(r, "consent").reason
    assert r.data["excluded_rows"] == 8
    job = RecordingCompute.jobs[-1]
    view = Path(job["inputs"][0]["uri"].removeprefix("file://"))
    ids = [row["cid"] for row in csv.DictReader(view.open())]
    assert len(ids) == 32 and not any(int(i[1:]) % 5 == 0 for i in ids)
    # The original is untouched; the backend only ever saw the view.
    assert job["inputs"][0]["uri"] != data_file(w, "customers").as_uri()
    # Withdrawal stops future use: a later run sees one fewer subject.
    assert w.act("consent.withdraw", {"subject_id": "C001", "purpose": "training"}, as_="dpo").ok
    r2 = w.act("training.submit", {"name": "r2", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert r2.data["excluded_rows"] == 9


def test_no_consent_at_all_denies_and_unknown_purpose_names_it(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path, n=5)
    r = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert r.outcome == "denied" and "no data subject has valid consent" in r.message()
    r = w.act(
        "training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"], "purpose": "resale"}, as_="eng"
    )
    assert r.outcome == "denied" and "unknown purpose 'resale'" in r.message()
    r = w.act("consent.record", {"subject_id": "C000", "purpose": "resale"}, as_="dpo")
    assert r.outcome == "denied" and "unknown purpose 'resale'" in r.message()
    r = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["ghost"]}, as_="eng")
    assert r.outcome == "denied" and "unknown dataset 'ghost'" in r.message()


def test_contract_basis_data_is_not_consent_filtered(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path, n=6, basis="contract")
    r = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert r.ok and r.data["excluded_rows"] == 0
    assert RecordingCompute.jobs[-1]["inputs"][0]["consent_filtered"] is False


def test_dataset_files_outside_the_tenant_folder_are_refused(lifecycle, tmp_path):
    w = lifecycle
    elsewhere = tmp_path / "other-tenant.csv"
    write_customers(elsewhere, 3)
    r = w.act(
        "dataset.register",
        {
            "name": "x",
            "classification": "personal",
            "residency": "AE",
            "legal_basis": "consent",
            "uri": elsewhere.as_uri(),
            "subject_column": "cid",
        },
        as_="dpo",
    )
    assert r.outcome == "failed" and "must be under" in r.error
    sneaky = (w.settings.data_dir / "operator" / ".." / "acme" / "x.csv").as_posix()
    r = w.act(
        "dataset.register",
        {"name": "x", "classification": "public", "residency": "AE", "uri": sneaky, "subject_column": "cid"},
        as_="dpo",
    )
    assert r.outcome == "failed" and "must be under" in r.error


def test_a_dataset_file_changed_after_registration_is_not_read(lifecycle, tmp_path):
    w = lifecycle
    uri = write_customers(data_file(w, "customers"), 5)
    from falaj.core.datasets import file_digest

    digest = file_digest(data_file(w, "customers"))
    assert w.act(
        "dataset.register",
        {
            "name": "customers",
            "classification": "personal",
            "residency": "AE",
            "legal_basis": "consent",
            "uri": uri,
            "subject_column": "cid",
            "digest": digest,
        },
        as_="dpo",
    ).ok
    consent_all(w, n=5)
    with data_file(w, "customers").open("a") as fh:
        fh.write("C999,99,1\n")
    r = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert r.outcome == "failed" and "does not match its registered digest" in r.error
    assert RecordingCompute.jobs == []


# -- erasure ------------------------------------------------------------------------------------------------
def test_erasure_removes_the_subject_verifies_and_flags_models(lifecycle, tmp_path):
    w = lifecycle
    register_dataset(w, tmp_path, n=10)
    consent_all(w, n=10)
    run = w.act("training.submit", {"name": "r", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng")
    assert run.ok
    with w.plane.sessions() as s:
        store_row = s.scalar(select(Backend).where(Backend.name == "store-ae"))
    store = w.plane.backend_instance("operator", store_row)
    info = store.put(io.BytesIO(b"weights"), tenant="operator")
    assert w.act("model.register", {"name": "churn"}, as_="eng").ok
    mv = w.act(
        "model_version.register",
        {
            "model": "churn",
            "storage_backend": "store-ae",
            "artifact_digest": info.digest,
            "training_run_id": run.data["run_id"],
        },
        as_="eng",
    )
    assert mv.ok, mv.message()

    req = w.act("erasure.request", {"subject_id": "C003"}, as_="dpo")
    assert req.ok
    dup = w.act("erasure.request", {"subject_id": "C003"}, as_="dpo")
    assert dup.outcome == "failed" and dup.error_type == "conflict"
    done = w.act("erasure.execute", {"request_id": req.data["request_id"]}, as_="dpo")
    assert done.ok, done.message()
    assert done.data["verified"] is True and done.data["datasets"][0]["rows_removed"] == 1
    assert "C003" not in data_file(w, "customers").read_text()
    view = Path(RecordingCompute.jobs[-1]["inputs"][0]["uri"].removeprefix("file://"))
    assert "C003" not in view.read_text() and "C004" in view.read_text()
    assert done.data["training_views"] == [{"view": run.data["run_id"], "rows_removed": 1}]
    with w.plane.sessions() as s:
        assert s.scalar(select(DatasetSubject).where(DatasetSubject.subject_id == "C003")) is None
        version = s.get(ModelVersion, mv.data["model_version_id"])
        assert version.flags and version.flags[0]["type"] == "trained-on-erased-subject"
        er = s.get(ErasureRequest, req.data["request_id"])
        assert er.status == "completed" and er.subject_id.startswith("sha256:")
        ds = s.scalar(select(Dataset))
        assert ds.digest is not None
    # The audit log holds no raw subject id of the erased subject beyond what the requests named.
    again = w.act("erasure.execute", {"request_id": req.data["request_id"]}, as_="dpo")
    assert again.outcome == "failed" and "already completed" in again.error


# -- signatures, deployments, approvals ------------------------------------------------------------------------
def signed_version(w, tmp_path, name="churn", sign=True):
    folder = tmp_path / f"artifact-{name}"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(os.urandom(2048))
    (folder / "model.onnx.data").write_bytes(os.urandom(8192))
    (folder / "config.json").write_text('{"classes": 2}')
    with w.plane.sessions() as s:
        store_row = s.scalar(select(Backend).where(Backend.name == "store-ae"))
    store = w.plane.backend_instance("operator", store_row)
    digest, _ = put_folder(store, "operator", folder)
    assert w.act("model.register", {"name": name}, as_="eng").ok
    assert w.act(
        "model_version.register", {"model": name, "storage_backend": "store-ae", "artifact_digest": digest}, as_="eng"
    ).ok
    key = None
    if sign:
        key = w.act("signing_key.create", {"key_name": "release", "owner": "ML release team"})
        assert key.ok, key.message()
        signed = w.act("artifact.sign", {"model": name, "version": 1, "key_id": key.data["key_id"]}, as_="eng")
        assert signed.ok, signed.message()
    return digest, key.data["key_id"] if key else None, store


def deploy_request(w, name="churn-prod", env="production", runtime="serve-ae", model="churn"):
    return w.act(
        "deployment.request",
        {
            "name": name,
            "environment": env,
            "runtime_backend": runtime,
            "traffic": [{"model": model, "version": 1, "weight": 100}],
        },
        as_="eng",
    )


def test_unsigned_models_are_not_deployed(lifecycle, tmp_path):
    signed_version(lifecycle, tmp_path, sign=False)
    r = deploy_request(lifecycle)
    assert r.outcome == "denied" and "is not signed" in failure(r, "signature").reason


def test_production_needs_two_approvers_never_the_requester(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    pending = deploy_request(w)
    assert pending.outcome == "pending", pending.message()
    assert "needs 2 approval(s)" in pending.message()
    request_id = pending.data["approval_request_id"]
    with w.plane.sessions() as s:
        assert s.scalar(select(Deployment.status)) == "pending-approval"

    # The requester, even holding the approver role, can never approve their own request.
    assert w.act("role.assign", {"principal": "eng", "role": "approver"}).ok
    own = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "mine"}, as_="eng")
    assert own.outcome == "denied" and "their own request" in own.message()
    # A comment is required.
    blank = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "  "}, as_="ap1")
    assert blank.outcome == "denied" and "comment" in blank.message()

    first = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "metrics ok"}, as_="ap1")
    assert first.ok and first.data["transition"] is None
    twice = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "again"}, as_="ap1")
    assert twice.outcome == "denied" and "votes once" in twice.message()
    assert RecordingServing.deployed == []

    second = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "DPIA done"}, as_="ap2")
    assert second.ok and second.data["transition"] == "approved"
    # The quorum sent the rollout through execute again, as the requester, re-checking every policy.
    assert len(RecordingServing.deployed) == 1
    served = RecordingServing.deployed[0]
    assert served["variants"][0]["signatures"], "the runtime receives the signatures to verify at load"
    with w.plane.sessions() as s:
        dep = s.scalar(select(Deployment))
        assert dep.status == "live" and dep.endpoint.endswith("/churn-prod")
        rollout = s.scalars(select(AuditEvent).where(AuditEvent.action == "deployment.rollout")).all()
        assert [e.outcome for e in rollout] == ["succeeded"]
        assert rollout[0].principal == "operator/eng"
        checks = json.loads(rollout[0].reasons)
        assert {c["check"] for c in checks} >= {"rbac", "residency", "signature", "approval"}
    late = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "late"}, as_="ap3")
    assert late.outcome == "denied" and "already approved" in late.message()


def test_one_rejection_ends_the_request(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    request_id = deploy_request(w).data["approval_request_id"]
    r = w.act("approval.vote", {"request_id": request_id, "vote": "reject", "comment": "bias audit missing"}, as_="ap1")
    assert r.ok and r.data["transition"] == "rejected"
    rollout = w.act("deployment.rollout", {"name": "churn-prod"}, as_="eng")
    assert rollout.outcome == "denied" and "rejected" in rollout.message()


def test_dev_needs_no_approval_and_a_non_uae_runtime_is_denied(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    r = deploy_request(w, name="churn-dev", env="dev")
    assert r.ok, r.message()
    assert len(RecordingServing.deployed) == 1
    # This version was registered without its training run: nothing shows its data may leave the UAE.
    qa = deploy_request(w, name="churn-qa", env="dev", runtime="serve-qa")
    assert qa.outcome == "denied" and "no recorded lineage" in failure(qa, "residency").reason


def test_revoked_key_blocks_new_rollouts_and_flags_live_deployments(lifecycle, tmp_path):
    w = lifecycle
    _, key_id, _ = signed_version(w, tmp_path)
    assert deploy_request(w, name="live-dev", env="dev").ok
    revoked = w.act("signing_key.revoke", {"key_id": key_id})
    assert revoked.ok and revoked.data["flagged_deployments"] == ["live-dev"]
    with w.plane.sessions() as s:
        dep = s.scalar(select(Deployment).where(Deployment.name == "live-dev"))
        assert dep.flags[0]["type"] == "signing-key-revoked"
    blocked = deploy_request(w, name="new-dev", env="dev")
    assert blocked.outcome == "denied" and "revoked" in failure(blocked, "signature").reason


def test_tampered_artifact_fails_signature_verification(lifecycle, tmp_path):
    w = lifecycle
    digest, _, store = signed_version(w, tmp_path)
    manifest = json.loads(store.open(digest, tenant="operator").read())
    weights = manifest["files"]["model.onnx.data"]["digest"]
    blob = Path(store.root) / "operator" / "sha256" / weights[7:9] / weights[7:]
    blob.write_bytes(b"tampered" + blob.read_bytes()[8:])
    w.plane._signature_cache.clear()
    r = deploy_request(w, name="churn-dev", env="dev")
    assert r.outcome == "denied" and "invalid" in failure(r, "signature").reason
    assert RecordingServing.deployed == []


def test_export_verifies_with_the_upstream_model_signing_cli(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    r = w.act("model_version.export", {"model": "churn", "version": 1, "destination": "churn-v1"}, as_="aud")
    assert r.ok, r.message()
    out = Path(r.data["destination"])
    assert out == (w.settings.exports_dir / "operator" / "churn-v1").resolve()
    sig = r.data["signatures"][0]
    cli = shutil.which("model_signing") or str(Path(sys.executable).parent / "model_signing")
    ok = subprocess.run(
        [cli, "verify", "key", "model", "--signature", sig["bundle"], "--public_key", sig["public_key"]],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (out / "model" / "config.json").write_text('{"classes": 3}')
    bad = subprocess.run(
        [cli, "verify", "key", "model", "--signature", sig["bundle"], "--public_key", sig["public_key"]],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1


def test_offline_signature_verified_at_registration(lifecycle, tmp_path):
    from falaj.core import signing

    w = lifecycle
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    private, public = signing.generate_key(b"pw")
    bundle = signing.sign_folder(folder, private, b"pw")
    with w.plane.sessions() as s:
        store = w.plane.backend_instance("operator", s.scalar(select(Backend).where(Backend.name == "store-ae")))
    digest, _ = put_folder(store, "operator", folder)
    assert w.act("model.register", {"name": "ext"}, as_="eng").ok
    payload = {"model": "ext", "storage_backend": "store-ae", "artifact_digest": digest, "signature_bundle": bundle}
    unknown = w.act("model_version.register", payload, as_="eng")
    assert unknown.outcome == "failed" and "not a registered signing key" in unknown.error
    kid = signing.key_id(public)
    assert w.act("signing_key.register", {"key_id": kid, "owner": "vendor", "public_key_pem": public.decode()}).ok
    ok = w.act("model_version.register", payload, as_="eng")
    assert ok.ok and ok.data["signed_by"] == kid
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"another graph")
    digest2, _ = put_folder(store, "operator", other)
    mismatch = w.act("model_version.register", dict(payload, artifact_digest=digest2), as_="eng")
    assert mismatch.outcome == "failed" and "does not verify" in mismatch.error


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_approvers_at_the_same_instant_make_exactly_one_transition(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    request_id = deploy_request(w).data["approval_request_id"]
    barrier = threading.Barrier(2)
    results = {}

    def vote(who):
        barrier.wait()
        results[who] = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": who}, as_=who)

    threads = [threading.Thread(target=vote, args=(who,)) for who in ("ap1", "ap2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results.values()), {k: r.message() for k, r in results.items()}
    transitions = [r.data["transition"] for r in results.values()]
    assert transitions.count("approved") == 1 and transitions.count(None) == 1
    assert len(RecordingServing.deployed) == 1
    with w.plane.sessions() as s:
        assert s.scalar(select(ApprovalRequest.status)) == "approved"


def test_expired_requests_refuse_votes(lifecycle, tmp_path):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    w = lifecycle
    signed_version(w, tmp_path)
    request_id = deploy_request(w).data["approval_request_id"]
    with w.plane.sessions() as s, s.begin():
        s.execute(update(ApprovalRequest).values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    r = w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "ok"}, as_="ap1")
    assert r.outcome == "denied" and "expired" in r.message()
    rollout = w.act("deployment.rollout", {"name": "churn-prod"}, as_="eng")
    assert rollout.outcome == "denied" and "expired" in rollout.message()


def test_automated_decisions_need_a_human_review_contact_and_accept_objections(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path)
    assert deploy_request(w, name="scoring", env="dev").ok
    no_contact = w.act("inference_policy.set", {"deployment": "scoring", "automated_decisions": True}, as_="eng")
    assert no_contact.outcome == "failed" and "Art. 18" in no_contact.error
    early = w.act("objection.record", {"deployment": "scoring", "subject_id": "C001", "reason": "x"}, as_="dpo")
    assert early.outcome == "failed" and "does not make automated decisions" in early.error
    ok = w.act(
        "inference_policy.set",
        {"deployment": "scoring", "automated_decisions": True, "human_review_contact": "review@bank.ae"},
        as_="eng",
    )
    assert ok.ok
    objection = w.act(
        "objection.record",
        {"deployment": "scoring", "subject_id": "C001", "reason": "I want a person to decide"},
        as_="dpo",
    )
    assert objection.ok and objection.data["human_review_contact"] == "review@bank.ae"
    # Erasing the subject keeps the objection (the record that a decision was contested) but not their id.
    request = w.act("erasure.request", {"subject_id": "C001"}, as_="dpo")
    done = w.act("erasure.execute", {"request_id": request.data["request_id"]}, as_="dpo")
    assert done.ok and done.data["objections_pseudonymised"] == 1
    from falaj.core.datasets import subject_hash
    from falaj.core.domain import Objection

    with w.plane.sessions() as s:
        assert s.scalars(select(Objection.subject_id)).all() == [subject_hash("C001")]


def test_rollout_reruns_as_the_requester_principal(lifecycle, tmp_path):
    """A disabled requester means the approved rollout is denied when it runs: policies are re-checked."""
    w = lifecycle
    signed_version(w, tmp_path)
    request_id = deploy_request(w).data["approval_request_id"]
    assert w.act("principal.disable", {"name": "eng"}).ok
    assert w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "a"}, as_="ap1").ok
    assert w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "b"}, as_="ap2").ok
    assert RecordingServing.deployed == []
    with w.plane.sessions() as s:
        denied = s.scalars(select(AuditEvent).where(AuditEvent.action == "deployment.rollout")).all()
        assert [e.outcome for e in denied] == ["denied"]
        eng = s.scalar(select(Principal).where(Principal.name == "eng"))
    again = w.plane.execute(Action("deployment.rollout", "operator", PrincipalRef(eng.id), {"name": "churn-prod"}))
    assert again.outcome == "denied" and "disabled" in again.message()


def test_sigstore_keyless_needs_configuration(lifecycle, tmp_path):
    w = lifecycle
    signed_version(w, tmp_path, sign=False)
    r = w.act(
        "artifact.sign", {"model": "churn", "version": 1, "key_id": "sigstore", "identity_token": "x" * 40}, as_="eng"
    )
    assert r.outcome == "failed" and "keyless signing is not configured" in r.error


def test_sigstore_keyless_signing_fails_cleanly_without_network(tmp_path, database_url):
    """Configured keyless signing reaches model-signing's Sigstore signer; with no network here it fails,
    says why, and writes no signature."""
    from falaj.core.domain import ModelSignature
    from falaj.core.plugin import create_plugin_manager
    from tests.conftest import make_world
    from tests.test_policy_bundle import bundle_copy

    folder = bundle_copy(tmp_path)
    (folder / "signers.toml").write_text(
        '[default]\ntrust = "registered"\nrequire_signature = true\n'
        'keyless = [{ identity = "release@bank.ae", issuer = "https://accounts.google.com" }]\n'
    )
    from falaj.core.policy import load_bundle

    bundle = load_bundle(folder)
    assert bundle.signers.keyless == frozenset({("release@bank.ae", "https://accounts.google.com")})
    w = make_world(tmp_path, database_url, registry=create_plugin_manager(load_entrypoints=False), bundle=bundle)
    try:
        w.principal("eng", ["ml-engineer"])
        assert w.act(
            "backend.register", {"name": "store-ae", "kind": "storage", "plugin": "local", "region": "me-central-1"}
        ).ok
        signed_version(w, tmp_path, sign=False)
        no_token = w.act("artifact.sign", {"model": "churn", "version": 1, "key_id": "sigstore"}, as_="eng")
        assert no_token.outcome == "failed" and "needs an identity_token" in no_token.error
        token = "eyJhbGciOiJSUzI1NiJ9." + "e30" * 10 + ".c2ln"
        r = w.act(
            "artifact.sign", {"model": "churn", "version": 1, "key_id": "sigstore", "identity_token": token}, as_="eng"
        )
        assert r.outcome == "failed" and "Sigstore keyless signing failed" in r.error
        with w.plane.sessions() as s:
            assert s.scalar(select(ModelSignature)) is None
            events = s.scalars(select(AuditEvent).where(AuditEvent.action == "artifact.sign")).all()
            assert token not in "".join(e.reasons for e in events)
    finally:
        w.plane.close()


def test_keyless_entries_are_validated(tmp_path):
    from falaj.core.policy import PolicyError, load_bundle
    from tests.test_policy_bundle import bundle_copy

    folder = bundle_copy(tmp_path)
    (folder / "signers.toml").write_text('[default]\nkeyless = [{ identity = "x@y" }]\n')
    with pytest.raises(PolicyError, match=re.escape("issuer = 'https://...'")):
        load_bundle(folder)
