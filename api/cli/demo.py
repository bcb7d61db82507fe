"""`falaj demo`: the governed flow end to end, on the embedded default (SQLite, local store).

Every step is a real action through ``ControlPlane.execute``; nothing is simulated. The data is made
here (synthetic customers with data-subject ids), so nothing is downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from falaj.core import Action, ControlPlane, Result, Settings, TokenCredential
from falaj.core.audit.verifier import verify_export
from falaj.core.bootstrap import initialise
from falaj.core.keys import AuditSigner

TENANT = "gulf-bank"
PEOPLE = {
    "layla": ["ml-engineer"],
    "omar": ["data-steward"],
    "fatima": ["approver"],
    "yousef": ["approver"],
    "aisha": ["auditor", "platform-auditor"],
}


class Demo:
    def __init__(self, home: Path, console: Console) -> None:
        self.home = home
        self.console = console
        self.tokens: dict[str, str] = {}
        self.outcomes: Counter[str] = Counter()
        self.notes: list[tuple[str, str]] = []
        self.plane: ControlPlane

    def act(self, who: str, kind: str, payload: dict[str, Any], *, tenant: str = TENANT) -> Result:
        token = self.tokens[who]
        result = self.plane.execute(Action(kind, tenant, TokenCredential(token), payload))
        self.outcomes[result.outcome] += 1
        return result

    def expect(self, result: Result, outcome: str, what: str) -> Result:
        if result.outcome != outcome:
            raise RuntimeError(f"{what}: expected {outcome}, got {result.outcome}: {result.message()}")
        return result

    def note(self, step: str, detail: str) -> None:
        self.notes.append((step, detail))


def _customers(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, reproducible on purpose
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["customer_id", "age", "emirate", "monthly_income_aed", "tenure_months", "churned"])
    emirates = ["Abu Dhabi", "Dubai", "Sharjah", "Ajman", "Ras Al Khaimah", "Fujairah", "Umm Al Quwain"]
    for i in range(n):
        writer.writerow(
            [
                f"C{i:05d}",
                rng.randint(21, 70),
                rng.choice(emirates),
                rng.randint(6, 90) * 1000,
                rng.randint(1, 120),
                int(rng.random() < 0.2),
            ]
        )
    return out.getvalue().encode("utf-8")


def run_demo(home: Path | None, console: Console) -> int:
    started = time.perf_counter()
    settings_env = Settings.from_env()
    home = (home or settings_env.home / "demo").resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'falaj.db'}")
    demo = Demo(home, console)
    steps = [
        ("install: keys, schema, operator tenant", _install),
        ("people and roles", _people),
        ("backends in UAE regions", _backends),
        ("dataset and consent records", _data),
        ("model artifact, version, signature", _model),
        ("residency: personal data and Bahrain", _residency),
        ("erasure of a data subject", _erasure),
        ("policy test cases", _policy_cases),
        ("denials (RBAC, tenants, input)", _denials),
        ("a failing backend leaves nothing behind", _failure),
        ("train, sign, approve, serve (ONNX Runtime)", _lifecycle),
        ("audit: verify, export, offline check", _audit),
        ("compliance report: PDF and JSON, signed", _report),
        ("tamper with the log (on a copy)", _tamper),
    ]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("falaj demo", total=len(steps))
            for label, step in steps:
                progress.update(task, description=label)
                step(demo, settings)
                progress.advance(task)
            progress.update(task, description="done")
    except Exception as exc:
        console.print(f"[red]demo failed[/]: {exc}")
        return 1
    finally:
        if hasattr(demo, "plane"):
            demo.plane.close()
    _summary(demo, time.perf_counter() - started)
    return 0


def _install(demo: Demo, settings: Settings) -> None:
    boot = initialise(settings, tenant=TENANT, display_name="Gulf Bank PJSC", admin="admin")
    demo.tokens["admin"] = boot.token
    demo.plane = ControlPlane(settings, signer=AuditSigner.load(settings))
    demo.note("install", f"{settings.home} · audit key {boot.audit_key_id[:24]}…")


def _people(demo: Demo, settings: Settings) -> None:
    for name, roles in PEOPLE.items():
        demo.expect(demo.act("admin", "principal.create", {"name": name, "roles": roles}), "succeeded", name)
        issued = demo.expect(
            demo.act("admin", "token.issue", {"principal": name, "expires_in_days": 1}), "succeeded", name
        )
        assert issued.secret is not None
        demo.tokens[name] = issued.secret
    demo.expect(
        demo.act("admin", "principal.create", {"name": "retrain-bot", "kind": "service", "roles": ["service"]}),
        "succeeded",
        "service",
    )
    demo.note("people", ", ".join(f"{n} ({'/'.join(r)})" for n, r in PEOPLE.items()) + ", retrain-bot (service)")


def _backends(demo: Demo, settings: Settings) -> None:
    demo.expect(
        demo.act(
            "admin",
            "backend.register",
            {
                "name": "uae-store",
                "kind": "storage",
                "plugin": "local",
                "region": "me-central-1",
                "node_class": "cpu-smb",
            },
        ),
        "succeeded",
        "storage",
    )
    demo.expect(
        demo.act(
            "admin",
            "backend.register",
            {"name": "rate-card", "kind": "cost", "plugin": "rate-card", "region": "me-central-1"},
        ),
        "succeeded",
        "cost",
    )
    demo.expect(
        demo.act(
            "admin",
            "backend.register",
            {"name": "bahrain-store", "kind": "storage", "plugin": "local", "region": "me-south-1"},
        ),
        "succeeded",
        "bh",
    )
    demo.note("backends", "uae-store (local, AWS me-central-1), bahrain-store (AWS me-south-1), rate-card (cost)")


def _data(demo: Demo, settings: Settings) -> None:
    data = _customers(400)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    data_dir = settings.data_dir / TENANT  # the tenant's data folder: the control plane reads nothing else
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "customers.csv").write_bytes(data)
    demo.expect(
        demo.act(
            "omar",
            "dataset.register",
            {
                "name": "customers",
                "classification": "personal",
                "residency": "AE",
                "legal_basis": "consent",
                "uri": (data_dir / "customers.csv").as_uri(),
                "digest": digest,
                "subject_column": "customer_id",
                "schema": {
                    "customer_id": "string",
                    "age": "int",
                    "emirate": "string",
                    "monthly_income_aed": "int",
                    "tenure_months": "int",
                    "churned": "int",
                },
            },
        ),
        "succeeded",
        "dataset",
    )
    subjects = [f"C{i:05d}" for i in range(400)]
    for subject in subjects:
        demo.expect(
            demo.act(
                "omar",
                "consent.record",
                {
                    "subject_id": subject,
                    "purpose": "training",
                    "evidence": {"channel": "mobile-app", "form": "consent-v3"},
                },
            ),
            "succeeded",
            "consent",
        )
    withdrawn = subjects[::23]
    for subject in withdrawn:
        demo.expect(
            demo.act("omar", "consent.withdraw", {"subject_id": subject, "purpose": "training"}),
            "succeeded",
            "withdraw",
        )
    demo.note(
        "data",
        f"customers v1 (personal, AE, {digest[:19]}…), {len(subjects)} consents, {len(withdrawn)} withdrawn",
    )


def _model(demo: Demo, settings: Settings) -> None:
    import json

    from sqlalchemy import select

    from falaj.core.artifacts import put_folder
    from falaj.core.domain import Backend

    with demo.plane.sessions() as session:
        row = session.scalars(select(Backend).where(Backend.name == "uae-store")).one()
        store = demo.plane.backend_instance(TENANT, row)
    folder = settings.home / "churn-model"
    folder.mkdir()
    scorecard = {"format": "falaj-demo-scorecard/v1", "weights": {"tenure_months": -0.03, "age": 0.01}}
    (folder / "model.json").write_text(json.dumps(scorecard))
    (folder / "config.json").write_text(json.dumps({"inputs": ["age", "tenure_months"], "threshold": 0.5}))
    digest, _ = put_folder(store, TENANT, folder)
    demo.expect(
        demo.act("layla", "model.register", {"name": "churn", "description": "Retail churn"}), "succeeded", "model"
    )
    version = demo.expect(
        demo.act(
            "layla",
            "model_version.register",
            {"model": "churn", "storage_backend": "uae-store", "artifact_digest": digest, "metrics": {"auc": 0.81}},
        ),
        "succeeded",
        "version",
    )
    demo.expect(
        demo.act("layla", "model_alias.set", {"model": "churn", "alias": "candidate", "version": 1}),
        "succeeded",
        "alias",
    )
    key = demo.expect(
        demo.act("admin", "signing_key.create", {"key_name": "release", "owner": "ML release team"}), "succeeded", "key"
    )
    demo.expect(
        demo.act("layla", "artifact.sign", {"model": "churn", "version": 1, "key_id": key.data["key_id"]}),
        "succeeded",
        "sign",
    )
    demo.note(
        "model",
        f"churn v{version.data['version']} (artifact {digest[:19]}…), alias candidate, signed with "
        f"{key.data['key_id'][:22]}… (sigstore bundle v0.3, in-toto statement)",
    )
    out = settings.exports_dir / TENANT / "churn-v1"
    export = demo.expect(
        demo.act("aisha", "model_version.export", {"model": "churn", "version": 1, "destination": "churn-v1"}),
        "succeeded",
        "export",
    )
    sig = export.data["signatures"][0]
    cli = Path(sys.executable).parent / "model_signing"
    proc = subprocess.run(
        [
            str(cli) if cli.exists() else "model_signing",
            "verify",
            "key",
            "model",
            "--signature",
            sig["bundle"],
            "--public_key",
            sig["public_key"],
        ],
        cwd=out,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"upstream model_signing verify failed: {proc.stdout}{proc.stderr}")
    demo.note(
        "signature",
        f"exported to {out.name}/ and checked by upstream `model_signing verify key`: {proc.stdout.strip() or 'ok'}",
    )


def _residency(demo: Demo, settings: Settings) -> None:
    data = _customers(40, seed=11)
    path = settings.data_dir / TENANT / "branch-customers.csv"
    path.write_bytes(data)
    payload = {
        "name": "branch-customers",
        "classification": "personal",
        "residency": "AE",
        "legal_basis": "consent",
        "uri": path.as_uri(),
        "subject_column": "customer_id",
        "storage_backend": "bahrain-store",
    }
    denied = demo.expect(demo.act("omar", "dataset.register", payload), "denied", "residency")
    reason = next(c.reason for c in denied.decision.failures if c.check == "residency")
    demo.note("denied", f"personal data stored in Bahrain: {reason}")
    demo.expect(
        demo.act(
            "omar",
            "transfer_basis.record",
            {"destination_country": "BH", "basis": "contract", "evidence": {"contract": "DPA-2026-017"}},
        ),
        "succeeded",
        "basis",
    )
    demo.expect(demo.act("omar", "dataset.register", payload), "succeeded", "residency with basis")
    demo.note("residency", "after a contract basis was recorded (PDPL Art. 23) the same registration is allowed")


def _erasure(demo: Demo, settings: Settings) -> None:
    request = demo.expect(demo.act("omar", "erasure.request", {"subject_id": "C00007"}), "succeeded", "erasure")
    done = demo.expect(
        demo.act("omar", "erasure.execute", {"request_id": request.data["request_id"]}), "succeeded", "erasure execute"
    )
    rows = sum(d["rows_removed"] for d in done.data["datasets"])
    demo.note(
        "erasure",
        f"subject C00007 erased from {len(done.data['datasets'])} dataset(s) ({rows} row), verified (PDPL Art. 15)",
    )


def _policy_cases(demo: Demo, settings: Settings) -> None:
    from falaj.core.policy.bundle import default_policy_dir
    from falaj.core.policy.testing import run_all

    results = run_all(demo.plane.bundle, default_policy_dir() / "tests")
    passed = sum(r.passed for r in results)
    if passed != len(results):
        raise RuntimeError("policy cases failed: " + "; ".join(r.name for r in results if not r.passed))
    demo.note(
        "policy",
        f"falaj policy test: {passed} passed, {len(results) - passed} failed (bundle {demo.plane.bundle.digest[:19]}…)",
    )


def _denials(demo: Demo, settings: Settings) -> None:
    shown = []
    r = demo.expect(demo.act("layla", "principal.create", {"name": "intern", "roles": ["admin"]}), "denied", "rbac")
    shown.append(("layla creates an admin", r.decision.failures[0].reason))
    r = demo.expect(
        demo.act("fatima", "dataset.register", {"name": "x", "classification": "public", "residency": "AE"}),
        "denied",
        "rbac",
    )
    shown.append(("approver registers data", r.decision.failures[0].reason))
    demo.expect(
        demo.act("admin", "tenant.create", {"slug": "dubai-clinic", "display_name": "Dubai Clinic"}),
        "succeeded",
        "tenant",
    )
    r = demo.expect(demo.act("layla", "model.register", {"name": "peek"}, tenant="dubai-clinic"), "denied", "x")
    shown.append(("layla acts in another tenant", r.decision.failures[0].reason))
    r = demo.expect(
        demo.act("omar", "dataset.register", {"name": "y", "classification": "top-secret", "residency": "AE"}),
        "denied",
        "payload",
    )
    shown.append(("malformed payload", r.decision.failures[0].reason))
    r = demo.expect(demo.act("layla", "model.teleport", {}), "denied", "kind")
    shown.append(("unknown action kind", r.decision.failures[0].reason))
    prefix = demo.tokens["aisha"].split("_")[1]
    demo.expect(demo.act("admin", "token.revoke", {"prefix": prefix}), "succeeded", "revoke")
    r = demo.expect(demo.act("aisha", "audit.verify", {}), "denied", "revoked")
    shown.append(("revoked token", r.decision.failures[0].reason))
    issued = demo.expect(
        demo.act("admin", "token.issue", {"principal": "aisha", "expires_in_days": 1}), "succeeded", "reissue"
    )
    assert issued.secret is not None
    demo.tokens["aisha"] = issued.secret
    for what, reason in shown:
        demo.note("denied", f"{what}: {reason}")


def _failure(demo: Demo, settings: Settings) -> None:
    r = demo.expect(
        demo.act(
            "admin",
            "backend.register",
            {
                "name": "broken-store",
                "kind": "storage",
                "plugin": "local",
                "region": "me-central-1",
                "settings": {"root": 42},
            },
        ),
        "failed",
        "failure",
    )
    demo.note("failed", f"backend.register broken-store: {r.error} (no backend row written)")


def _audit(demo: Demo, settings: Settings) -> None:
    report = demo.plane.audit.verify(demo.plane.engine)
    if not report.ok:
        raise RuntimeError(f"audit chain broken: {report.problem}")
    out = settings.exports_dir / TENANT / "audit"
    demo.expect(demo.act("aisha", "audit.export", {"destination": "audit"}), "succeeded", "export")
    key = settings.keys_dir / "audit-ed25519.pub.pem"
    proc = subprocess.run(
        [sys.executable, str(out / "verify.py"), str(out), "--public-key", str(key)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"offline verification failed: {proc.stdout}{proc.stderr}")
    demo.note("audit", f"{report.events} events, {report.checkpoints_verified} signed checkpoints verified")
    demo.note("export", f"{out} · offline: {proc.stdout.strip()}")


def _lifecycle(demo: Demo, settings: Settings) -> None:
    """Data with consent → training in its own process → ONNX → signed → two approvals → served over V2."""
    import importlib.util
    import time

    missing = [m for m in ("torch", "onnxruntime", "onnxscript", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        demo.note("lifecycle", f"skipped: needs {', '.join(missing)} (pip install -e '.[ml]')")
        return
    import httpx
    from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped]

    from falaj.core.domain import Backend, Deployment

    backends: list[dict[str, Any]] = [
        {
            "name": "uae-cpu",
            "kind": "compute",
            "plugin": "local",
            "region": "me-central-1",
            "settings": {"max_threads": 2},
        },
        {"name": "uae-ort", "kind": "serving", "plugin": "onnxruntime", "region": "me-central-1"},
        {"name": "eu-ort", "kind": "serving", "plugin": "onnxruntime", "region": "eu-west-1"},
    ]
    for backend in backends:
        demo.expect(demo.act("admin", "backend.register", backend), "succeeded", str(backend["name"]))
    # A real public dataset that scikit-learn ships (no download), with patient ids, measurement times and
    # consent added: the measurements feed a feature view, the diagnoses are the labels.
    data = load_breast_cancer()
    columns = [f"f{i}" for i in range(data.data.shape[1])]
    measured = "2026-03-01T08:00:00+00:00"
    lines = ["pid,event_timestamp," + ",".join(columns)]
    labels = ["pid,event_timestamp,malignant"]
    for i, (x, y) in enumerate(zip(data.data, data.target, strict=True)):
        lines.append(f"P{i:04d},{measured}," + ",".join(f"{v:.6g}" for v in x))
        labels.append(f"P{i:04d},2026-03-02T08:00:00+00:00,{int(y == 0)}")
    folder = settings.data_dir / TENANT
    (folder / "measurements.csv").write_text("\n".join(lines) + "\n")
    (folder / "diagnoses.csv").write_text("\n".join(labels) + "\n")
    for name in ("measurements", "diagnoses"):
        dataset = {
            "name": name,
            "classification": "personal",
            "residency": "AE",
            "legal_basis": "consent",
            "uri": (folder / f"{name}.csv").as_uri(),
            "subject_column": "pid",
        }
        demo.expect(demo.act("omar", "dataset.register", dataset), "succeeded", name)
    withdrawn = {f"P{i:04d}" for i in range(0, len(data.target), 9)}
    for i in range(len(data.target)):
        for purpose in ("training", "feature-serving"):
            demo.expect(
                demo.act("omar", "consent.record", {"subject_id": f"P{i:04d}", "purpose": purpose}), "succeeded", "c"
            )
    for pid in sorted(withdrawn):
        for purpose in ("training", "feature-serving"):
            demo.expect(demo.act("omar", "consent.withdraw", {"subject_id": pid, "purpose": purpose}), "succeeded", "w")

    # The feature store: an entity whose key is a data subject, a versioned view with expectations, a service.
    for backend in (
        {"name": "uae-offline", "kind": "feature_store", "plugin": "parquet-offline", "region": "me-central-1"},
        {"name": "uae-online", "kind": "feature_store", "plugin": "sqlite-online", "region": "me-central-1"},
    ):
        demo.expect(demo.act("admin", "backend.register", backend), "succeeded", str(backend["name"]))
    patient = {"name": "patient", "join_keys": [{"name": "pid", "dtype": "string"}], "subject": True}
    demo.expect(demo.act("layla", "entity.apply", patient), "succeeded", "entity")
    view = {
        "name": "tumour_measurements",
        "entities": ["patient"],
        "features": [{"name": c, "dtype": "float64"} for c in columns],
        "source_dataset": "measurements",
        "offline_store": "uae-offline",
        "online_store": "uae-online",
        "expectations": [{"type": "not_null", "column": c} for c in columns]
        + [{"type": "range", "column": "f0", "min": 0, "max": 100}],
    }
    demo.expect(demo.act("layla", "feature_view.apply", view), "succeeded", "feature view")
    service = {"name": "triage-features", "features": ["tumour_measurements"]}
    demo.expect(demo.act("layla", "feature_service.apply", service), "succeeded", "feature service")
    materialized = demo.expect(
        demo.act("layla", "feature_view.materialize", {"name": "tumour_measurements", "mode": "full"}),
        "succeeded",
        "materialize",
    )
    demo.note(
        "features",
        f"view tumour_measurements v1 ({len(columns)} features, {len(view['expectations'])} expectations met): "
        f"{materialized.data['entities_written']} patients online, "
        f"{materialized.data['excluded_subjects']} without consent for feature-serving left out",
    )

    runs = []
    for seed, hidden in ((1, [32]), (2, [64, 16])):
        spec = {
            "trainer": "tabular_classifier",
            "target": "malignant",
            "subject_column": "pid",
            "features": columns,
            "epochs": 15,
            "seed": seed,
            "hidden": hidden,
            "threads": 1,
        }
        body = {
            "name": f"triage-{seed}",
            "backend": "uae-cpu",
            "features": {"feature_service": "triage-features", "entity_dataset": "diagnoses"},
            "spec": spec,
        }
        runs.append(demo.expect(demo.act("layla", "training.submit", body), "succeeded", "train"))
    demo.note(
        "train",
        f"2 runs in their own processes on {len(data.target) - len(withdrawn)} consented rows, a point-in-time "
        f"join of the diagnoses with the feature service; {runs[0].data['excluded_rows']} withdrawn patients "
        "excluded before the trainer saw the data",
    )
    demo.expect(demo.act("layla", "model.register", {"name": "triage"}), "succeeded", "model")
    with demo.plane.sessions() as session:
        compute = demo.plane.backend_instance(TENANT, session.query(Backend).filter_by(name="uae-cpu").one())
    versions = []
    deadline = time.monotonic() + 180
    for run in runs:
        while compute.status(run.data["handle"]).state not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise RuntimeError("training did not finish in 3 minutes")
            time.sleep(0.2)
        body = {"model": "triage", "storage_backend": "uae-store", "training_run_id": run.data["run_id"]}
        versions.append(demo.expect(demo.act("layla", "model_version.register", body), "succeeded", "register"))
    key = demo.expect(
        demo.act("admin", "signing_key.create", {"key_name": "clinical", "owner": "ML release"}), "succeeded", "k"
    )
    for v in versions:
        body = {"model": "triage", "version": v.data["version"], "key_id": key.data["key_id"]}
        demo.expect(demo.act("layla", "artifact.sign", body), "succeeded", "sign")
    accuracy = ", ".join(f"v{v.data['version']} accuracy {v.data['metrics']['accuracy']:.3f}" for v in versions)
    demo.note("models", f"exported to ONNX (checked against torch), signed, registered with lineage: {accuracy}")

    traffic = [{"model": "triage", "version": 1, "weight": 80}, {"model": "triage", "version": 2, "weight": 20}]
    request = {
        "name": "triage-prod",
        "environment": "production",
        "runtime_backend": "uae-ort",
        "traffic": traffic,
        "human_review_contact": "triage-review@gulf-bank.ae",
    }
    pending = demo.expect(demo.act("layla", "deployment.request", request), "pending", "request")
    rid = pending.data["approval_request_id"]
    # Even holding the approver role, the requester never approves her own request.
    demo.expect(demo.act("admin", "role.assign", {"principal": "layla", "role": "approver"}), "succeeded", "role")
    own = demo.act("layla", "approval.vote", {"request_id": rid, "vote": "approve", "comment": "mine"})
    demo.expect(own, "denied", "own approval")
    demo.note("denied", f"the requester approves her own deployment: {own.decision.failures[0].reason}")
    demo.expect(
        demo.act("fatima", "approval.vote", {"request_id": rid, "vote": "approve", "comment": "AUC fine"}),
        "succeeded",
        "a1",
    )
    demo.expect(
        demo.act("yousef", "approval.vote", {"request_id": rid, "vote": "approve", "comment": "DPIA done"}),
        "succeeded",
        "a2",
    )
    with demo.plane.sessions() as session:
        dep = session.query(Deployment).filter_by(name="triage-prod").one()
        endpoint, status = dep.endpoint, dep.status
        runtime_row = session.query(Backend).filter_by(name="uae-ort").one()
    if status != "live" or not endpoint:
        raise RuntimeError(f"the approved deployment is {status}, not live")
    runtime = demo.plane.backend_instance(TENANT, runtime_row)
    try:
        # Serving reads each patient's features from the online store (a governed read: consent is checked
        # per patient at read time), then asks the model over the Open Inference Protocol.
        patients = [f"P{i:04d}" for i in range(200)]
        online = demo.plane.features.read(
            TokenCredential(demo.tokens["layla"]),
            TENANT,
            entities=[{"pid": p} for p in patients],
            purpose="feature-serving",
            feature_service="triage-features",
        )
        served_rows = [r for r in online["results"] if r["status"]["tumour_measurements"]["status"] == "present"]
        withheld = len(patients) - len(served_rows)
        with httpx.Client(base_url=endpoint, timeout=30) as client:
            for r in served_rows:
                vector = [r["values"][c] for c in columns]
                infer: dict[str, Any] = {
                    "inputs": [{"name": "input", "shape": [1, len(vector)], "datatype": "FP32", "data": vector}],
                    "parameters": {"route_key": r["entity"]["pid"]},
                }
                answer = client.post("/v2/models/triage-prod/infer", json=infer)
                if answer.status_code != 200:
                    raise RuntimeError(f"V2 inference failed: {answer.text}")
            stats = client.get("/v2/falaj/stats").json()
        split = ", ".join(f"v{v['version']}: {v['requests']}" for v in stats["variants"])
        demo.note(
            "serve",
            f"live on ONNX Runtime in me-central-1 after 2 approvals; features read from the online store for "
            f"{len(served_rows)} patients ({withheld} withheld: no consent for feature-serving), "
            f"{len(served_rows)} V2 requests, sticky 80/20 split → {split}",
        )
        outside = {**request, "name": "triage-eu", "runtime_backend": "eu-ort", "environment": "dev"}
        denied = demo.expect(demo.act("layla", "deployment.request", outside), "denied", "outside the UAE")
        demo.note("denied", f"deploy to Ireland (eu-west-1): {denied.decision.failures[0].reason}")
        served = sorted((settings.home / "serving" / TENANT / "triage-prod").iterdir())[0]
        weights = served / "model.onnx.data"
        weights.write_bytes(b"\x00" * 8 + weights.read_bytes()[8:])
        try:
            runtime.deploy(
                {
                    "name": "tampered",
                    "tenant": TENANT,
                    "environment": "dev",
                    "sticky_salt": "00",
                    "settings": {},
                    "variants": [
                        {
                            "model": "triage",
                            "version": 1,
                            "weight": 100,
                            "artifact_path": str(served),
                            "manifest": _manifest_of(demo, versions[0].data["artifact_digest"]),
                            "signatures": _signatures_of(demo),
                            "trusted_keys": {key.data["key_id"]: key.data["public_key_pem"]},
                        }
                    ],
                }
            )
        except Exception as exc:
            why = next((line.strip() for line in str(exc).splitlines() if "model.onnx.data" in line), str(exc))
            demo.note("tamper", f"weights changed on the serving node: the runtime refuses to load them ({why[:110]})")
        else:
            raise RuntimeError("the runtime loaded a tampered artifact")
    finally:
        runtime.undeploy("triage-prod")


def _manifest_of(demo: Demo, digest: str) -> dict[str, Any]:
    from falaj.core.artifacts import read_manifest
    from falaj.core.domain import Backend

    with demo.plane.sessions() as session:
        row = session.query(Backend).filter_by(name="uae-store").one()
    return read_manifest(demo.plane.backend_instance(TENANT, row), TENANT, digest)


def _signatures_of(demo: Demo) -> list[dict[str, Any]]:
    from falaj.core.domain import Model, ModelSignature, ModelVersion

    with demo.plane.sessions() as session:
        rows = (
            session.query(ModelSignature)
            .join(ModelVersion, ModelVersion.id == ModelSignature.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .filter(Model.name == "triage", ModelVersion.version == 1)
            .all()
        )
        return [{"key_id": r.key_id, "bundle": r.bundle} for r in rows]


def _report(demo: Demo, settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from falaj.core.domain import ComplianceReportRecord
    from falaj.core.reports import verify_report

    now = datetime.now(UTC)
    period = {
        "period_start": (now - timedelta(days=1)).isoformat(),
        "period_end": (now + timedelta(minutes=1)).isoformat(),
    }
    key = (settings.keys_dir / "audit-ed25519.pub.pem").read_bytes()
    written = []
    for fmt in ("pdf", "json"):
        r = demo.expect(demo.act("aisha", "report.export", {**period, "format": fmt}), "succeeded", "report")
        with demo.plane.sessions() as session:
            row = session.get(ComplianceReportRecord, r.data["report_id"])
            assert row is not None
            path = Path(row.path)
        verify_report(path.read_bytes(), r.data["signature"], key)  # raises if one byte differs
        written.append(f"{fmt.upper()} {path.stat().st_size:,} bytes")
    demo.note(
        "report", f"compliance report for the last day: {', '.join(written)}; signatures verified · {path.parent}"
    )


def _tamper(demo: Demo, settings: Settings) -> None:
    copy = settings.home / "tampered"
    copy.mkdir()
    con = sqlite3.connect(settings.home / "falaj.db")
    con.execute(f"VACUUM INTO '{copy / 'falaj.db'}'")
    con.close()
    tampered = sqlite3.connect(copy / "falaj.db")
    seq = tampered.execute("SELECT seq FROM audit_events WHERE action = 'model_version.register'").fetchone()[0]
    tampered.execute("UPDATE audit_events SET principal = 'gulf-bank/someone-else' WHERE seq = ?", (seq,))
    tampered.commit()
    tampered.close()
    key_pem = (settings.keys_dir / "audit-ed25519.pub.pem").read_bytes()
    shutil.copytree(settings.home / "audit", copy / "audit")
    shutil.copytree(settings.keys_dir, copy / "keys")
    other = ControlPlane(
        Settings(home=copy, database_url=f"sqlite:///{copy / 'falaj.db'}"),
        signer=AuditSigner.load(Settings(home=copy, database_url="sqlite://")),
    )
    try:
        report = other.audit.verify(other.engine)
    finally:
        other.close()
    if report.ok or report.first_bad_seq != seq:
        raise RuntimeError("tampering was not detected")
    demo.note("tamper", f"edited event {seq} on a copy → detected: first bad seq {report.first_bad_seq}")
    # The export holds its own copy: verify it still passes (it was taken before the edit).
    assert verify_export(settings.exports_dir / TENANT / "audit", key_pem).ok


def _summary(demo: Demo, elapsed: float) -> None:
    table = Table(title="Falaj demo: every step went through ControlPlane.execute", show_lines=False)
    table.add_column("step", style="bold")
    table.add_column("what happened")
    for step, detail in demo.notes:
        colour = {"denied": "yellow", "failed": "red", "tamper": "magenta"}.get(step, "green")
        table.add_row(f"[{colour}]{step}[/]", detail)
    demo.console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(demo.outcomes.items()))
    demo.console.print(f"Actions: {counts} · state in {demo.home} · {elapsed:.1f} s")
