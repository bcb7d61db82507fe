"""Compliance reports: built from real governed actions, in JSON, CSV and PDF, signed, one tenant at a time."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pypdf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from falaj.core.artifacts import put_folder
from falaj.core.domain import Backend, Operation
from falaj.core.errors import NotFoundError, ValidationError
from falaj.core.keys import AuditSigner
from falaj.core.reports import (
    EXTENSIONS,
    FORMATS,
    MEDIA_TYPES,
    ComplianceReport,
    build_report,
    json_schema,
    json_schema_text,
    render,
    render_csv_zip,
    render_json,
    render_pdf,
    sign_report,
    verify_report,
)
from falaj.core.reports.model import CONTROLS
from falaj.core.reports.render import SECTION_TITLES, pdf_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "schemas" / "compliance-report.schema.json"
ARABIC = "بنك الخليج الأول"


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Flow:
    """What the governed flow did, to compare the report with."""

    world: Any
    start: datetime
    end: datetime
    digest: str
    key_id: str
    request_id: str
    run_id: str
    denials: list[Any]


def write_subjects(w: Any, name: str, n: int) -> str:
    folder = w.settings.data_dir / w.tenant
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["cid", "age"])
        for i in range(n):
            out.writerow([f"C{i:03d}", 30 + i])
    return path.as_uri()


def ok(result: Any) -> Any:
    assert result.ok, result.message()
    return result


def run_flow(w: Any, tmp_path: Path) -> Flow:
    """Every kind of evidence the report gathers, produced through ControlPlane.execute."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    uri = write_subjects(w, "customers", 10)
    ok(
        w.act(
            "dataset.register",
            {
                "name": "customers",
                "classification": "personal",
                "residency": "AE",
                "legal_basis": "consent",
                "uri": uri,
                "subject_column": "cid",
                "storage_backend": "store-ae",
            },
            as_="dpo",
        )
    )
    for i in range(10):
        ok(w.act("consent.record", {"subject_id": f"C{i:03d}", "purpose": "training"}, as_="dpo"))
    for i in range(3):
        ok(w.act("consent.record", {"subject_id": f"C{i:03d}", "purpose": "analytics"}, as_="dpo"))
    for i in (1, 2):
        ok(w.act("consent.withdraw", {"subject_id": f"C{i:03d}", "purpose": "training"}, as_="dpo"))
    run = ok(w.act("training.submit", {"name": "churn-train", "backend": "gpu-ae", "inputs": ["customers"]}, as_="eng"))
    ok(
        w.act(
            "transfer_basis.record",
            {
                "destination_country": "BH",
                "basis": "contract",
                "dataset": "customers",
                "evidence": {"contract": "DPA-2026-07"},
            },
            as_="dpo",
        )
    )

    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(os.urandom(1024))
    (folder / "config.json").write_text('{"classes": 2}')
    with w.plane.sessions() as s:
        store_row = s.scalar(select(Backend).where(Backend.name == "store-ae"))
    digest, _ = put_folder(w.plane.backend_instance("operator", store_row), "operator", folder)
    ok(w.act("model.register", {"name": "churn"}, as_="eng"))
    ok(
        w.act(
            "model_version.register",
            {
                "model": "churn",
                "storage_backend": "store-ae",
                "artifact_digest": digest,
                "training_run_id": run.data["run_id"],
            },
            as_="eng",
        )
    )
    key = ok(w.act("signing_key.create", {"key_name": "release", "owner": "ML release team"}))
    ok(w.act("artifact.sign", {"model": "churn", "version": 1, "key_id": key.data["key_id"]}, as_="eng"))

    pending = w.act(
        "deployment.request",
        {
            "name": "churn-prod",
            "environment": "production",
            "runtime_backend": "serve-ae",
            "traffic": [{"model": "churn", "version": 1, "weight": 100}],
        },
        as_="eng",
    )
    assert pending.outcome == "pending", pending.message()
    request_id = pending.data["approval_request_id"]
    ok(w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "metrics ok"}, as_="ap1"))
    ok(w.act("approval.vote", {"request_id": request_id, "vote": "approve", "comment": "DPIA done"}, as_="ap2"))
    ok(
        w.act(
            "inference_policy.set",
            {"deployment": "churn-prod", "automated_decisions": True, "human_review_contact": "review@bank.ae"},
            as_="eng",
        )
    )
    ok(
        w.act(
            "objection.record",
            {"deployment": "churn-prod", "subject_id": "C005", "reason": "I want a person to decide"},
            as_="dpo",
        )
    )

    erasure = ok(w.act("erasure.request", {"subject_id": "C003"}, as_="dpo"))
    ok(w.act("erasure.execute", {"request_id": erasure.data["request_id"]}, as_="dpo"))

    denials = [
        w.act(
            "backend.register", {"name": "x", "kind": "storage", "plugin": "local", "region": "me-central-1"}, as_="aud"
        ),
        w.act("dataset.retire", {"name": "customers"}, as_="ap1"),
    ]
    assert all(d.outcome == "denied" for d in denials)
    return Flow(
        world=w,
        start=start,
        end=datetime.now(UTC) + timedelta(seconds=1),
        digest=digest,
        key_id=key.data["key_id"],
        request_id=request_id,
        run_id=run.data["run_id"],
        denials=denials,
    )


