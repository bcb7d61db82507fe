"""Training submissions, signing, exports, deployments and their approvals."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from falaj.core.actions import (
    Action,
    ActionKind,
    ApprovalVotePayload,
    ArtifactSign,
    DeploymentPromote,
    DeploymentRef,
    DeploymentRequest,
    ModelVersionExport,
    PrincipalRef,
    RunRef,
    SigningKeyCreate,
    TrainingSubmit,
)
from falaj.core.artifacts import materialize
from falaj.core.datasets import write_view
from falaj.core.domain import (
    ApprovalRequest,
    ApprovalVote,
    Backend,
    Deployment,
    ModelSignature,
    SigningKey,
    TrainingRun,
)
from falaj.core.errors import BackendError, ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, add_lineage, after_commit, handles, typed
from falaj.core.keys import master_key
from falaj.core.policy.facts import consented_subjects, latest_dataset, model_version


# -- training -----------------------------------------------------------------------------------------------
@handles(ActionKind.TRAINING_SUBMIT)
def submit_training(ctx: HandlerContext) -> Outcome:
    """Start a training run on a compute backend with only the data the decision allowed."""
    p: TrainingSubmit = typed(ctx, TrainingSubmit)
    views: list[Path] = []
    try:
        return _submit_training(ctx, p, views)
    except BaseException:
        # Nothing of a failed submission survives: its consent views go with the rolled-back run.
        for folder in {v.parent for v in views}:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _submit_training(ctx: HandlerContext, p: TrainingSubmit, views: list[Path]) -> Outcome:
    backend = ctx.backend(p.backend, "compute")
    compute = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    run = TrainingRun(
        tenant_id=ctx.tenant.id,
        name=p.name,
        backend_id=backend.id,
        requested_by=ctx.principal.id,
        spec=p.spec,
        inputs=list(p.inputs),
        status="queued",
    )
    ctx.session.add(run)
    ctx.session.flush()
    now = datetime.now(UTC)
    modes = ctx.plane.bundle.legal_bases
    inputs = []
    for name in p.inputs:
        ds = latest_dataset(ctx.session, ctx.tenant.id, name)
        assert ds is not None  # the decision already checked every input exists
        entry: dict[str, Any] = {
            "dataset": ds.name,
            "version": ds.version,
            "classification": ds.classification,
        }
        if modes.get(ds.legal_basis or "") == "filter" and ds.uri and ds.subject_column:
            # The backend gets a view holding only subjects whose consent for the purpose is valid now.
            allowed = consented_subjects(ctx.session, ctx.tenant.id, ds.id, p.purpose, now)
            view = ctx.plane.settings.home / "views" / ctx.tenant.slug / run.id / f"{ds.name}-v{ds.version}.csv"
            root = ctx.plane.settings.data_dir / ctx.tenant.slug
            views.append(view)
            path, kept, dropped = write_view(ds.uri, ds.subject_column, allowed, view, root, ds.digest)
            entry.update(uri=path.as_uri(), rows=kept, excluded_rows=dropped, consent_filtered=True)
        else:
            entry.update(uri=ds.uri, consent_filtered=False)
        inputs.append(entry)
        add_lineage(ctx, ("dataset", ds.id), ("training_run", run.id), "trained_on")
    if p.features is not None:
        inputs.append(_feature_input(ctx, p, run, views))
    job = {
        "run_id": run.id,
        "tenant": ctx.tenant.slug,
        "name": p.name,
        "purpose": p.purpose,
        "spec": p.spec,
        "inputs": inputs,
    }
    try:
        handle = compute.submit(job)
    except ValueError as exc:  # the backend checked the spec before starting anything
        raise ValidationError(f"spec: {exc}") from exc
    except Exception as exc:
        raise BackendError(f"compute backend {p.backend!r} refused the job: {exc}") from exc
    if not isinstance(handle, str) or not handle:
        raise BackendError(f"compute backend {p.backend!r} returned {handle!r} instead of a job handle")
    run.status = "submitted"
    run.spec = {**p.spec, "handle": handle}
    excluded = sum(i.get("excluded_rows", 0) for i in inputs)
    return Outcome({"run_id": run.id, "handle": handle, "inputs": inputs, "excluded_rows": excluded})


def _feature_input(ctx: HandlerContext, p: TrainingSubmit, run: TrainingRun, views: list[Path]) -> dict[str, Any]:
    """Training data from the feature store: a point-in-time join of the entity dataset (which holds the label)
    with the feature service, consent-filtered for the run's purpose, handed to the backend as a CSV view."""
    from falaj.core.features import registry as reg
    from falaj.core.features.retrieval import entity_table, join, selections_for, write_subjects_sidecar

    assert p.features is not None
    selections = selections_for(ctx, p.features.feature_service, [])
    entities, entity_source = entity_table(ctx, None, p.features.entity_dataset)
    table, info = join(
        ctx,
        selections,
        entities,
        purpose=p.purpose,
        timestamp_column=p.features.timestamp_column,
        full_feature_names=False,
        entity_source=entity_source,
    )
    import pyarrow.csv as pacsv

    view = ctx.plane.settings.home / "views" / ctx.tenant.slug / run.id / f"features-{p.features.feature_service}.csv"
    view.parent.mkdir(parents=True, exist_ok=True)
    views.append(view)
    pacsv.write_csv(table, view)
    write_subjects_sidecar(view, info["subject_columns"])
    seen: set[str] = set()
    if entity_source is not None:  # the labels are training data too
        seen.add(entity_source.id)
        add_lineage(ctx, ("dataset", entity_source.id), ("training_run", run.id), "trained_on")
    for sel in selections:
        for source in [
            sel.view,
            *(reg.view_version(ctx.session, ctx.tenant.id, s["view"], s["version"]) for s in sel.view.sources),
        ]:
            if source.id not in seen:
                seen.add(source.id)
                add_lineage(ctx, ("feature_view", source.id), ("training_run", run.id), "trained_on_features")
            for ds in reg.source_datasets(ctx.session, source):
                if ds.id not in seen:
                    seen.add(ds.id)
                    add_lineage(ctx, ("dataset", ds.id), ("training_run", run.id), "trained_on")
    return {
        "dataset": f"features:{p.features.feature_service}",
        "feature_service": p.features.feature_service,
        "views": info["views"],
        "uri": view.as_uri(),
        "rows": info["rows"],
        "excluded_rows": info["excluded_rows"],
        "consent_filtered": info["consent_filtered"],
    }


