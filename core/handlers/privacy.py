"""Data-subject rights and cross-border records: transfer bases, exceptions, objections, erasure."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select, update

from falaj.core.actions import (
    ActionKind,
    ErasureExecute,
    ErasureRequestPayload,
    InferencePolicySet,
    ObjectionRecord,
    ResidencyExceptionRecord,
    TransferBasisRecord,
)
from falaj.core.datasets import erase_subject, local_path, subject_hash
from falaj.core.domain import (
    Backend,
    ConsentRecord,
    Dataset,
    DatasetSubject,
    Deployment,
    ErasureRequest,
    IdempotencyRecord,
    LineageEdge,
    ModelVersion,
    Objection,
    ResidencyException,
    TransferBasis,
)
from falaj.core.errors import BackendError, ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed
from falaj.core.policy.facts import latest_dataset


def _dataset(ctx: HandlerContext, name: str) -> Dataset:
    ds = latest_dataset(ctx.session, ctx.tenant.id, name)
    if ds is None:
        raise NotFoundError(f"no active dataset {name!r} in tenant {ctx.tenant.slug!r}")
    return ds


@handles(ActionKind.TRANSFER_BASIS_RECORD)
def record_transfer_basis(ctx: HandlerContext) -> Outcome:
    p: TransferBasisRecord = typed(ctx, TransferBasisRecord)
    ruleset = ctx.plane.bundle.rulesets[ctx.tenant.ruleset]
    if p.basis not in ruleset.bases:
        raise ValidationError(f"basis {p.basis!r} is not accepted under rule set {ruleset.name}")
    if p.basis == "adequacy" and p.destination_country not in ruleset.adequate_countries:
        raise ValidationError(
            f"{p.destination_country} is not an adequate country under {ruleset.name}: "
            "record a contract or express consent instead"
        )
    if p.expires_at is not None and p.expires_at.tzinfo is None:
        raise ValidationError("expires_at must carry a timezone")
    dataset_id = _dataset(ctx, p.dataset).id if p.dataset else None
    row = TransferBasis(
        tenant_id=ctx.tenant.id,
        destination_country=p.destination_country,
        basis=p.basis,
        dataset_id=dataset_id,
        evidence=p.evidence,
        recorded_by=ctx.principal.id,
        expires_at=p.expires_at,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome(
        {
            "transfer_basis_id": row.id,
            "country": p.destination_country,
            "basis": p.basis,
            "dataset": p.dataset,
        }
    )


@handles(ActionKind.RESIDENCY_EXCEPTION_RECORD)
def record_residency_exception(ctx: HandlerContext) -> Outcome:
    p: ResidencyExceptionRecord = typed(ctx, ResidencyExceptionRecord)
    ds = _dataset(ctx, p.dataset)
    if ds.classification != "health":
        raise ValidationError(f"{p.dataset} is {ds.classification} data: exceptions are for health data only")
    row = ResidencyException(
        tenant_id=ctx.tenant.id,
        dataset_id=ds.id,
        destination_country=p.destination_country,
        exception=p.exception,
        evidence=p.evidence,
        recorded_by=ctx.principal.id,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome({"exception_id": row.id, "dataset": p.dataset, "country": p.destination_country})


@handles(ActionKind.OBJECTION_RECORD)
def record_objection(ctx: HandlerContext) -> Outcome:
    p: ObjectionRecord = typed(ctx, ObjectionRecord)
    deployment = ctx.named(Deployment, p.deployment)
    policy = next((f for f in deployment.flags if isinstance(f, dict) and f.get("type") == "inference-policy"), {})
    if not policy.get("automated_decisions"):
        raise ValidationError(f"deployment {p.deployment!r} does not make automated decisions")
    row = Objection(tenant_id=ctx.tenant.id, deployment_id=deployment.id, subject_id=p.subject_id, reason=p.reason)
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome(
        {
            "objection_id": row.id,
            "deployment": p.deployment,
            "human_review_contact": deployment.human_review_contact,
        }
    )


@handles(ActionKind.INFERENCE_POLICY_SET)
def set_inference_policy(ctx: HandlerContext) -> Outcome:
    p: InferencePolicySet = typed(ctx, InferencePolicySet)
    deployment = ctx.named(Deployment, p.deployment)
    contact = p.human_review_contact or deployment.human_review_contact
    if p.automated_decisions and not contact:
        raise ValidationError("a deployment making automated decisions needs a human_review_contact (PDPL Art. 18)")
    flags = [f for f in deployment.flags if not (isinstance(f, dict) and f.get("type") == "inference-policy")]
    flags.append(
        {
            "type": "inference-policy",
            "automated_decisions": p.automated_decisions,
            "max_batch_size": p.max_batch_size,
        }
    )
    deployment.flags = flags
    deployment.human_review_contact = contact
    return Outcome(
        {
            "deployment": p.deployment,
            "automated_decisions": p.automated_decisions,
            "human_review_contact": contact,
        }
    )


@handles(ActionKind.ERASURE_REQUEST)
def request_erasure(ctx: HandlerContext) -> Outcome:
    p: ErasureRequestPayload = typed(ctx, ErasureRequestPayload)
    open_request = ctx.session.scalar(
        select(ErasureRequest.id).where(
            ErasureRequest.tenant_id == ctx.tenant.id,
            ErasureRequest.subject_id == p.subject_id,
            ErasureRequest.status == "open",
        )
    )
    if open_request is not None:
        raise ConflictError(f"an erasure request for this subject is already open ({open_request})")
    row = ErasureRequest(tenant_id=ctx.tenant.id, subject_id=p.subject_id, requested_by=ctx.principal.id)
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome({"request_id": row.id, "status": "open"})


@handles(ActionKind.ERASURE_EXECUTE)
def execute_erasure(ctx: HandlerContext) -> Outcome:
    """Erase a subject from every dataset and feature store, verify, and flag models trained on them."""
    p: ErasureExecute = typed(ctx, ErasureExecute)
    request = ctx.session.get(ErasureRequest, p.request_id)
    if request is None or request.tenant_id != ctx.tenant.id:
        raise NotFoundError(f"no erasure request {p.request_id}")
    if request.status != "open":
        raise ConflictError(f"erasure request {p.request_id} is already {request.status}")
    subject = request.subject_id
    datasets = list(
        ctx.session.scalars(
            select(Dataset)
            .join(DatasetSubject, DatasetSubject.dataset_id == Dataset.id)
            .where(Dataset.tenant_id == ctx.tenant.id, DatasetSubject.subject_id == subject)
        )
    )
    erased_datasets: list[dict[str, object]] = []
    erased_stores: list[dict[str, object]] = []
    erased_views: list[dict[str, object]] = []
    root = ctx.plane.settings.data_dir / ctx.tenant.slug
    for ds in datasets:
        rows = 0
        if ds.uri and ds.subject_column and local_path(ds.uri, root) is not None:
            ds.digest, rows = erase_subject(ds.uri, ds.subject_column, subject, root)
        ctx.session.execute(
            delete(DatasetSubject).where(DatasetSubject.dataset_id == ds.id, DatasetSubject.subject_id == subject)
        )
        erased_datasets.append({"dataset": f"{ds.name} v{ds.version}", "rows_removed": rows})
    # The consent views handed to compute backends are copies: they lose the subject too.
    views = ctx.plane.settings.home / "views" / ctx.tenant.slug
    for ds in datasets:
        if not ds.subject_column:
            continue
        for view in sorted(views.glob(f"*/{ds.name}-v{ds.version}.csv")):
            _, rows = erase_subject(view.as_uri(), ds.subject_column, subject, views)
            erased_views.append({"view": view.parent.name, "rows_removed": rows})
    # Feature rows handed to training runs and exported by retrievals are copies too.
    feature_files: list[dict[str, object]] = []
    if views.is_dir() or (ctx.plane.settings.exports_dir / ctx.tenant.slug).is_dir():
        from falaj.core.features.retrieval import erase_from_files

        if views.is_dir():
            feature_files += erase_from_files(views, "*/features-*.csv", subject)
        exports = ctx.plane.settings.exports_dir / ctx.tenant.slug
        if exports.is_dir():
            feature_files += erase_from_files(exports, "*/features.parquet", subject)
    # Stored answers of retrievals (idempotent replays) may hold the subject's rows inline: they go.
    ctx.session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.tenant == ctx.tenant.slug, IdempotencyRecord.kind == "feature.retrieve"
        )
    )
    for backend in ctx.session.scalars(
        select(Backend).where(
            Backend.tenant_id == ctx.tenant.id, Backend.kind == "feature_store", Backend.enabled.is_(True)
        )
    ):
        store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
        try:
            removed = store.delete_subjects(ctx.tenant.slug, [subject])
            left = store.count_subject(ctx.tenant.slug, subject)
        except Exception as exc:
            raise BackendError(f"feature store {backend.name!r} could not erase the subject: {exc}") from exc
        if left:
            raise BackendError(
                f"erasure could not be verified: feature store {backend.name!r} still holds {left} row(s) of them"
            )
        erased_stores.append({"backend": backend.name, "rows_removed": removed, "verified": True})
    # Verify: the subject is in no dataset index and no local dataset file any more.
    remaining = ctx.session.scalar(
        select(DatasetSubject.dataset_id)
        .where(DatasetSubject.subject_id == subject)
        .join(Dataset, Dataset.id == DatasetSubject.dataset_id)
        .where(Dataset.tenant_id == ctx.tenant.id)
        .limit(1)
    )
    if remaining is not None:
        raise BackendError("erasure could not be verified: the subject is still indexed")
    # Flag model versions trained on any of these datasets (dataset -> training run -> model version).
    ids = [d.id for d in datasets]
    runs = (
        ctx.session.scalars(
            select(LineageEdge.target_id).where(
                LineageEdge.source_type == "dataset",
                LineageEdge.source_id.in_(ids),
                LineageEdge.target_type == "training_run",
            )
        ).all()
        if ids
        else []
    )
    flagged = []
    for mv in ctx.session.scalars(select(ModelVersion).where(ModelVersion.training_run_id.in_(runs))) if runs else []:
        mv.flags = [
            *mv.flags,
            {
                "type": "trained-on-erased-subject",
                "erasure_request": request.id,
                "at": datetime.now(UTC).isoformat(),
            },
        ]
        flagged.append(mv.id)
    # Consent records of the subject go too: their evidence is personal data of someone erased.
    ctx.session.execute(
        delete(ConsentRecord).where(ConsentRecord.tenant_id == ctx.tenant.id, ConsentRecord.subject_id == subject)
    )
    # Objections stay (they are the record that a decision was contested), naming the subject by a hash.
    objections = len(
        ctx.session.scalars(
            update(Objection)
            .where(Objection.tenant_id == ctx.tenant.id, Objection.subject_id == subject)
            .values(subject_id=subject_hash(subject))
            .returning(Objection.id)
        ).all()
    )
    request.status = "completed"
    request.completed_at = datetime.now(UTC)
    request.subject_id = subject_hash(subject)
    report: dict[str, object] = {
        "datasets": erased_datasets,
        "feature_stores": erased_stores,
        "training_views": erased_views,
        "feature_files": feature_files,
        "verified": True,
        "flagged_model_versions": flagged,
        "objections_pseudonymised": objections,
    }
    request.verification = report
    return Outcome({"request_id": request.id, "status": "completed", **report})