@pytest.fixture
def flow(lifecycle: Any, tmp_path: Path) -> Flow:
    return run_flow(lifecycle, tmp_path)


@pytest.fixture
def report(flow: Flow) -> ComplianceReport:
    return build_report(flow.world.plane, "operator", flow.start, flow.end)


# -- content ------------------------------------------------------------------------------------------------------
def test_report_holds_what_was_done(flow: Flow, report: ComplianceReport) -> None:
    w = flow.world
    h = report.header
    assert (h.tenant, h.tenant_name, h.ruleset) == ("operator", "Operator", "uae-federal")
    assert h.schema_version == "falaj-compliance-report/v1" and re.fullmatch(r"[0-9a-f]{32}", h.report_id)
    assert h.period_start == flow.start and h.period_end == flow.end

    [ds] = report.processing_inventory
    assert (ds.name, ds.version, ds.classification, ds.residency, ds.legal_basis) == (
        "customers",
        1,
        "personal",
        "AE",
        "consent",
    )
    assert (ds.storage_backend, ds.storage_region, ds.status, ds.retired_at) == (
        "store-ae",
        "me-central-1",
        "active",
        None,
    )
    assert ds.consented_purposes == ["analytics", "training"]
    assert ds.subjects_indexed == 9  # C003 was erased
    assert ds.registered_by == "operator/dpo"

    locations = report.processing_locations
    assert {b.name: (b.region, b.country) for b in locations.backends} == {
        "store-ae": ("me-central-1", "AE"),
        "gpu-ae": ("me-central-1", "AE"),
        "gpu-bh": ("me-south-1", "BH"),
        "serve-ae": ("uaenorth", "AE"),
        "serve-qa": ("me-central1", "QA"),
    }
    [run] = locations.training_runs
    assert (run.run_id, run.backend, run.country, run.inputs, run.requested_by) == (
        flow.run_id,
        "gpu-ae",
        "AE",
        ["customers"],
        "operator/eng",
    )
    [dep_location] = locations.deployments
    assert (dep_location.name, dep_location.region, dep_location.country, dep_location.status) == (
        "churn-prod",
        "uaenorth",
        "AE",
        "live",
    )

    [basis] = report.cross_border_transfers.transfer_bases
    assert (basis.destination_country, basis.basis, basis.dataset, basis.recorded_by) == (
        "BH",
        "contract",
        "customers v1",
        "operator/dpo",
    )
    assert "Art. 23" in basis.article and basis.valid_at_period_end
    assert basis.evidence == {"contract": "DPA-2026-07"}
    assert report.cross_border_transfers.residency_exceptions == []

    counts = {(c.dataset, c.purpose): c for c in report.consent.purposes}
    training = counts[(None, "training")]
    # Ten granted, two withdrawn, and C003's records deleted by the erasure.
    assert (training.records, training.granted, training.withdrawn, training.withdrawals_honoured) == (9, 7, 2, 2)
    assert training.granted_in_period == 9 and training.purpose_description
    analytics = counts[(None, "analytics")]
    assert (analytics.records, analytics.granted, analytics.withdrawn) == (3, 3, 0)
    in_dataset = counts[("customers", "training")]
    assert (in_dataset.dataset_version, in_dataset.records, in_dataset.granted) == (1, 9, 7)
    assert report.consent.withdrawal_actions_in_period == 2
    assert report.consent.objections_count == 1
    [objection] = report.consent.objections
    assert objection.subject_hash == sha("C005") and objection.deployment == "churn-prod"

    [erasure] = report.erasure
    assert erasure.subject_hash == sha("C003") and erasure.status == "completed" and erasure.verified is True
    assert erasure.datasets == ["customers v1"] and erasure.rows_removed == 1
    assert erasure.training_views == 1 and erasure.flagged_model_versions == 1
    assert erasure.requested_by == "operator/dpo" and erasure.completed_at is not None

    [mv] = report.models
    assert (mv.model, mv.version, mv.artifact_digest) == ("churn", 1, flow.digest)
    assert mv.signer_key_ids == [flow.key_id] and mv.signed_by == ["operator/eng"]
    assert mv.registered_by == "operator/eng" and mv.flags == ["trained-on-erased-subject"]
    assert mv.training_run_id == flow.run_id

    [dep] = report.deployments
    assert (dep.name, dep.environment, dep.status, dep.runtime_backend) == (
        "churn-prod",
        "production",
        "live",
        "serve-ae",
    )
    assert dep.automated_decisions and dep.human_review_contact == "review@bank.ae"
    assert dep.traffic == ["churn v1 100%"] and dep.requested_by == "operator/eng"
    [approval] = dep.approvals
    assert (approval.request_id, approval.status, approval.quorum) == (flow.request_id, "approved", 2)
    assert [(v.approver, v.decision, v.comment) for v in approval.votes] == [
        ("operator/ap1", "approve", "metrics ok"),
        ("operator/ap2", "approve", "DPIA done"),
    ]
    assert approval.decided_at is not None and all(flow.start <= v.at < flow.end for v in approval.votes)

    digests = {b.digest: b for b in report.policy_bundles}
    assert w.plane.bundle.digest in digests
    assert digests[w.plane.bundle.digest].decisions_in_period > 0

    denied = report.denied_actions
    with w.plane.sessions() as s:
        stored = s.scalar(
            select(func.count())
            .select_from(Operation)
            .where(Operation.tenant == "operator", Operation.verdict == "deny", Operation.created_at >= flow.start)
        )
    assert denied.count == len(denied.rows) == stored == 2
    assert sum(k.count for k in denied.by_kind) == denied.count
    assert {k.kind: k.count for k in denied.by_kind} == {"backend.register": 1, "dataset.retire": 1}
    by_seq = {row.audit_seq: row for row in denied.rows}
    for result in flow.denials:
        row = by_seq[result.audit_seq]
        first = result.decision.failures[0]
        assert (row.principal, row.kind, row.check, row.reason) == (
            result.principal,
            result.kind,
            first.check,
            first.reason,
        )
        assert row.reason and row.check == "rbac"
    assert by_seq[flow.denials[0].audit_seq].principal == "operator/aud"

    audit = report.audit
    assert audit.verification.ok and audit.verification.problem is None and audit.verification.events > 0
    assert audit.latest_checkpoint is not None and audit.latest_checkpoint.key_id == w.plane.signer.key_id
    assert audit.audit_key_id == w.plane.signer.key_id
    assert audit.tenant_events_in_period >= 30
    assert audit.first_seq_in_period is not None and audit.last_seq_in_period is not None

    assert len(report.controls) == len(CONTROLS) == 19
    fields = set(ComplianceReport.model_fields)
    assert all(c.evidence_section in fields for c in report.controls)
    erasure_control = next(c for c in report.controls if c.control == "Erasure")
    assert erasure_control.evidence_section == "erasure" and "PDPL Art. 15" in erasure_control.articles[0]

    # Never a raw data-subject id, anywhere in the report.
    assert not re.search(r"C00\d", render_json(report).decode("utf-8"))