@handles(ActionKind.TRAINING_CANCEL)
def cancel_training(ctx: HandlerContext) -> Outcome:
    p: RunRef = typed(ctx, RunRef)
    run = ctx.session.get(TrainingRun, p.run_id)
    if run is None or run.tenant_id != ctx.tenant.id:
        raise NotFoundError(f"no training run {p.run_id} in tenant {ctx.tenant.slug!r}")
    status = ctx.plane.training_status(ctx.session, ctx.tenant.slug, run)
    if status.state in ("succeeded", "failed", "cancelled"):
        raise ConflictError(f"training run {p.run_id} already ended: {status.state}")
    backend = ctx.session.get(Backend, run.backend_id)
    assert backend is not None
    ctx.plane.backend_instance(ctx.tenant.slug, backend).cancel(run.spec["handle"])
    run.status = "cancelled"
    run.finished_at = datetime.now(UTC)
    return Outcome({"run_id": run.id, "status": "cancelled"})


# -- signing keys, signatures, exports ------------------------------------------------------------------------
@handles(ActionKind.SIGNING_KEY_CREATE)
def create_signing_key(ctx: HandlerContext) -> Outcome:
    from falaj.core import signing

    p: SigningKeyCreate = typed(ctx, SigningKeyCreate)
    private, public = signing.generate_key(master_key(ctx.plane.settings))
    kid = signing.key_id(public)
    ctx.session.add(
        SigningKey(
            tenant_id=ctx.tenant.id,
            key_id=kid,
            owner=p.owner,
            public_key_pem=public.decode(),
            private_key_pem=private.decode(),
        )
    )
    return Outcome({"key_id": kid, "owner": p.owner, "public_key_pem": public.decode()})


