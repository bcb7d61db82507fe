"""Backends, datasets, consent, models and model versions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from falaj.core.actions import (
    ActionKind,
    BackendName,
    BackendRegister,
    ConsentRecordPayload,
    ConsentWithdraw,
    DatasetRegister,
    DatasetRetire,
    ModelAliasSet,
    ModelRegister,
    ModelVersionRegister,
)
from falaj.core.datasets import read_subjects, subject_hash
from falaj.core.domain import (
    Backend,
    ConsentRecord,
    Dataset,
    DatasetSubject,
    LineageEdge,
    Model,
    ModelAlias,
    ModelSignature,
    ModelVersion,
    SigningKey,
    TrainingRun,
)
from falaj.core.errors import BackendError, ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed


@handles(ActionKind.BACKEND_REGISTER)
def register_backend(ctx: HandlerContext) -> Outcome:
    p: BackendRegister = typed(ctx, BackendRegister)
    spec = ctx.plane.registry.backend_spec(p.kind, p.plugin)
    if spec is None:
        available = sorted(ctx.plane.registry.backends.get(p.kind, {}))
        raise ValidationError(f"no {p.kind} plugin named {p.plugin!r} is installed; available: {available or 'none'}")
    exists = ctx.session.scalar(select(Backend.id).where(Backend.tenant_id == ctx.tenant.id, Backend.name == p.name))
    if exists is not None:
        raise ConflictError(f"backend {p.name!r} already exists in tenant {ctx.tenant.slug!r}")
    row = Backend(
        tenant_id=ctx.tenant.id,
        name=p.name,
        kind=p.kind,
        plugin=spec.name,
        region=p.region,
        node_class=p.node_class,
        settings=p.settings,
    )
    ctx.session.add(row)
    ctx.session.flush()
    if p.kind in ("storage", "feature_store"):
        # The tenant's data key for encryption at rest, made in this transaction before anything is stored.
        from falaj.core.datakeys import ensure_data_key
        from falaj.core.keys import master_key

        ensure_data_key(ctx.session.connection(), master_key(ctx.plane.settings), ctx.tenant.slug)
    # Build it once now: a plugin that cannot start with these settings is refused at registration.
    ctx.plane.backend_instance(ctx.tenant.slug, row)
    return Outcome({"backend_id": row.id, "name": row.name, "plugin": spec.name, "region": row.region})


@handles(ActionKind.BACKEND_DISABLE)
def disable_backend(ctx: HandlerContext) -> Outcome:
    p: BackendName = typed(ctx, BackendName)
    row = ctx.session.scalar(select(Backend).where(Backend.tenant_id == ctx.tenant.id, Backend.name == p.name))
    if row is None:
        raise NotFoundError(f"no backend named {p.name!r} in tenant {ctx.tenant.slug!r}")
    row.enabled = False
    return Outcome({"name": row.name, "enabled": False})


@handles(ActionKind.DATASET_REGISTER)
def register_dataset(ctx: HandlerContext) -> Outcome:
    p: DatasetRegister = typed(ctx, DatasetRegister)
    storage_id = None
    if p.storage_backend is not None:
        storage_id = ctx.backend(p.storage_backend, "storage").id
    personal = p.classification in ("personal", "sensitive", "health")
    if personal and not p.subject_column:
        raise ValidationError(
            f"subject_column is required for {p.classification} data, so consent and erasure can find the data subjects"
        )
    if personal and not p.legal_basis:
        raise ValidationError(f"legal_basis is required for {p.classification} data (PDPL Art. 4 or consent)")
    if p.legal_basis and p.legal_basis not in ctx.plane.bundle.legal_bases:
        raise ValidationError(
            f"unknown legal basis {p.legal_basis!r}: known are {sorted(ctx.plane.bundle.legal_bases)}"
        )
    subjects: set[str] = set()
    if p.uri and p.subject_column:
        root = ctx.plane.settings.data_dir / ctx.tenant.slug
        subjects = read_subjects(p.uri, p.subject_column, p.digest, root)
    latest = ctx.session.scalar(
        select(func.max(Dataset.version)).where(Dataset.tenant_id == ctx.tenant.id, Dataset.name == p.name)
    )
    row = Dataset(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=(latest or 0) + 1,
        classification=p.classification,
        residency=p.residency,
        legal_basis=p.legal_basis,
        uri=p.uri,
        storage_backend_id=storage_id,
        schema=p.schema_,
        digest=p.digest,
        subject_column=p.subject_column,
    )
    ctx.session.add(row)
    ctx.session.flush()
    if subjects:
        ctx.session.execute(insert(DatasetSubject), [{"dataset_id": row.id, "subject_id": s} for s in sorted(subjects)])
    return Outcome({"dataset_id": row.id, "name": row.name, "version": row.version, "subjects": len(subjects)})


@handles(ActionKind.DATASET_RETIRE)
def retire_dataset(ctx: HandlerContext) -> Outcome:
    p: DatasetRetire = typed(ctx, DatasetRetire)
    query = select(Dataset).where(Dataset.tenant_id == ctx.tenant.id, Dataset.name == p.name)
    if p.version is not None:
        query = query.where(Dataset.version == p.version)
    rows = list(ctx.session.scalars(query))
    if not rows:
        raise NotFoundError(f"no dataset {p.name!r}" + (f" version {p.version}" if p.version else ""))
    for row in rows:
        row.status = "retired"
    return Outcome({"name": p.name, "retired_versions": sorted(r.version for r in rows)})


@handles(ActionKind.CONSENT_RECORD)
def record_consent(ctx: HandlerContext) -> Outcome:
    p: ConsentRecordPayload = typed(ctx, ConsentRecordPayload)
    granted = p.granted_at or datetime.now(UTC)
    if granted.tzinfo is None:
        raise ValidationError("granted_at must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
    row = ctx.session.scalar(
        select(ConsentRecord).where(
            ConsentRecord.tenant_id == ctx.tenant.id,
            ConsentRecord.subject_id == p.subject_id,
            ConsentRecord.purpose == p.purpose,
        )
    )
    if row is None:
        row = ConsentRecord(
            tenant_id=ctx.tenant.id,
            subject_id=p.subject_id,
            purpose=p.purpose,
            granted_at=granted,
            evidence=p.evidence,
        )
        ctx.session.add(row)
    else:
        # Consent given again after a withdrawal: a fresh grant, evidence replaced.
        row.granted_at, row.withdrawn_at, row.evidence = granted, None, p.evidence
    ctx.session.flush()
    # The operations table keeps what an action returned, and outlives erasure: name the subject by a hash.
    return Outcome({"consent_id": row.id, "subject": subject_hash(p.subject_id), "purpose": p.purpose})


@handles(ActionKind.CONSENT_WITHDRAW)
def withdraw_consent(ctx: HandlerContext) -> Outcome:
    p: ConsentWithdraw = typed(ctx, ConsentWithdraw)
    row = ctx.session.scalar(
        select(ConsentRecord).where(
            ConsentRecord.tenant_id == ctx.tenant.id,
            ConsentRecord.subject_id == p.subject_id,
            ConsentRecord.purpose == p.purpose,
        )
    )
    if row is None:
        raise NotFoundError(f"no consent of subject {p.subject_id!r} for purpose {p.purpose!r}")
    if row.withdrawn_at is None:
        row.withdrawn_at = datetime.now(UTC)
    return Outcome(
        {"subject": subject_hash(p.subject_id), "purpose": p.purpose, "withdrawn_at": row.withdrawn_at.isoformat()}
    )


@handles(ActionKind.MODEL_REGISTER)
def register_model(ctx: HandlerContext) -> Outcome:
    p: ModelRegister = typed(ctx, ModelRegister)
    if ctx.session.scalar(select(Model.id).where(Model.tenant_id == ctx.tenant.id, Model.name == p.name)):
        raise ConflictError(f"model {p.name!r} already exists")
    row = Model(tenant_id=ctx.tenant.id, name=p.name, description=p.description, owner=ctx.principal.id)
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome({"model_id": row.id, "name": row.name})


@handles(ActionKind.MODEL_VERSION_REGISTER)
def register_model_version(ctx: HandlerContext) -> Outcome:
    p: ModelVersionRegister = typed(ctx, ModelVersionRegister)
    model = ctx.named(Model, p.model)
    backend = ctx.backend(p.storage_backend, "storage")
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    run = None
    if p.training_run_id is not None:
        run = ctx.session.get(TrainingRun, p.training_run_id)
        if run is None or run.tenant_id != ctx.tenant.id:
            raise NotFoundError(f"no training run {p.training_run_id}")
    metrics = dict(p.metrics)
    digest = p.artifact_digest
    if digest is None:
        assert run is not None
        digest, run_metrics = _artifact_of_run(ctx, run, store)
        metrics = {**run_metrics, **metrics}
    elif not store.exists(digest, tenant=ctx.tenant.slug):
        raise BackendError(f"artifact {digest} is not in storage backend {p.storage_backend!r}: upload it first")
    latest = ctx.session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    version = ModelVersion(
        model_id=model.id,
        version=(latest or 0) + 1,
        artifact_digest=digest,
        artifact_uri=f"{backend.name}:{digest}",
        storage_backend_id=backend.id,
        training_run_id=p.training_run_id,
        metrics=metrics,
        signature_bundle=p.signature_bundle,
    )
    ctx.session.add(version)
    ctx.session.flush()
    signer = None
    if p.signature_bundle is not None:
        signer = _attach_signature(ctx, version, p.signature_bundle)
    if run is not None:
        ctx.session.add(
            LineageEdge(
                tenant_id=ctx.tenant.id,
                source_type="training_run",
                source_id=run.id,
                target_type="model_version",
                target_id=version.id,
                relation="produced",
            )
        )
    return Outcome(
        {
            "model_version_id": version.id,
            "model": model.name,
            "version": version.version,
            "artifact_digest": digest,
            "metrics": metrics,
            "signed_by": signer,
        }
    )


def _artifact_of_run(ctx: HandlerContext, run: TrainingRun, store: Any) -> tuple[str, dict[str, float]]:
    """Copy a succeeded run's artifact folder into the store; its digest and the run's metrics."""
    from falaj.core.artifacts import put_folder

    status = ctx.plane.training_status(ctx.session, ctx.tenant.slug, run)
    if status.state != "succeeded":
        raise ConflictError(f"training run {run.id} is {status.state}: only a succeeded run's model is registered")
    folder = status.outputs.get("artifact_path")
    if not isinstance(folder, str) or not Path(folder).is_dir():
        raise BackendError(f"training run {run.id} succeeded but its artifact folder is gone")
    digest, _ = put_folder(store, ctx.tenant.slug, Path(folder))
    metrics = {k: float(v) for k, v in status.metrics.items() if isinstance(v, int | float)}
    return digest, metrics


def _attach_signature(ctx: HandlerContext, version: ModelVersion, bundle: dict[str, Any]) -> str:
    """Verify a bundle signed offline against the stored artifact, at registration, and keep it."""
    from falaj.core import signing

    kid = signing.bundle_key_id(bundle)
    key = ctx.session.scalar(select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == kid))
    if key is None:
        raise ValidationError(f"the bundle is signed by {kid}, which is not a registered signing key of the tenant")
    if key.revoked_at is not None:
        raise ValidationError(f"the bundle is signed by revoked key {kid}")
    problem = ctx.plane.verify_signature(ctx.session, ctx.tenant.slug, version, bundle, key.public_key_pem)
    if problem:
        raise ValidationError(f"signature_bundle does not verify against the artifact: {problem}")
    ctx.session.add(
        ModelSignature(model_version_id=version.id, key_id=key.key_id, bundle=bundle, signed_by=ctx.principal.label)
    )
    version.signer = key.key_id
    return key.key_id


@handles(ActionKind.MODEL_ALIAS_SET)
def set_model_alias(ctx: HandlerContext) -> Outcome:
    p: ModelAliasSet = typed(ctx, ModelAliasSet)
    model = ctx.named(Model, p.model)
    version = ctx.session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == p.version)
    )
    if version is None:
        raise NotFoundError(f"model {p.model!r} has no version {p.version}")
    alias = ctx.session.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == p.alias))
    previous = None
    if alias is None:
        ctx.session.add(ModelAlias(model_id=model.id, alias=p.alias, model_version_id=version.id))
    else:
        previous = alias.model_version_id
        alias.model_version_id = version.id
    return Outcome({"model": model.name, "alias": p.alias, "version": p.version, "previous_version_id": previous})