def test_period_filters_rows_and_arguments_are_checked(flow: Flow) -> None:
    plane = flow.world.plane
    before = build_report(plane, "operator", flow.start - timedelta(days=30), flow.start - timedelta(days=29))
    assert before.processing_inventory == [] and before.models == [] and before.deployments == []
    assert before.erasure == [] and before.consent.purposes == [] and before.denied_actions.count == 0
    assert before.processing_locations.training_runs == [] and before.audit.tenant_events_in_period == 0
    assert before.policy_bundles == [] and before.processing_locations.backends == []  # none existed yet
    assert before.audit.verification.ok and before.controls
    # A period starting after everything happened still names the bundle in force at its start.
    after = build_report(plane, "operator", flow.end + timedelta(days=1), flow.end + timedelta(days=2))
    assert [b.digest for b in after.policy_bundles] == [plane.bundle.digest]
    assert after.policy_bundles[0].decisions_in_period == 0 and after.denied_actions.count == 0
    assert [d.name for d in after.processing_inventory] == ["customers"] and after.erasure == []

    with pytest.raises(NotFoundError):
        build_report(plane, "nobody", flow.start, flow.end)
    with pytest.raises(ValidationError):
        build_report(plane, "operator", flow.end, flow.start)
    with pytest.raises(ValidationError):
        build_report(plane, "operator", flow.start, flow.start)
    with pytest.raises(ValidationError):
        build_report(plane, "operator", flow.start.replace(tzinfo=None), flow.end)
    with pytest.raises(ValidationError):
        build_report(plane, "operator", flow.start, flow.end, report_id="../x")
    named = build_report(plane, "operator", flow.start, flow.end, report_id="ab" * 16)
    assert named.header.report_id == "ab" * 16