@handles(ActionKind.ARTIFACT_SIGN)
def sign_artifact(ctx: HandlerContext) -> Outcome:
    from falaj.core import signing

    p: ArtifactSign = typed(ctx, ArtifactSign)
    mv = model_version(ctx.session, ctx.tenant.id, p.model, p.version)
    if mv is None:
        raise NotFoundError(f"model {p.model!r} has no version {p.version}")
    if p.key_id == signing.SIGSTORE:
        return _sign_keyless(ctx, p, mv)
    key = ctx.session.scalar(
        select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == p.key_id)
    )
    if key is None:
        raise NotFoundError(f"no signing key {p.key_id!r} in tenant {ctx.tenant.slug!r}")
    if key.revoked_at is not None:
        raise ValidationError(f"signing key {p.key_id} is revoked")
    if p.signature_bundle is not None:
        return _attach_bundle(ctx, p, mv, key)
    if key.private_key_pem is None:
        raise ValidationError(
            f"Falaj does not hold the private half of {p.key_id}: sign offline and register "
            "the version with its signature_bundle"
        )
    backend = ctx.session.get(Backend, mv.storage_backend_id)
    assert backend is not None
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    with tempfile.TemporaryDirectory() as tmp:
        folder = materialize(store, ctx.tenant.slug, mv.artifact_digest, Path(tmp) / "model")
        bundle = signing.sign_folder(folder, key.private_key_pem.encode(), master_key(ctx.plane.settings))
    problem = ctx.plane.verify_signature(ctx.session, ctx.tenant.slug, mv, bundle, key.public_key_pem)
    if problem:
        raise BackendError(f"the new signature does not verify: {problem}")
    return _keep_signature(ctx, p, mv, key, bundle)


def _keep_signature(ctx: HandlerContext, p: ArtifactSign, mv: Any, key: SigningKey, bundle: dict[str, Any]) -> Outcome:
    """Store a verified signature of ``mv`` by ``key`` (replacing that key's earlier one) and make it current."""
    existing = ctx.session.scalar(
        select(ModelSignature).where(ModelSignature.model_version_id == mv.id, ModelSignature.key_id == key.key_id)
    )
    if existing is not None:
        existing.bundle = bundle
    else:
        ctx.session.add(
            ModelSignature(model_version_id=mv.id, key_id=key.key_id, bundle=bundle, signed_by=ctx.principal.label)
        )
    mv.signature_bundle, mv.signer = bundle, key.key_id
    return Outcome({"model": p.model, "version": p.version, "key_id": key.key_id, "signer": key.owner})


def _attach_bundle(ctx: HandlerContext, p: ArtifactSign, mv: Any, key: SigningKey) -> Outcome:
    """Attach a signature made offline: it must verify against the stored files with the registered key."""
    assert p.signature_bundle is not None
    bundle = dict(p.signature_bundle)
    problem = ctx.plane.verify_signature(ctx.session, ctx.tenant.slug, mv, bundle, key.public_key_pem)
    if problem:
        raise ValidationError(f"signature_bundle does not verify with {key.key_id}: {problem}")
    return _keep_signature(ctx, p, mv, key, bundle)


def _sign_keyless(ctx: HandlerContext, p: ArtifactSign, mv: Any) -> Outcome:
    from falaj.core import signing

    policy = ctx.plane.bundle.signer_policy(ctx.tenant.slug)
    if not policy.keyless:
        raise ValidationError(
            f"Sigstore keyless signing is not configured for tenant {ctx.tenant.slug!r}: add trusted identities "
            "(keyless = [{identity, issuer}]) to signers.toml"
        )
    if not p.identity_token:
        raise ValidationError("Sigstore keyless signing needs an identity_token (an OIDC token for the signer)")
    backend = ctx.session.get(Backend, mv.storage_backend_id)
    assert backend is not None
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    with tempfile.TemporaryDirectory() as tmp:
        folder = materialize(store, ctx.tenant.slug, mv.artifact_digest, Path(tmp) / "model")
        bundle = signing.sign_folder_keyless(folder, p.identity_token)
    ctx.session.add(
        ModelSignature(model_version_id=mv.id, key_id=signing.SIGSTORE, bundle=bundle, signed_by=ctx.principal.label)
    )
    mv.signature_bundle, mv.signer = bundle, signing.SIGSTORE
    return Outcome({"model": p.model, "version": p.version, "key_id": signing.SIGSTORE})


