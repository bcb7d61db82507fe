"""Handlers for integrations: streamed artifact uploads, compliance reports and webhooks."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from falaj.core.actions import (
    ActionKind,
    ArtifactRef,
    ArtifactUpload,
    ReportExport,
    StorageGc,
    WebhookAllowTarget,
    WebhookName,
    WebhookRedeliver,
    WebhookSubscribe,
)
from falaj.core.artifacts import put_file, put_tar
from falaj.core.domain import (
    AuditEvent,
    ComplianceReportRecord,
    WebhookAllowEntry,
    WebhookDelivery,
    WebhookSubscription,
    new_id,
    utcnow,
)
from falaj.core.errors import ConflictError, FalajError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed
from falaj.core.keys import AuditSigner, master_key


def staged_upload(ctx: HandlerContext, upload_id: str) -> Path:
    root = (ctx.plane.settings.uploads_dir / ctx.tenant.slug).resolve()
    path = (root / f"{upload_id}.part").resolve()
    if path.parent != root or not path.is_file():
        raise NotFoundError(f"no staged upload {upload_id}: upload the bytes first (PUT .../artifacts/uploads)")
    return path


def _sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


@handles(ActionKind.ARTIFACT_UPLOAD)
def upload_artifact(ctx: HandlerContext) -> Outcome:
    p: ArtifactUpload = typed(ctx, ArtifactUpload)
    backend = ctx.backend(p.storage_backend, "storage")
    staged = staged_upload(ctx, p.upload_id)
    digest, size = _sha256_of(staged)
    if (digest, size) != (p.sha256, p.size):
        raise ValidationError(
            f"the staged upload is {size} bytes with {digest}, not the {p.size} bytes with {p.sha256} that were sent"
        )
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    with staged.open("rb") as fh:
        if p.layout == "file":
            if not p.filename:
                raise ValidationError("filename: required when layout is 'file'")
            artifact, manifest = put_file(store, ctx.tenant.slug, p.filename, fh)
        else:
            artifact, manifest = put_tar(store, ctx.tenant.slug, fh)
    return Outcome(
        {
            "artifact_digest": artifact,
            "storage_backend": backend.name,
            "files": {name: entry["size"] for name, entry in manifest["files"].items()},
            "upload_sha256": digest,
            "size": size,
        }
    )


# -- compliance reports ------------------------------------------------------------------------------------
@handles(ActionKind.REPORT_EXPORT)
def export_report(ctx: HandlerContext) -> Outcome:
    from falaj.core import reports

    p: ReportExport = typed(ctx, ReportExport)
    if p.period_start.tzinfo is None or p.period_end.tzinfo is None:
        raise ValidationError("period_start, period_end: give a time zone (e.g. 2026-11-01T00:00:00Z)")
    report_id = new_id()
    report = reports.build_report(ctx.plane, ctx.tenant.slug, p.period_start, p.period_end, report_id=report_id)
    data = reports.render(report, p.format)
    signer = ctx.plane.signer or AuditSigner.load(ctx.plane.settings)
    signature = reports.sign_report(data, signer)
    folder = ctx.plane.settings.exports_dir / ctx.tenant.slug / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report_id}{reports.EXTENSIONS[p.format]}"
    path.write_bytes(data)
    ctx.session.add(
        ComplianceReportRecord(
            id=report_id,
            tenant_id=ctx.tenant.id,
            period_start=p.period_start,
            period_end=p.period_end,
            format=p.format,
            path=str(path),
            size=len(data),
            sha256=signature["sha256"],
            signature=dict(signature),
            created_by=ctx.principal.label,
        )
    )
    return Outcome(
        {
            "report_id": report_id,
            "format": p.format,
            "size": len(data),
            "sha256": signature["sha256"],
            "signature": dict(signature),
        }
    )


# -- webhooks ----------------------------------------------------------------------------------------------
@handles(ActionKind.WEBHOOK_ALLOW_TARGET)
def allow_webhook_target(ctx: HandlerContext) -> Outcome:
    from falaj.core.webhooks import parse_cidr

    p: WebhookAllowTarget = typed(ctx, WebhookAllowTarget)
    cidr = parse_cidr(p.cidr)
    exists = ctx.session.scalar(
        select(WebhookAllowEntry).where(WebhookAllowEntry.tenant_id == ctx.tenant.id, WebhookAllowEntry.cidr == cidr)
    )
    if exists is not None:
        raise ConflictError(f"{cidr} is already allow-listed in tenant {ctx.tenant.slug!r}")
    ctx.session.add(WebhookAllowEntry(tenant_id=ctx.tenant.id, cidr=cidr, note=p.note, created_by=ctx.principal.label))
    return Outcome({"cidr": cidr, "note": p.note})


@handles(ActionKind.WEBHOOK_SUBSCRIBE)
def subscribe_webhook(ctx: HandlerContext) -> Outcome:
    from falaj.core import webhooks

    p: WebhookSubscribe = typed(ctx, WebhookSubscribe)
    exists = ctx.session.scalar(
        select(WebhookSubscription.id).where(
            WebhookSubscription.tenant_id == ctx.tenant.id, WebhookSubscription.name == p.name
        )
    )
    if exists is not None:
        raise ConflictError(f"a webhook named {p.name!r} already exists in tenant {ctx.tenant.slug!r}")
    addresses = webhooks.check_target(p.url, webhooks.allowlist_of(ctx.session, ctx.tenant.id))
    secret = webhooks.new_secret()
    sub_id = new_id()
    head = ctx.session.scalar(select(func.max(AuditEvent.seq))) or 0
    ctx.session.add(
        WebhookSubscription(
            id=sub_id,
            tenant_id=ctx.tenant.id,
            name=p.name,
            url=p.url,
            event_types=list(p.event_types),
            outcomes=list(p.outcomes),
            description=p.description,
            secret_encrypted=webhooks.encrypt_secret(secret, master_key(ctx.plane.settings), sub_id),
            from_seq=head,
            created_by=ctx.principal.label,
        )
    )
    return Outcome(
        {
            "id": sub_id,
            "name": p.name,
            "url": p.url,
            "event_types": list(p.event_types),
            "outcomes": list(p.outcomes),
            "resolved": addresses,
        },
        secret=secret,
    )


@handles(ActionKind.WEBHOOK_UNSUBSCRIBE)
def unsubscribe_webhook(ctx: HandlerContext) -> Outcome:
    p: WebhookName = typed(ctx, WebhookName)
    sub = ctx.session.scalar(
        select(WebhookSubscription).where(
            WebhookSubscription.tenant_id == ctx.tenant.id, WebhookSubscription.name == p.name
        )
    )
    if sub is None or not sub.active:
        raise NotFoundError(f"no active webhook named {p.name!r} in tenant {ctx.tenant.slug!r}")
    sub.active = False
    return Outcome({"name": p.name, "active": False})


@handles(ActionKind.WEBHOOK_REDELIVER)
def redeliver_webhook(ctx: HandlerContext) -> Outcome:
    p: WebhookRedeliver = typed(ctx, WebhookRedeliver)
    original = ctx.session.get(WebhookDelivery, p.delivery_id)
    if original is None or original.tenant_id != ctx.tenant.id:
        raise NotFoundError(f"no webhook delivery {p.delivery_id} in tenant {ctx.tenant.slug!r}")
    sub = ctx.session.get(WebhookSubscription, original.subscription_id)
    if sub is None or not sub.active:
        raise ValidationError("the delivery's webhook is no longer active: subscribe again to receive events")
    generation = (
        ctx.session.scalar(
            select(func.max(WebhookDelivery.generation)).where(
                WebhookDelivery.subscription_id == original.subscription_id,
                WebhookDelivery.event_seq == original.event_seq,
            )
        )
        or 0
    ) + 1
    delivery = WebhookDelivery(
        id=new_id(),
        subscription_id=original.subscription_id,
        tenant_id=original.tenant_id,
        event_seq=original.event_seq,
        event_type=original.event_type,
        generation=generation,
        body=original.body,
        status="pending",
        attempts=0,
        next_attempt_at=utcnow(),
        history=[],
    )
    ctx.session.add(delivery)
    return Outcome({"delivery_id": delivery.id, "redelivery_of": original.id, "generation": generation})


# -- deletion and garbage collection of stored artifacts ------------------------------------------------------
def _referenced(ctx: HandlerContext, backend_id: str, store: Any) -> set[str]:
    """Every blob a model version of this tenant stored in this backend needs: manifests and their files."""
    from falaj.core.artifacts import read_manifest
    from falaj.core.domain import Model, ModelVersion

    needed: set[str] = set()
    digests = ctx.session.scalars(
        select(ModelVersion.artifact_digest)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.tenant_id == ctx.tenant.id, ModelVersion.storage_backend_id == backend_id)
    )
    for digest in digests:
        needed.add(digest)
        try:
            manifest = read_manifest(store, ctx.tenant.slug, digest)
        except FalajError:
            continue  # an unreadable manifest keeps its own blob and lists no files
        needed.update(entry["digest"] for entry in manifest["files"].values())
    return needed


@handles(ActionKind.ARTIFACT_DELETE)
def delete_artifact(ctx: HandlerContext) -> Outcome:
    p: ArtifactRef = typed(ctx, ArtifactRef)
    backend = ctx.backend(p.storage_backend, "storage")
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    if not store.exists(p.digest, tenant=ctx.tenant.slug):
        raise NotFoundError(f"no blob {p.digest} in storage backend {backend.name!r}")
    if p.digest in _referenced(ctx, backend.id, store):
        raise ConflictError(f"{p.digest} belongs to a registered model version: it cannot be deleted")
    store.delete(p.digest, tenant=ctx.tenant.slug)
    return Outcome({"storage_backend": backend.name, "deleted": p.digest})


@handles(ActionKind.ARTIFACT_GC)
def collect_garbage(ctx: HandlerContext) -> Outcome:
    p: StorageGc = typed(ctx, StorageGc)
    backend = ctx.backend(p.storage_backend, "storage")
    store = ctx.plane.backend_instance(ctx.tenant.slug, backend)
    needed = _referenced(ctx, backend.id, store)
    cutoff = utcnow() - timedelta(hours=p.min_age_hours)
    garbage = [
        info
        for info in store.list(tenant=ctx.tenant.slug)
        if info.digest not in needed and (info.stored_at is None or info.stored_at <= cutoff)
    ]
    if not p.dry_run:
        for info in garbage:
            store.delete(info.digest, tenant=ctx.tenant.slug)
    return Outcome(
        {
            "storage_backend": backend.name,
            "dry_run": p.dry_run,
            "unreferenced": len(garbage),
            "bytes": sum(info.size for info in garbage),
            "deleted": 0 if p.dry_run else len(garbage),
            "digests": [info.digest for info in garbage[:100]],
            "kept": len(needed),
        }
    )