# -- formats --------------------------------------------------------------------------------------------------------
def test_json_is_canonical_and_valid_against_the_published_schema(report: ComplianceReport) -> None:
    data = render_json(report)
    parsed = json.loads(data)
    assert data == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert parsed["header"]["period_start"].endswith("Z")
    published = json.loads(SCHEMA_FILE.read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(published)
    jsonschema.Draft202012Validator(published).validate(parsed)
    assert ComplianceReport.model_validate_json(data) == report
    # extra="forbid" is published: an unknown field is refused by the schema too.
    parsed["header"]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(published).validate(parsed)


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text("utf-8") == json_schema_text()
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://falaj.dev/schemas/compliance-report.schema.json"
    printed = subprocess.run(
        [sys.executable, "-m", "falaj.core.reports"], capture_output=True, text=True, encoding="utf-8", check=True
    )
    assert printed.stdout == json_schema_text()


def test_csv_zip_has_every_table_with_its_rows(report: ComplianceReport) -> None:
    blob = render_csv_zip(report)
    assert render_csv_zip(report) == blob  # deterministic
    zf = zipfile.ZipFile(io.BytesIO(blob))
    names = zf.namelist()
    assert names[0] == "report.json"
    meta = json.loads(zf.read("report.json"))
    assert meta["header"]["report_id"] == report.header.report_id and meta["audit"]["verification"]["ok"]
    tables = {t["file"]: t for t in meta["tables"]}
    assert names[1:] == list(tables)

    def rows(name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(zf.read(name).decode("utf-8-sig"))))

    expected = {
        "datasets.csv": 1,
        "backends.csv": 5,
        "training_runs.csv": 1,
        "deployment_locations.csv": 1,
        "transfer_bases.csv": 1,
        "residency_exceptions.csv": 0,
        "objections.csv": 1,
        "erasure_requests.csv": 1,
        "model_versions.csv": 1,
        "deployments.csv": 1,
        "approval_requests.csv": 1,
        "approval_votes.csv": 2,
        "denied_actions.csv": 2,
        "denied_actions_by_kind.csv": 2,
        "controls.csv": 19,
    }
    for name, count in expected.items():
        assert len(rows(name)) == count == tables[name]["rows"], name
    assert len(rows("consent.csv")) == len(report.consent.purposes) == tables["consent.csv"]["rows"]
    assert len(rows("policy_bundles.csv")) == len(report.policy_bundles)
    for name, table in tables.items():
        header = next(csv.reader(io.StringIO(zf.read(name).decode("utf-8-sig"))))
        assert header == table["columns"], name

    [dataset] = rows("datasets.csv")
    assert dataset["name"] == "customers" and dataset["consented_purposes"] == "analytics; training"
    votes = rows("approval_votes.csv")
    assert [(v["deployment"], v["approver"], v["comment"]) for v in votes] == [
        ("churn-prod", "operator/ap1", "metrics ok"),
        ("churn-prod", "operator/ap2", "DPIA done"),
    ]
    [basis] = rows("transfer_bases.csv")
    assert json.loads(basis["evidence"]) == {"contract": "DPA-2026-07"}
    denied = {r["kind"]: r for r in rows("denied_actions.csv")}
    assert denied["backend.register"]["principal"] == "operator/aud" and denied["backend.register"]["reason"]