@handles(ActionKind.MODEL_VERSION_EXPORT)
def export_model_version(ctx: HandlerContext) -> Outcome:
    """Write the artifact, its signature bundles and the signers' public keys for `model_signing verify`."""
    p: ModelVersionExport = typed(ctx, ModelVersionExport)
    mv = model_version(ctx.session, ctx.tenant.id, p.model, p.version)
    if mv is None:
        raise NotFoundError(f"model {p.model!r} has no version {p.version}")
    out = ctx.export_folder(p.destination)
    backend = ctx.session.get(Backend, mv.storage_backend_id)
    assert backend is not None
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    materialize(store, ctx.tenant.slug, mv.artifact_digest, out / "model")
    signatures = []
    for sig in ctx.session.scalars(select(ModelSignature).where(ModelSignature.model_version_id == mv.id)):
        key = ctx.session.scalar(
            select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == sig.key_id)
        )
        stem = sig.key_id.replace(":", "-")[:22]
        (out / f"{stem}.sig").write_text(json.dumps(sig.bundle), "utf-8")
        if key is not None:
            (out / f"{stem}.pub").write_text(key.public_key_pem, "utf-8")
        signatures.append(
            {
                "key_id": sig.key_id,
                "bundle": f"{stem}.sig",
                "public_key": f"{stem}.pub",
                "revoked": key is not None and key.revoked_at is not None,
            }
        )
    commands = [
        f"model_signing verify key model --signature {s['bundle']} --public_key {s['public_key']}" for s in signatures
    ]
    (out / "VERIFY.txt").write_text("Run from this folder:\n" + "\n".join(commands) + "\n", "utf-8")
    return Outcome({"destination": str(out.resolve()), "signatures": signatures, "verify": commands})


# -- deployments and approvals ---------------------------------------------------------------------------------
def _versions(ctx: HandlerContext, traffic: list[Any]) -> list[dict[str, Any]]:
    if sum(v.weight for v in traffic if not v.shadow) != 100:
        raise ValidationError("the weights of the non-shadow variants must add up to 100")
    return [{"model": v.model, "version": v.version, "weight": v.weight, "shadow": v.shadow} for v in traffic]


