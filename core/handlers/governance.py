"""Cost, budgets, signing keys, policy reload and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from falaj.core.actions import (
    ActionKind,
    AuditExport,
    BudgetSet,
    CostRecordPayload,
    SigningKeyRegister,
    SigningKeyRevoke,
)
from falaj.core.domain import Budget, CostRecord, PolicyBundleRecord, SigningKey, new_id
from falaj.core.errors import ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed
from falaj.core.policy import PolicyError, load_bundle


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
    row = ctx.session.scalar(
        select(Budget).where(Budget.tenant_id == ctx.tenant.id, Budget.period == p.period)
    )
    if row is None:
        row = Budget(
            tenant_id=ctx.tenant.id, period=p.period, limit_amount=p.limit_amount, currency=p.currency
        )
        ctx.session.add(row)
    else:
        row.limit_amount, row.currency = p.limit_amount, p.currency
    return Outcome({"period": p.period, "limit_amount": str(p.limit_amount), "currency": p.currency})


@handles(ActionKind.SIGNING_KEY_REGISTER)
def register_signing_key(ctx: HandlerContext) -> Outcome:
    p: SigningKeyRegister = typed(ctx, SigningKeyRegister)
    try:
        serialization.load_pem_public_key(p.public_key_pem.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"public_key_pem is not a PEM public key: {exc}") from exc
    exists = ctx.session.scalar(
        select(SigningKey.id).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == p.key_id)
    )
    if exists is not None:
        raise ConflictError(f"signing key {p.key_id!r} is already registered")
    row = SigningKey(tenant_id=ctx.tenant.id, key_id=p.key_id, owner=p.owner, public_key_pem=p.public_key_pem)
    ctx.session.add(row)
    return Outcome({"key_id": p.key_id, "owner": p.owner})


@handles(ActionKind.SIGNING_KEY_REVOKE)
def revoke_signing_key(ctx: HandlerContext) -> Outcome:
    p: SigningKeyRevoke = typed(ctx, SigningKeyRevoke)
    row = ctx.session.scalar(
        select(SigningKey).where(SigningKey.tenant_id == ctx.tenant.id, SigningKey.key_id == p.key_id)
    )
    if row is None:
        raise NotFoundError(f"no signing key {p.key_id!r} in tenant {ctx.tenant.slug!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return Outcome({"key_id": p.key_id, "revoked_at": row.revoked_at.isoformat()})


@handles(ActionKind.POLICY_RELOAD)
def reload_policy(ctx: HandlerContext) -> Outcome:
    try:
        bundle = load_bundle(ctx.plane.settings.policy_dir)
    except PolicyError as exc:
        raise ValidationError(f"policy bundle refused, the bundle in force stays: {exc}") from exc
    previous = ctx.plane.bundle.digest
    if (
        ctx.session.scalar(select(PolicyBundleRecord.id).where(PolicyBundleRecord.digest == bundle.digest))
        is None
    ):
        ctx.session.add(
            PolicyBundleRecord(
                digest=bundle.digest,
                source=bundle.source,
                files={name: data.decode("utf-8") for name, data in bundle.files.items()},
                loaded_by=ctx.principal.id,
            )
        )
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
    folder = Path(p.destination).expanduser()
    if folder.exists() and any(folder.iterdir()):
        raise ConflictError(f"{folder} is not empty: choose a new folder for the export")
    manifest = ctx.plane.audit.export(ctx.plane.engine, folder)
    return Outcome(
        {"destination": str(folder.resolve()), "events": manifest["events"], "head_seq": manifest["head_seq"]}
    )