def pdf_text_of(blob: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(blob))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_pdf_is_a_readable_document(report: ComplianceReport) -> None:
    blob = render_pdf(report)
    assert blob.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(blob))
    pages = len(reader.pages)
    text = pdf_text_of(blob)
    flat = " ".join(text.split())
    assert "Falaj compliance report" in flat and "Operator (operator)" in flat
    assert report.header.report_id in flat and "VERIFIED" in flat
    for title in SECTION_TITLES.values():
        assert title in flat, title
    assert "customers" in flat and "churn-prod" in flat and "DPIA done" in flat
    assert f"Page {pages} of {pages}" in flat


def test_render_dispatch_and_media_types(report: ComplianceReport) -> None:
    assert FORMATS == ("json", "csv", "pdf")
    assert set(MEDIA_TYPES) == set(EXTENSIONS) == set(FORMATS)
    assert render(report, "json") == render_json(report)
    assert render(report, "csv")[:2] == b"PK" and render(report, "pdf")[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="unknown report format"):
        render(report, "xml")


# -- signatures ---------------------------------------------------------------------------------------------------
def test_signature_verifies_and_catches_any_change(flow: Flow, report: ComplianceReport) -> None:
    signer = AuditSigner.load(flow.world.settings)
    public = signer.public_pem()
    for fmt in FORMATS:
        data = render(report, fmt)
        doc = sign_report(data, signer)
        assert doc["format"] == "falaj-report-signature/v1" and doc["algorithm"] == "Ed25519"
        assert doc["key_id"] == signer.key_id and doc["sha256"] == hashlib.sha256(data).hexdigest()
        verify_report(data, json.loads(json.dumps(doc)), public)

        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        with pytest.raises(ValueError, match="changed after signing"):
            verify_report(bytes(flipped), doc, public)

    data = render_json(report)
    doc = sign_report(data, signer)
    other = AuditSigner(Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="not by the trusted key"):
        verify_report(data, doc, other.public_pem())
    # A document re-signed by another key, claiming the trusted key id, does not verify either.
    forged = {**sign_report(data, other), "key_id": signer.key_id}
    with pytest.raises(ValueError, match="does not verify"):
        verify_report(data, forged, public)
    # A digest and signature edited to match an edited file.
    edited = data.replace(b'"operator"', b'"0perator"', 1)
    with pytest.raises(ValueError, match="does not verify"):
        verify_report(edited, {**doc, "sha256": hashlib.sha256(edited).hexdigest()}, public)
    with pytest.raises(ValueError, match="format"):
        verify_report(data, {**doc, "format": "something/v0"}, public)
    with pytest.raises(ValueError, match="algorithm"):
        verify_report(data, {**doc, "algorithm": "RSA"}, public)
    with pytest.raises(ValueError, match="base64"):
        verify_report(data, {**doc, "signature": "not base64!"}, public)
    with pytest.raises(ValueError, match="public key"):
        verify_report(data, doc, b"not a key")