def _new_deployment(ctx: HandlerContext, status: str) -> Deployment:
    p: DeploymentRequest = typed(ctx, DeploymentRequest)
    exists = ctx.session.scalar(
        select(Deployment.id).where(Deployment.tenant_id == ctx.tenant.id, Deployment.name == p.name)
    )
    if exists is not None:
        raise ConflictError(f"deployment {p.name!r} already exists")
    runtime = ctx.backend(p.runtime_backend, "serving")
    row = Deployment(
        tenant_id=ctx.tenant.id,
        name=p.name,
        environment=p.environment,
        runtime_backend_id=runtime.id,
        traffic=_versions(ctx, p.traffic),
        status=status,
        requested_by=ctx.principal.id,
        human_review_contact=p.human_review_contact,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return row


def _rollout_later(ctx: HandlerContext, deployment: str, requester: str) -> None:
    """Once committed, run the rollout through execute again: every policy is checked at that moment."""
    plane, tenant = ctx.plane, ctx.tenant.slug

    def rollout() -> None:
        plane.execute(
            Action(
                ActionKind.DEPLOYMENT_ROLLOUT.value,
                tenant,
                PrincipalRef(requester),
                {"name": deployment},
                {"source": "approval-quorum"},
            )
        )

    after_commit(ctx, rollout)


def _execute_later(ctx: HandlerContext, kind: ActionKind, payload: dict[str, Any], requester: str) -> None:
    plane, tenant = ctx.plane, ctx.tenant.slug

    def run() -> None:
        plane.execute(Action(kind.value, tenant, PrincipalRef(requester), payload, {"source": "approval-quorum"}))

    after_commit(ctx, run)


def _live(ctx: HandlerContext, name: str) -> Deployment:
    deployment = ctx.named(Deployment, name)
    if deployment.status != "live":
        raise ConflictError(f"deployment {name!r} is {deployment.status}: only a live deployment changes its traffic")
    return deployment


def _serve(ctx: HandlerContext, deployment: Deployment) -> str:
    runtime_row = ctx.session.get(Backend, deployment.runtime_backend_id)
    assert runtime_row is not None
    endpoint = ctx.plane.backend_instance(ctx.tenant.slug, runtime_row).deploy(
        _serving_spec(ctx, deployment, runtime_row)
    )
    if not isinstance(endpoint, str) or not endpoint:
        raise BackendError(f"serving runtime {runtime_row.name!r} returned {endpoint!r} instead of an endpoint")
    deployment.endpoint = endpoint
    return endpoint


def _ask_approval(
    ctx: HandlerContext, deployment: Deployment, kind: ActionKind, payload: dict[str, Any]
) -> ApprovalRequest:
    """An approval request for ``kind`` on ``deployment``, under its environment's rule, by this principal."""
    rule = ctx.plane.bundle.approval_rule(ctx.tenant.slug, deployment.environment)
    assert rule is not None
    request = ApprovalRequest(
        tenant_id=ctx.tenant.id,
        action_kind=kind.value,
        action_payload=payload,
        resource=f"deployment/{deployment.name}",
        environment=deployment.environment,
        deployment_id=deployment.id,
        requester_id=ctx.principal.id,
        quorum=rule.quorum,
        approver_role=rule.approver_role,
        rejections_to_end=rule.rejections_to_end,
        expires_at=datetime.now(UTC) + timedelta(hours=rule.expires_hours),
    )
    ctx.session.add(request)
    ctx.session.flush()
    return request


@handles(ActionKind.DEPLOYMENT_PROMOTE, pending=True)
def promote_pending(ctx: HandlerContext) -> Outcome:
    """A new traffic split for a live deployment in an environment that needs approval: ask for it."""
    from falaj.core.policy.facts import promotion_payload

    p: DeploymentPromote = typed(ctx, DeploymentPromote)
    deployment = _live(ctx, p.name)
    payload = promotion_payload(p)
    existing = ctx.session.scalar(
        select(ApprovalRequest).where(
            ApprovalRequest.deployment_id == deployment.id,
            ApprovalRequest.action_kind == ActionKind.DEPLOYMENT_PROMOTE.value,
            ApprovalRequest.status == "pending",
        )
    )
    if existing is not None:
        if existing.action_payload == payload:
            return Outcome({"deployment": p.name, "status": "pending-approval", "approval_request_id": existing.id})
        raise ConflictError(
            f"deployment {p.name!r} already has a promotion waiting for approval ({existing.id}): vote on it first"
        )
    request = _ask_approval(ctx, deployment, ActionKind.DEPLOYMENT_PROMOTE, payload)
    return Outcome(
        {
            "deployment": p.name,
            "status": "pending-approval",
            "approval_request_id": request.id,
            "quorum": request.quorum,
        }
    )


@handles(ActionKind.DEPLOYMENT_PROMOTE)
def promote(ctx: HandlerContext) -> Outcome:
    """Serve a new traffic split (approved where the environment needs it); the old one is kept for rollback."""
    from falaj.core.policy.facts import promotion_payload

    p: DeploymentPromote = typed(ctx, DeploymentPromote)
    deployment = _live(ctx, p.name)
    previous = list(deployment.traffic)
    deployment.traffic = [v.model_dump(mode="json") for v in p.traffic]
    deployment.traffic_history = [*deployment.traffic_history, previous][-20:]
    endpoint = _serve(ctx, deployment)
    approved = ctx.session.scalar(
        select(ApprovalRequest).where(
            ApprovalRequest.deployment_id == deployment.id,
            ApprovalRequest.action_kind == ActionKind.DEPLOYMENT_PROMOTE.value,
            ApprovalRequest.status == "approved",
        )
    )
    if approved is not None and approved.action_payload == promotion_payload(p):
        approved.status = "applied"  # one approval, one promotion
    return Outcome({"deployment": p.name, "traffic": deployment.traffic, "previous": previous, "endpoint": endpoint})


@handles(ActionKind.DEPLOYMENT_ROLLBACK)
def rollback(ctx: HandlerContext) -> Outcome:
    """Go back to the split served before the last promotion. Needs no approval: it was approved before."""
    p: DeploymentRef = typed(ctx, DeploymentRef)
    deployment = _live(ctx, p.name)
    if not deployment.traffic_history:
        raise ConflictError(f"deployment {p.name!r} has no earlier traffic split to roll back to")
    current = list(deployment.traffic)
    *rest, previous = deployment.traffic_history
    deployment.traffic, deployment.traffic_history = list(previous), list(rest)
    endpoint = _serve(ctx, deployment)
    return Outcome({"deployment": p.name, "traffic": deployment.traffic, "replaced": current, "endpoint": endpoint})


@handles(ActionKind.DEPLOYMENT_REQUEST, pending=True)
def request_deployment_pending(ctx: HandlerContext) -> Outcome:
    p: DeploymentRequest = typed(ctx, DeploymentRequest)
    deployment = _new_deployment(ctx, "pending-approval")
    request = _ask_approval(ctx, deployment, ActionKind.DEPLOYMENT_ROLLOUT, {"name": p.name})
    return Outcome(
        {
            "deployment": p.name,
            "status": "pending-approval",
            "approval_request_id": request.id,
            "quorum": request.quorum,
            "expires_at": request.expires_at.isoformat(),
        }
    )


@handles(ActionKind.DEPLOYMENT_REQUEST)
def request_deployment(ctx: HandlerContext) -> Outcome:
    """An environment that needs no approval: the deployment rolls out right after this commits."""
    p: DeploymentRequest = typed(ctx, DeploymentRequest)
    _new_deployment(ctx, "approved")
    _rollout_later(ctx, p.name, ctx.principal.id)
    return Outcome({"deployment": p.name, "status": "approved"})


@handles(ActionKind.APPROVAL_VOTE)
def vote(ctx: HandlerContext) -> Outcome:
    p: ApprovalVotePayload = typed(ctx, ApprovalVotePayload)
    # Lock the request: two approvers voting at the same instant serialise here and exactly one of them
    # sees the quorum reached (the unique (request, approver) constraint backs "one vote each").
    request = ctx.session.scalar(select(ApprovalRequest).where(ApprovalRequest.id == p.request_id).with_for_update())
    if request is None or request.tenant_id != ctx.tenant.id:
        raise NotFoundError(f"no approval request {p.request_id}")
    if request.status != "pending":
        raise ConflictError(f"the request is already {request.status}")
    ctx.session.add(ApprovalVote(request_id=request.id, approver_id=ctx.principal.id, vote=p.vote, comment=p.comment))
    ctx.session.flush()
    counts = dict(
        ctx.session.execute(
            select(ApprovalVote.vote, func.count())
            .where(ApprovalVote.request_id == request.id)
            .group_by(ApprovalVote.vote)
        ).all()
    )
    approvals, rejections = counts.get("approve", 0), counts.get("reject", 0)
    transition = None
    deployment = ctx.session.get(Deployment, request.deployment_id) if request.deployment_id else None
    if rejections >= request.rejections_to_end:
        transition = "rejected"
    elif approvals >= request.quorum:
        transition = "approved"
    if transition is not None:
        request.status = transition
        request.decided_at = datetime.now(UTC)
        if request.action_kind == ActionKind.DEPLOYMENT_PROMOTE.value:
            # A promotion of a live deployment: the deployment keeps serving; once approved, the promotion
            # runs as its requester and is decided again (signatures, residency, this approval).
            if transition == "approved":
                _execute_later(ctx, ActionKind.DEPLOYMENT_PROMOTE, dict(request.action_payload), request.requester_id)
        elif deployment is not None:
            deployment.status = transition
            if transition == "approved":
                _rollout_later(ctx, deployment.name, request.requester_id)
    return Outcome(
        {
            "request_id": request.id,
            "vote": p.vote,
            "approvals": approvals,
            "rejections": rejections,
            "quorum": request.quorum,
            "status": request.status,
            "transition": transition,
        }
    )


def _serving_spec(ctx: HandlerContext, deployment: Deployment, runtime: Backend) -> dict[str, Any]:
    """What a serving runtime gets: each variant's artifact folder (copied out of the store, every file
    integrity-checked on the way), its manifest, its signatures and the public keys the tenant trusts for
    them, so the runtime can check it all again before it loads anything."""
    from falaj.core.artifacts import read_manifest

    policy = ctx.plane.bundle.signer_policy(ctx.tenant.slug)
    root = ctx.plane.settings.home / "serving" / ctx.tenant.slug / deployment.name
    variants = []
    for v in deployment.traffic:
        mv = model_version(ctx.session, ctx.tenant.id, v["model"], v["version"])
        if mv is None:
            raise NotFoundError(f"model {v['model']!r} has no version {v['version']}")
        signatures, trusted = [], {}
        for sig in ctx.session.scalars(select(ModelSignature).where(ModelSignature.model_version_id == mv.id)):
            signatures.append({"key_id": sig.key_id, "bundle": sig.bundle})
            key = ctx.session.scalar(
                select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == sig.key_id)
            )
            if (
                key is not None
                and key.revoked_at is None
                and (policy.trust == "registered" or key.key_id in policy.keys)
            ):
                trusted[key.key_id] = key.public_key_pem
        store_row = ctx.session.get(Backend, mv.storage_backend_id)
        if store_row is None:
            raise NotFoundError(f"the storage backend of {v['model']} v{v['version']} is gone")
        store = ctx.plane.backend_instance(ctx.tenant.slug, store_row)
        folder = root / f"{v['model']}-v{v['version']}-{mv.artifact_digest[7:19]}"
        if not folder.exists():
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            materialize(store, ctx.tenant.slug, mv.artifact_digest, staging)
            staging.rename(folder)
        variants.append(
            {
                **v,
                "artifact_digest": mv.artifact_digest,
                "storage_backend_id": mv.storage_backend_id,
                "artifact_path": str(folder),
                "manifest": read_manifest(store, ctx.tenant.slug, mv.artifact_digest),
                "signatures": signatures,
                "trusted_keys": trusted,
            }
        )
    return {
        "name": deployment.name,
        "tenant": ctx.tenant.slug,
        "environment": deployment.environment,
        "variants": variants,
        "human_review_contact": deployment.human_review_contact,
        # Sticky routing hashes a request key with this salt: stable for the deployment, unguessable outside.
        "sticky_salt": hashlib.sha256(f"falaj-sticky/{deployment.id}".encode()).hexdigest(),
        "settings": dict(runtime.settings),
    }


