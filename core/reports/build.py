"""Building a tenant's compliance report from the control-plane database (read only)."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, case, func, select
from sqlalchemy.orm import Session

import falaj.core as _core
from falaj.core.audit.chain import rfc3339
from falaj.core.datasets import subject_hash as hashed
from falaj.core.db import read_only
from falaj.core.domain import (
    ApprovalRequest,
    ApprovalVote,
    AuditCheckpoint,
    AuditEvent,
    Backend,
    ConsentRecord,
    Dataset,
    DatasetSubject,
    Deployment,
    ErasureRequest,
    Model,
    ModelSignature,
    ModelVersion,
    Objection,
    Operation,
    PolicyBundleRecord,
    Principal,
    ResidencyException,
    Tenant,
    TrainingRun,
    TransferBasis,
)
from falaj.core.errors import NotFoundError, ValidationError
from falaj.core.reports.model import (
    CONTROLS,
    RESIDENCY_EXCEPTION_ARTICLE,
    SCHEMA_VERSION,
    ApprovalRow,
    AuditSection,
    AuditVerification,
    BackendRow,
    CheckpointRow,
    ComplianceReport,
    ConsentCountRow,
    ConsentSection,
    ControlRow,
    CrossBorderTransfers,
    DatasetRow,
    DeniedActionRow,
    DeniedActions,
    DeploymentLocationRow,
    DeploymentRow,
    ErasureRow,
    KindCount,
    ModelVersionRow,
    ObjectionRow,
    PolicyBundleRow,
    ProcessingLocations,
    ReportHeader,
    ResidencyExceptionRow,
    TrainingRunRow,
    TransferBasisRow,
    VoteRow,
    transfer_article,
)

if TYPE_CHECKING:
    from falaj.core.keys import AuditSigner
    from falaj.core.pipeline import ControlPlane
    from falaj.core.policy import PolicyBundle


def build_report(
    plane: ControlPlane,
    tenant_slug: str,
    period_start: datetime,
    period_end: datetime,
    *,
    report_id: str | None = None,
) -> ComplianceReport:
    """The compliance report of ``tenant_slug`` for ``[period_start, period_end)`` (aware datetimes).

    ``report_id`` (32 hex digits) names the report, e.g. after the record an export keeps; default a new uuid4.
    Raises ``ValidationError`` for a bad period or id and ``NotFoundError`` for an unknown tenant. Writes nothing.
    """
    start, end = _period(period_start, period_end)
    if report_id is not None and not re.fullmatch(r"[0-9a-f]{32}", report_id):
        raise ValidationError(f"report_id must be 32 lowercase hex digits, got {report_id!r}")
    with Session(_reader(plane.engine)) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug))
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_slug!r}")
        builder = _Builder(session, tenant, start, end, plane.bundle)
        registered, retired = builder.registrations()
        consent_counts, dataset_purposes = builder.consent_counts()
        report = ComplianceReport(
            header=ReportHeader(
                schema_version=SCHEMA_VERSION,
                report_id=report_id or uuid.uuid4().hex,
                tenant=tenant.slug,
                tenant_name=tenant.display_name,
                ruleset=tenant.ruleset,
                period_start=start,
                period_end=end,
                generated_at=datetime.now(UTC),
                falaj_version=_core.__version__,
            ),
            processing_inventory=builder.inventory(registered, retired, dataset_purposes),
            processing_locations=builder.locations(),
            cross_border_transfers=builder.transfers(),
            consent=builder.consent(consent_counts),
            erasure=builder.erasure(),
            models=builder.models(registered),
            deployments=builder.deployments(),
            policy_bundles=builder.bundles(),
            denied_actions=builder.denied(),
            # The whole chain (every tenant's events), verified the way `falaj audit verify` does it.
            audit=builder.audit(plane.audit.verify(plane.engine).as_dict(), plane.signer),
            controls=[ControlRow.model_validate(c) for c in CONTROLS],
        )
        session.rollback()
    return report


def subject_hash(subject_id: str) -> str:
    """How a data subject is named after the fact (as erasure requests store it): never the id itself."""
    if subject_id.startswith("sha256:"):
        return subject_id
    return hashed(subject_id)


def _period(period_start: datetime, period_end: datetime) -> tuple[datetime, datetime]:
    for name, value in (("period_start", period_start), ("period_end", period_end)):
        if not isinstance(value, datetime):
            raise ValidationError(f"{name} must be a datetime, not {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(f"{name} must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
    start, end = period_start.astimezone(UTC), period_end.astimezone(UTC)
    if end <= start:
        raise ValidationError(f"period_end ({end.isoformat()}) must be after period_start ({start.isoformat()})")
    return start, end


def _reader(engine: Engine) -> Engine:
    """Read only; one snapshot on PostgreSQL (SQLite's deferred transaction reads one snapshot in WAL mode)."""
    engine = read_only(engine)
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return engine


def _int(value: Any) -> int:
    return int(value or 0)


class _Builder:
    """Reads each section's rows for one tenant and period, inside one read-only session."""

    def __init__(self, session: Session, tenant: Tenant, start: datetime, end: datetime, bundle: PolicyBundle):
        self.s = session
        self.tenant = tenant
        self.tid = tenant.id
        self.start = start
        self.end = end
        self.bundle = bundle
        self._labels: dict[str, str] = {"bootstrap": "system/bootstrap"}
        self.backends = {b.id: b for b in session.scalars(select(Backend).where(Backend.tenant_id == self.tid))}
        self.datasets = {
            d.id: d
            for d in session.scalars(
                select(Dataset).where(Dataset.tenant_id == self.tid).order_by(Dataset.name, Dataset.version)
            )
        }

    # -- helpers ------------------------------------------------------------------------------------------------
    def in_period(self, moment: datetime | None) -> bool:
        return moment is not None and self.start <= moment < self.end

    def label(self, principal_id: str | None) -> str:
        """``<home tenant>/<name>`` of a principal id, as audit events show it."""
        if not principal_id:
            return ""
        if principal_id not in self._labels:
            row = self.s.execute(
                select(Tenant.slug, Principal.name)
                .join(Tenant, Tenant.id == Principal.tenant_id)
                .where(Principal.id == principal_id)
            ).first()
            self._labels[principal_id] = f"{row[0]}/{row[1]}" if row is not None else principal_id
        return self._labels[principal_id]

    def country(self, region: str | None) -> str | None:
        found = self.bundle.regions.get(region) if region else None
        return found.country if found is not None else None

    def backend_name(self, backend_id: str | None) -> tuple[str | None, str | None, str | None]:
        """(name, region, node class) of one of the tenant's backends."""
        row = self.backends.get(backend_id or "")
        return (row.name, row.region, row.node_class) if row is not None else (None, None, None)

    def dataset_name(self, dataset_id: str | None) -> str | None:
        row = self.datasets.get(dataset_id or "")
        return f"{row.name} v{row.version}" if row is not None else None

    # -- sections ---------------------------------------------------------------------------------------------------
    def registrations(self) -> tuple[dict[str, str], dict[tuple[str, int], datetime]]:
        """Who registered datasets and model versions, and when datasets were retired (from ``operations``)."""
        registered: dict[str, str] = {}
        retired: dict[tuple[str, int], datetime] = {}
        rows = self.s.execute(
            select(Operation.kind, Operation.principal, Operation.result, Operation.created_at)
            .where(
                Operation.tenant == self.tenant.slug,
                Operation.outcome == "succeeded",
                Operation.kind.in_(("dataset.register", "dataset.retire", "model_version.register")),
            )
            .order_by(Operation.created_at)
        )
        for kind, principal, result, at in rows:
            result = result if isinstance(result, dict) else {}
            if kind == "dataset.register" and isinstance(result.get("dataset_id"), str):
                registered[result["dataset_id"]] = principal
            elif kind == "model_version.register" and isinstance(result.get("model_version_id"), str):
                registered[result["model_version_id"]] = principal
            elif kind == "dataset.retire":
                for version in result.get("retired_versions") or []:
                    retired.setdefault((str(result.get("name")), int(version)), at)
        return registered, retired

    def consent_counts(self) -> tuple[list[ConsentCountRow], dict[str, set[str]]]:
        c = ConsentRecord
        start, end = self.start, self.end
        withdrawn = and_(c.withdrawn_at.is_not(None), c.withdrawn_at < end)
        columns = (
            func.count(),
            func.sum(case((withdrawn, 1), else_=0)),
            func.sum(case((c.granted_at >= start, 1), else_=0)),
            func.sum(case((and_(withdrawn, c.withdrawn_at >= start), 1), else_=0)),
        )
        rows: list[ConsentCountRow] = []

        def row(dataset: Dataset | None, purpose: str, counts: Sequence[Any]) -> ConsentCountRow:
            records, gone, granted_in, withdrawn_in = (_int(v) for v in counts)
            return ConsentCountRow(
                dataset=dataset.name if dataset is not None else None,
                dataset_version=dataset.version if dataset is not None else None,
                purpose=purpose,
                purpose_description=self.bundle.purposes.get(purpose),
                records=records,
                granted=records - gone,
                withdrawn=gone,
                granted_in_period=granted_in,
                withdrawals_honoured=withdrawn_in,
            )

        tenant_wide = self.s.execute(
            select(c.purpose, *columns).where(c.tenant_id == self.tid, c.granted_at < end).group_by(c.purpose)
        ).all()
        for purpose, *counts in sorted(tenant_wide, key=lambda r: r[0]):
            rows.append(row(None, purpose, counts))
        per_dataset = self.s.execute(
            select(DatasetSubject.dataset_id, c.purpose, *columns)
            .select_from(DatasetSubject)
            .join(Dataset, Dataset.id == DatasetSubject.dataset_id)
            .join(c, and_(c.subject_id == DatasetSubject.subject_id, c.tenant_id == self.tid))
            .where(Dataset.tenant_id == self.tid, Dataset.created_at < end, c.granted_at < end)
            .group_by(DatasetSubject.dataset_id, c.purpose)
        ).all()
        purposes: dict[str, set[str]] = {}
        position = {dataset_id: n for n, dataset_id in enumerate(self.datasets)}
        for dataset_id, purpose, *counts in sorted(per_dataset, key=lambda r: (position[r[0]], r[1])):
            rows.append(row(self.datasets[dataset_id], purpose, counts))
            purposes.setdefault(dataset_id, set()).add(purpose)
        return rows, purposes

    def inventory(
        self,
        registered: dict[str, str],
        retired: dict[tuple[str, int], datetime],
        purposes: dict[str, set[str]],
    ) -> list[DatasetRow]:
        subjects = dict(
            self.s.execute(
                select(DatasetSubject.dataset_id, func.count())
                .join(Dataset, Dataset.id == DatasetSubject.dataset_id)
                .where(Dataset.tenant_id == self.tid)
                .group_by(DatasetSubject.dataset_id)
            ).all()
        )
        rows = []
        for ds in self.datasets.values():
            if ds.created_at >= self.end:
                continue
            retired_at = retired.get((ds.name, ds.version))
            if ds.status == "retired" and retired_at is not None and retired_at >= self.end:
                status, retired_at = "active", None  # retired after the period: active at its end
            else:
                status = "retired" if ds.status == "retired" else "active"
            storage, region, _ = self.backend_name(ds.storage_backend_id)
            rows.append(
                DatasetRow(
                    name=ds.name,
                    version=ds.version,
                    classification=ds.classification,
                    residency=ds.residency,
                    legal_basis=ds.legal_basis,
                    consented_purposes=sorted(purposes.get(ds.id, ())),
                    storage_backend=storage,
                    storage_region=region,
                    uri=ds.uri,
                    digest=ds.digest,
                    subject_column=ds.subject_column,
                    subjects_indexed=_int(subjects.get(ds.id)),
                    registered_at=ds.created_at,
                    registered_by=registered.get(ds.id),
                    status=status,
                    retired_at=retired_at if status == "retired" else None,
                )
            )
        return rows

    def locations(self) -> ProcessingLocations:
        backends = [
            BackendRow(
                name=b.name,
                kind=b.kind,
                plugin=b.plugin,
                region=b.region,
                country=self.country(b.region),
                node_class=b.node_class,
                enabled=b.enabled,
                registered_at=b.created_at,
            )
            for b in sorted(self.backends.values(), key=lambda b: b.name)
            if b.created_at < self.end
        ]
        runs = []
        for run in self.s.scalars(
            select(TrainingRun)
            .where(TrainingRun.tenant_id == self.tid, TrainingRun.created_at >= self.start)
            .where(TrainingRun.created_at < self.end)
            .order_by(TrainingRun.created_at, TrainingRun.id)
        ):
            name, region, node_class = self.backend_name(run.backend_id)
            runs.append(
                TrainingRunRow(
                    run_id=run.id,
                    name=run.name,
                    backend=name,
                    region=region,
                    country=self.country(region),
                    node_class=node_class,
                    inputs=[str(i) for i in run.inputs],
                    status=run.status,
                    requested_by=self.label(run.requested_by),
                    submitted_at=run.created_at,
                )
            )
        deployments = []
        for dep in self._deployment_rows():
            name, region, _ = self.backend_name(dep.runtime_backend_id)
            deployments.append(
                DeploymentLocationRow(
                    name=dep.name,
                    environment=dep.environment,
                    runtime_backend=name,
                    region=region,
                    country=self.country(region),
                    status=dep.status,
                )
            )
        return ProcessingLocations(backends=backends, training_runs=runs, deployments=deployments)

    def transfers(self) -> CrossBorderTransfers:
        bases = []
        for tb in self.s.scalars(
            select(TransferBasis)
            .where(TransferBasis.tenant_id == self.tid, TransferBasis.created_at < self.end)
            .order_by(TransferBasis.created_at, TransferBasis.id)
        ):
            ended = [t for t in (tb.expires_at, tb.revoked_at) if t is not None]
            if ended and min(ended) < self.start:
                continue  # no longer in force during the period
            bases.append(
                TransferBasisRow(
                    recorded_at=tb.created_at,
                    recorded_by=self.label(tb.recorded_by),
                    destination_country=tb.destination_country,
                    basis=tb.basis,
                    article=transfer_article(self.tenant.ruleset, tb.basis),
                    dataset=self.dataset_name(tb.dataset_id),
                    expires_at=tb.expires_at,
                    revoked_at=tb.revoked_at,
                    valid_at_period_end=not ended or min(ended) >= self.end,
                    evidence=dict(tb.evidence),
                )
            )
        exceptions = [
            ResidencyExceptionRow(
                recorded_at=ex.created_at,
                recorded_by=self.label(ex.recorded_by),
                dataset=self.dataset_name(ex.dataset_id),
                destination_country=ex.destination_country,
                exception=ex.exception,
                article=RESIDENCY_EXCEPTION_ARTICLE,
                evidence=dict(ex.evidence),
            )
            for ex in self.s.scalars(
                select(ResidencyException)
                .where(ResidencyException.tenant_id == self.tid, ResidencyException.created_at < self.end)
                .order_by(ResidencyException.created_at, ResidencyException.id)
            )
        ]
        return CrossBorderTransfers(transfer_bases=bases, residency_exceptions=exceptions)

    def consent(self, counts: list[ConsentCountRow]) -> ConsentSection:
        withdrawals = self.s.scalar(
            select(func.count())
            .select_from(Operation)
            .where(
                Operation.tenant == self.tenant.slug,
                Operation.kind == "consent.withdraw",
                Operation.outcome == "succeeded",
                Operation.created_at >= self.start,
                Operation.created_at < self.end,
            )
        )
        objections = [
            ObjectionRow(
                recorded_at=ob.created_at,
                deployment=name,
                subject_hash=subject_hash(ob.subject_id),
                reason=ob.reason,
                status=ob.status,
            )
            for ob, name in self.s.execute(
                select(Objection, Deployment.name)
                .outerjoin(Deployment, Deployment.id == Objection.deployment_id)
                .where(Objection.tenant_id == self.tid, Objection.created_at >= self.start)
                .where(Objection.created_at < self.end)
                .order_by(Objection.created_at, Objection.id)
            ).all()
        ]
        return ConsentSection(
            purposes=counts,
            withdrawal_actions_in_period=_int(withdrawals),
            objections_count=len(objections),
            objections=objections,
        )

    def erasure(self) -> list[ErasureRow]:
        rows = []
        for req in self.s.scalars(
            select(ErasureRequest)
            .where(ErasureRequest.tenant_id == self.tid, ErasureRequest.created_at < self.end)
            .order_by(ErasureRequest.created_at, ErasureRequest.id)
        ):
            if req.completed_at is not None and req.completed_at < self.start:
                continue  # finished before the period
            done = req.completed_at is not None and req.completed_at < self.end
            report = req.verification if isinstance(req.verification, dict) and done else {}
            datasets = [d for d in report.get("datasets") or [] if isinstance(d, dict)]
            verified = report.get("verified")
            rows.append(
                ErasureRow(
                    request_id=req.id,
                    subject_hash=subject_hash(req.subject_id),
                    status=req.status if done or req.status == "open" else "open",
                    requested_at=req.created_at,
                    requested_by=self.label(req.requested_by),
                    completed_at=req.completed_at if done else None,
                    verified=verified if isinstance(verified, bool) else None,
                    datasets=[str(d.get("dataset")) for d in datasets],
                    rows_removed=sum(_int(d.get("rows_removed")) for d in datasets),
                    feature_stores=len(report.get("feature_stores") or []),
                    training_views=len(report.get("training_views") or []),
                    flagged_model_versions=len(report.get("flagged_model_versions") or []),
                )
            )
        return rows

    def models(self, registered: dict[str, str]) -> list[ModelVersionRow]:
        versions = self.s.execute(
            select(ModelVersion, Model.name)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.tenant_id == self.tid, ModelVersion.created_at < self.end)
            .order_by(Model.name, ModelVersion.version)
        ).all()
        signatures: dict[str, list[ModelSignature]] = {}
        for sig in self.s.scalars(
            select(ModelSignature)
            .join(ModelVersion, ModelVersion.id == ModelSignature.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.tenant_id == self.tid, ModelSignature.created_at < self.end)
            .order_by(ModelSignature.created_at, ModelSignature.id)
        ):
            signatures.setdefault(sig.model_version_id, []).append(sig)
        rows = []
        for mv, model_name in versions:
            storage, region, _ = self.backend_name(mv.storage_backend_id)
            sigs = signatures.get(mv.id, [])
            rows.append(
                ModelVersionRow(
                    model=model_name,
                    version=mv.version,
                    artifact_digest=mv.artifact_digest,
                    storage_backend=storage,
                    storage_region=region,
                    training_run_id=mv.training_run_id,
                    registered_at=mv.created_at,
                    registered_by=registered.get(mv.id),
                    status=mv.status,
                    signer_key_ids=[s.key_id for s in sigs],
                    signed_by=[s.signed_by for s in sigs],
                    flags=_flag_types(mv.flags),
                )
            )
        return rows

    def _deployment_rows(self) -> list[Deployment]:
        return list(
            self.s.scalars(
                select(Deployment)
                .where(Deployment.tenant_id == self.tid, Deployment.created_at < self.end)
                .order_by(Deployment.name)
            )
        )

    def deployments(self) -> list[DeploymentRow]:
        votes: dict[str, list[VoteRow]] = {}
        for v in self.s.scalars(
            select(ApprovalVote)
            .join(ApprovalRequest, ApprovalRequest.id == ApprovalVote.request_id)
            .where(ApprovalRequest.tenant_id == self.tid, ApprovalVote.created_at < self.end)
            .order_by(ApprovalVote.created_at, ApprovalVote.id)
        ):
            votes.setdefault(v.request_id, []).append(
                VoteRow(approver=self.label(v.approver_id), at=v.created_at, decision=v.vote, comment=v.comment)
            )
        approvals: dict[str, list[ApprovalRow]] = {}
        for req in self.s.scalars(
            select(ApprovalRequest)
            .where(ApprovalRequest.tenant_id == self.tid, ApprovalRequest.created_at < self.end)
            .order_by(ApprovalRequest.created_at, ApprovalRequest.id)
        ):
            decided = req.decided_at is not None and req.decided_at < self.end
            approvals.setdefault(req.deployment_id or "", []).append(
                ApprovalRow(
                    request_id=req.id,
                    environment=req.environment,
                    status=req.status if decided or req.status == "pending" else "pending",
                    quorum=req.quorum,
                    approver_role=req.approver_role,
                    requested_by=self.label(req.requester_id),
                    requested_at=req.created_at,
                    expires_at=req.expires_at,
                    decided_at=req.decided_at if decided else None,
                    votes=votes.get(req.id, []),
                )
            )
        rows = []
        for dep in self._deployment_rows():
            name, region, _ = self.backend_name(dep.runtime_backend_id)
            policy = next(
                (f for f in dep.flags if isinstance(f, dict) and f.get("type") == "inference-policy"),
                {},
            )
            rows.append(
                DeploymentRow(
                    name=dep.name,
                    environment=dep.environment,
                    status=dep.status,
                    runtime_backend=name,
                    runtime_region=region,
                    requested_by=self.label(dep.requested_by),
                    requested_at=dep.created_at,
                    traffic=[_variant(v) for v in dep.traffic if isinstance(v, dict)],
                    automated_decisions=bool(policy.get("automated_decisions")),
                    human_review_contact=dep.human_review_contact,
                    # The inference policy shows as automated_decisions; other flags are warnings.
                    flags=[f for f in _flag_types(dep.flags) if f != "inference-policy"],
                    approvals=approvals.get(dep.id, []),
                )
            )
        return rows

    def bundles(self) -> list[PolicyBundleRow]:
        used = {
            digest: _int(n)
            for digest, n in self.s.execute(
                select(AuditEvent.bundle_digest, func.count())
                .where(AuditEvent.tenant == self.tenant.slug)
                .where(AuditEvent.ts >= rfc3339(self.start), AuditEvent.ts < rfc3339(self.end))
                .group_by(AuditEvent.bundle_digest)
            ).all()
        }
        bundles = list(self.s.scalars(select(PolicyBundleRecord).where(PolicyBundleRecord.created_at < self.end)))
        before = [b for b in bundles if b.activated_at is not None and b.activated_at < self.start]
        in_force_at_start = max(before, key=lambda b: b.activated_at or self.start) if before else None
        chosen = [b for b in bundles if b.digest in used or self.in_period(b.activated_at) or b is in_force_at_start]
        chosen.sort(key=lambda b: (b.activated_at or self.end, b.digest))
        return [
            PolicyBundleRow(
                digest=b.digest,
                source=b.source,
                files=sorted(b.files),
                loaded_by=self.label(b.loaded_by) if b.loaded_by else None,
                activated_at=b.activated_at,
                decisions_in_period=used.get(b.digest, 0),
            )
            for b in chosen
        ]

    def denied(self) -> DeniedActions:
        rows = []
        for op in self.s.scalars(
            select(Operation)
            .where(Operation.tenant == self.tenant.slug, Operation.verdict == "deny")
            .where(Operation.created_at >= self.start, Operation.created_at < self.end)
            .order_by(Operation.created_at, Operation.id)
        ):
            check, reason = _first_failure(op.decision)
            rows.append(
                DeniedActionRow(
                    at=op.created_at,
                    principal=op.principal,
                    kind=op.kind,
                    resource=op.resource,
                    check=check,
                    reason=reason,
                    operation_id=op.id,
                    audit_seq=op.audit_seq,
                )
            )
        by_kind = Counter(r.kind for r in rows)
        return DeniedActions(
            count=len(rows),
            by_kind=[KindCount(kind=k, count=by_kind[k]) for k in sorted(by_kind)],
            rows=rows,
        )

    def audit(self, verification: dict[str, Any], signer: AuditSigner | None) -> AuditSection:
        count, first, last = self.s.execute(
            select(func.count(), func.min(AuditEvent.seq), func.max(AuditEvent.seq)).where(
                AuditEvent.tenant == self.tenant.slug,
                AuditEvent.ts >= rfc3339(self.start),
                AuditEvent.ts < rfc3339(self.end),
            )
        ).one()
        cp = self.s.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1))
        latest = (
            CheckpointRow(seq=cp.seq, hash=cp.hash, key_id=cp.key_id, at=datetime.fromisoformat(cp.ts))
            if cp is not None
            else None
        )
        return AuditSection(
            verification=AuditVerification.model_validate(verification),
            latest_checkpoint=latest,
            audit_key_id=signer.key_id if signer is not None else None,
            tenant_events_in_period=_int(count),
            first_seq_in_period=first,
            last_seq_in_period=last,
        )


def _flag_types(flags: list[Any]) -> list[str]:
    return [str(f.get("type", "flag")) if isinstance(f, dict) else str(f) for f in flags]


def _variant(v: dict[str, Any]) -> str:
    text = f"{v.get('model')} v{v.get('version')} {v.get('weight')}%"
    return text + " (shadow)" if v.get("shadow") else text


def _first_failure(decision: Any) -> tuple[str | None, str]:
    """The first failing check's name and reason, as the pipeline stored the decision."""
    checks = decision.get("checks") if isinstance(decision, dict) else None
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict) and check.get("outcome") == "fail":
            return str(check.get("check") or "") or None, str(check.get("reason") or "")
    return None, "no check allowed this action"