# -- tenants ------------------------------------------------------------------------------------------------------
def test_another_tenants_report_holds_none_of_these_rows(flow: Flow) -> None:
    w = flow.world
    created = ok(w.act("tenant.create", {"slug": "gulf", "display_name": ARABIC, "admin": "root"}))
    w.tokens["gulf-root"] = created.secret
    w.principal("gulf-dpo", ["data-steward"], tenant="gulf", as_="gulf-root")
    ok(
        w.act(
            "backend.register",
            {"name": "gulf-store", "kind": "storage", "plugin": "local", "region": "me-central-1"},
            as_="gulf-root",
            tenant="gulf",
        )
    )
    ok(
        w.act(
            "dataset.register",
            {"name": "loans", "classification": "internal", "residency": "AE"},
            as_="gulf-dpo",
            tenant="gulf",
        )
    )
    ok(w.act("consent.record", {"subject_id": "G-1", "purpose": "training"}, as_="gulf-dpo", tenant="gulf"))
    # The gulf admin trying the operator tenant is a denial of the operator tenant, not of gulf.
    assert w.act("dataset.retire", {"name": "customers"}, as_="gulf-root").outcome == "denied"
    end = datetime.now(UTC) + timedelta(seconds=1)

    gulf = build_report(w.plane, "gulf", flow.start, end)
    assert gulf.header.tenant_name == ARABIC
    assert [d.name for d in gulf.processing_inventory] == ["loans"]
    assert [b.name for b in gulf.processing_locations.backends] == ["gulf-store"]
    assert [(c.dataset, c.purpose, c.records) for c in gulf.consent.purposes] == [(None, "training", 1)]
    assert gulf.models == [] and gulf.deployments == [] and gulf.erasure == []
    assert gulf.cross_border_transfers.transfer_bases == [] and gulf.processing_locations.training_runs == []
    assert gulf.denied_actions.count == 0 and gulf.consent.objections == []
    text = render_json(gulf).decode("utf-8")
    for foreign in ("customers", "churn", "store-ae", "operator/", flow.digest, flow.key_id, flow.request_id):
        assert foreign not in text, foreign
    assert ARABIC in text

    operator = build_report(w.plane, "operator", flow.start, end)
    assert [d.name for d in operator.processing_inventory] == ["customers"]
    assert "gulf-store" not in render_json(operator).decode("utf-8")
    assert operator.denied_actions.count == 3
    assert any(r.principal == "gulf/root" for r in operator.denied_actions.rows)

    # Arabic in the PDF: readable document, characters outside Latin-1 replaced, never a crash.
    blob = render_pdf(gulf)
    assert blob.startswith(b"%PDF-")
    flat = " ".join(pdf_text_of(blob).split())
    assert "(gulf)" in flat and "loans" in flat