@handles(ActionKind.DEPLOYMENT_ROLLOUT)
def rollout(ctx: HandlerContext) -> Outcome:
    p: DeploymentRef = typed(ctx, DeploymentRef)
    deployment = ctx.named(Deployment, p.name)
    if deployment.status != "approved":
        raise ConflictError(
            f"deployment {p.name!r} is {deployment.status}: only an approved deployment rolls out (request a new one)"
        )
    runtime_row = ctx.session.get(Backend, deployment.runtime_backend_id)
    assert runtime_row is not None
    runtime = ctx.plane.backend_instance(ctx.tenant.slug, runtime_row)
    endpoint = runtime.deploy(_serving_spec(ctx, deployment, runtime_row))
    if not isinstance(endpoint, str) or not endpoint:
        raise BackendError(f"serving runtime {runtime_row.name!r} returned {endpoint!r} instead of an endpoint")
    deployment.status = "live"
    deployment.endpoint = endpoint
    return Outcome({"deployment": p.name, "status": "live", "endpoint": endpoint, "region": runtime_row.region})


@handles(ActionKind.DEPLOYMENT_RETIRE)
def retire(ctx: HandlerContext) -> Outcome:
    p: DeploymentRef = typed(ctx, DeploymentRef)
    deployment = ctx.named(Deployment, p.name)
    if deployment.status == "live":
        runtime_row = ctx.session.get(Backend, deployment.runtime_backend_id)
        assert runtime_row is not None
        ctx.plane.backend_instance(ctx.tenant.slug, runtime_row).undeploy(deployment.name)
    deployment.status = "retired"
    return Outcome({"deployment": p.name, "status": "retired"})
