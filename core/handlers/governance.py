"""Cost, budgets, signing keys, policy reload and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from falaj.core.actions import (
    ActionKind,
    AuditExport,
    BudgetSet,
    CostRecordPayload,
    SigningKeyRegister,
    SigningKeyRevoke,
)
from falaj.core.domain import (
    Budget,
    CostRecord,
    Deployment,
    ModelSignature,
    PolicyBundleRecord,
    SigningKey,
    new_id,
)
from falaj.core.errors import ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed
from falaj.core.policy import PolicyBundle, PolicyError, load_bundle
from falaj.core.policy.facts import model_version


@handles(ActionKind.COST_RECORD)
def record_cost(ctx: HandlerContext) -> Outcome:
    p: CostRecordPayload = typed(ctx, CostRecordPayload)
    backend_id = ctx.backend(p.backend, "cost").id if p.backend else None
    row = CostRecord(
        id=new_id(),
        tenant_id=ctx.tenant.id,
        operation_id=ctx.operation_id,
        backend_id=backend_id,
        resource=p.resource,
        amount=p.amount,
        currency=p.currency,
    )
    ctx.session.add(row)
    return Outcome({"cost_id": row.id, "amount": str(p.amount), "currency": p.currency})


@handles(ActionKind.BUDGET_SET)
def set_budget(ctx: HandlerContext) -> Outcome:
    p: BudgetSet = typed(ctx, BudgetSet)
    row = ctx.session.scalar(select(Budget).where(Budget.tenant_id == ctx.tenant.id, Budget.period == p.period))
    if row is None:
        row = Budget(tenant_id=ctx.tenant.id, period=p.period, limit_amount=p.limit_amount, currency=p.currency)
        ctx.session.add(row)
    else:
        row.limit_amount, row.currency = p.limit_amount, p.currency
    return Outcome({"period": p.period, "limit_amount": str(p.limit_amount), "currency": p.currency})


@handles(ActionKind.SIGNING_KEY_REGISTER)
def register_signing_key(ctx: HandlerContext) -> Outcome:
    """Trust an external signer's public key (they sign offline; Falaj verifies)."""
    from falaj.core import signing

    p: SigningKeyRegister = typed(ctx, SigningKeyRegister)
    pem = signing.canonical_public_pem(p.public_key_pem.encode("utf-8"))
    kid = signing.key_id(pem)
    if p.key_id != kid:
        raise ValidationError(f"key_id must be the key's fingerprint, {kid} (SHA-256 of its PEM)")
    exists = ctx.session.scalar(
        select(SigningKey.id).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == kid)
    )
    if exists is not None:
        raise ConflictError(f"signing key {kid} is already registered")
    ctx.session.add(SigningKey(tenant_id=ctx.tenant.id, key_id=kid, owner=p.owner, public_key_pem=pem.decode()))
    return Outcome({"key_id": kid, "owner": p.owner})


@handles(ActionKind.SIGNING_KEY_REVOKE)
def revoke_signing_key(ctx: HandlerContext) -> Outcome:
    """Revoke a key: new rollouts of what it alone signed are blocked; live deployments are flagged."""
    p: SigningKeyRevoke = typed(ctx, SigningKeyRevoke)
    row = ctx.session.scalar(
        select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == p.key_id)
    )
    if row is None:
        raise NotFoundError(f"no signing key {p.key_id!r} in tenant {ctx.tenant.slug!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    ctx.session.flush()
    flagged = []
    live = ctx.session.scalars(
        select(Deployment).where(Deployment.tenant_id == ctx.tenant.id, Deployment.status == "live")
    )
    for deployment in live:
        for variant in deployment.traffic:
            mv = model_version(ctx.session, ctx.tenant.id, variant["model"], variant["version"])
            if mv is None:
                continue
            keys = ctx.session.scalars(
                select(ModelSignature.key_id).where(ModelSignature.model_version_id == mv.id)
            ).all()
            if p.key_id not in keys:
                continue
            others = ctx.session.scalar(
                select(SigningKey.id)
                .where(
                    SigningKey.tenant_id == ctx.tenant.id,
                    SigningKey.key_id.in_([k for k in keys if k != p.key_id]),
                    SigningKey.revoked_at.is_(None),
                )
                .limit(1)
            )
            if others is None:
                deployment.flags = [
                    *deployment.flags,
                    {
                        "type": "signing-key-revoked",
                        "key_id": p.key_id,
                        "model": variant["model"],
                        "version": variant["version"],
                        "at": datetime.now(UTC).isoformat(),
                    },
                ]
                flagged.append(deployment.name)
                break
    return Outcome({"key_id": p.key_id, "revoked_at": row.revoked_at.isoformat(), "flagged_deployments": flagged})


@handles(ActionKind.POLICY_RELOAD)
def reload_policy(ctx: HandlerContext) -> Outcome:
    try:
        bundle = load_bundle(ctx.plane.settings.policy_dir)
    except PolicyError as exc:
        raise ValidationError(f"policy bundle refused, the bundle in force stays: {exc}") from exc
    previous = ctx.plane.bundle.digest
    record_bundle(ctx.session, bundle, ctx.principal.id)
    # Swap only once this transaction commits, so a failed reload leaves the old bundle in force.
    ctx.session.info.setdefault("falaj.after_commit", []).append(lambda: ctx.plane.use_bundle(bundle))
    return Outcome({"previous_digest": previous, "digest": bundle.digest, "version": bundle.version})


@handles(ActionKind.AUDIT_VERIFY)
def verify_audit(ctx: HandlerContext) -> Outcome:
    report = ctx.plane.audit.verify(ctx.plane.engine)
    return Outcome(report.as_dict())


@handles(ActionKind.AUDIT_EXPORT)
def export_audit(ctx: HandlerContext) -> Outcome:
    p: AuditExport = typed(ctx, AuditExport)
    folder = ctx.export_folder(p.destination)
    manifest = ctx.plane.audit.export(ctx.plane.engine, folder)
    return Outcome(
        {"destination": str(folder.resolve()), "events": manifest["events"], "head_seq": manifest["head_seq"]}
    )


def record_bundle(session: Session, bundle: PolicyBundle, loaded_by: str) -> None:
    """Store the bundle's files and make it the one in force for every worker (activated now)."""
    row = session.scalar(select(PolicyBundleRecord).where(PolicyBundleRecord.digest == bundle.digest))
    if row is None:
        row = PolicyBundleRecord(
            digest=bundle.digest,
            source=bundle.source,
            files={name: data.decode("utf-8") for name, data in bundle.files.items()},
            loaded_by=loaded_by,
        )
        session.add(row)
    row.activated_at = datetime.now(UTC)