# -- odd strings --------------------------------------------------------------------------------------------------
ODD = [
    ARABIC,
    "emoji 🚀🔥 and CJK 数据保护",
    "lone surrogate \ud800 here",
    "controls \x00\x01\x1b\x7f\x9f end",
    "rtl \u202e override \u200b zero width \ufeff bom",
    "combining e\u0301 and \u0130 and \u0141ódź",
    "x" * 5000,
    "word " * 2000,
    "=cmd|' /C calc'!A0",
    "",
]


def test_pdf_and_csv_never_raise_for_odd_strings(report: ComplianceReport) -> None:
    for odd in ODD:
        text = pdf_text(odd)
        text.encode("latin-1")  # what a core PDF font can show
    assert pdf_text("Z\u0105b \u017ale \u2013 \u201cquoted\u201d \u0141\u00f3d\u017a") == 'Zab zle - "quoted" ?\u00f3dz'
    for odd in ODD:
        header = report.header.model_copy(update={"tenant_name": odd, "tenant": odd[:40]})
        dep = report.deployments[0]
        approval = dep.approvals[0]
        vote = approval.votes[0].model_copy(update={"comment": odd, "approver": odd})
        approval = approval.model_copy(update={"votes": [vote]})
        dep = dep.model_copy(update={"name": odd, "approvals": [approval], "traffic": [odd]})
        ds = report.processing_inventory[0].model_copy(update={"name": odd, "uri": odd})
        denied = report.denied_actions.model_copy(
            update={"rows": [r.model_copy(update={"reason": odd}) for r in report.denied_actions.rows]}
        )
        odd_report = report.model_copy(
            update={
                "header": header,
                "deployments": [dep],
                "processing_inventory": [ds],
                "denied_actions": denied,
            }
        )
        assert render_pdf(odd_report).startswith(b"%PDF-")
        assert zipfile.ZipFile(io.BytesIO(render_csv_zip(odd_report))).testzip() is None
    formula = report.model_copy(update={"controls": [report.controls[0].model_copy(update={"control": ODD[8]})]})
    zf = zipfile.ZipFile(io.BytesIO(render_csv_zip(formula)))
    [row] = csv.DictReader(io.StringIO(zf.read("controls.csv").decode("utf-8-sig")))
    assert row["control"] == "'" + ODD[8]


def test_controls_are_the_documented_mapping() -> None:
    docs = (ROOT / "docs" / "compliance.md").read_text("utf-8")
    table = docs.split("| control | PDPL article", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    documented = [line.split("|")[1].strip() for line in table if line.startswith("| ")]
    assert documented == [c["control"] for c in CONTROLS]  # the same controls, in the same order
    for control in CONTROLS:
        assert f"| {control['control']} |" in docs, control["control"]
        for article in control["articles"]:
            number = re.search(r"Art\. \d+", article)
            assert number is None or number.group(0) in docs, article


def test_pdf_shows_long_tables_in_part_and_says_so(report: ComplianceReport) -> None:
    """Thousands of denials stay whole in JSON and CSV; the PDF shows the first rows and says how many."""
    from falaj.core.reports.render import PDF_MAX_ROWS

    many = [report.denied_actions.rows[0].model_copy(update={"resource": f"r{i}"}) for i in range(PDF_MAX_ROWS * 4)]
    big = report.model_copy(update={"denied_actions": report.denied_actions.model_copy(update={"rows": many})})
    started = time.perf_counter()
    blob = render_pdf(big)
    assert time.perf_counter() - started < 30
    flat = " ".join(pdf_text_of(blob).split())
    assert f"Showing the first {PDF_MAX_ROWS:,} of {len(many):,} rows" in flat
    assert f"r{PDF_MAX_ROWS - 1} " in flat + " " and f"r{PDF_MAX_ROWS} " not in flat + " "
    zf = zipfile.ZipFile(io.BytesIO(render_csv_zip(big)))
    assert len(list(csv.DictReader(io.StringIO(zf.read("denied_actions.csv").decode("utf-8-sig"))))) == len(many)
