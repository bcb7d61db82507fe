"""Creating an installation: keys, schema, the operator tenant and its first admin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from falaj.core.actions import TenantCreate
from falaj.core.audit import AuditEntry, sha256_digest
from falaj.core.config import Settings
from falaj.core.decision import CheckResult
from falaj.core.domain import ApiToken, Principal, RoleAssignment, Tenant
from falaj.core.errors import ConflictError, ValidationError
from falaj.core.handlers.governance import record_bundle
from falaj.core.keys import AuditSigner
from falaj.core.pipeline import ControlPlane
from falaj.core.tokens import new_token


def alembic_config(database_url: str) -> Config:
    """An alembic configuration that works from a wheel as from the repository."""
    import falaj.migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(falaj.migrations.__file__).parent))
    cfg.attributes["database_url"] = database_url
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.database_url), revision)


@dataclass(frozen=True)
class Bootstrap:
    tenant: str
    admin: str
    token: str  # shown once
    audit_key_id: str


def initialise(settings: Settings, *, tenant: str, display_name: str, admin: str) -> Bootstrap:
    """Create keys, migrate the database, then the operator tenant and its admin, audited.

    There is no principal yet to authenticate, so the bootstrap writes directly; it appends the audit
    events that say so, as the first events of the chain.
    """
    try:
        TenantCreate(slug=tenant, display_name=display_name)
    except Exception as exc:
        raise ValidationError(f"invalid tenant: {exc}") from exc
    settings.home.mkdir(parents=True, exist_ok=True)
    signer = AuditSigner.load(settings, create=True)
    migrate(settings)
    plane = ControlPlane(settings, signer=signer)
    try:
        with plane.sessions() as session, session.begin():
            if session.scalar(select(Tenant.id).limit(1)) is not None:
                raise ConflictError(f"{settings.database_url} is already initialised: it has tenants")
            row = Tenant(slug=tenant, display_name=display_name, ruleset="uae-federal")
            session.add(row)
            session.flush()
            principal = Principal(tenant_id=row.id, name=admin, kind="user")
            session.add(principal)
            session.flush()
            for role in ("admin", "platform-admin"):
                session.add(
                    RoleAssignment(tenant_id=row.id, principal_id=principal.id, role=role, granted_by="bootstrap")
                )
            token = new_token()
            session.add(
                ApiToken(
                    principal_id=principal.id,
                    prefix=token.prefix,
                    secret_hash=token.secret_hash,
                    description="created by falaj init",
                    expires_at=datetime.now(UTC) + timedelta(days=365),
                )
            )
            bundle = plane.bundle
            record_bundle(session, bundle, "bootstrap")
            reason = [CheckResult.passed("bootstrap", "falaj init: first tenant and admin").as_dict()]
            for kind, resource, payload in (
                ("tenant.create", f"tenant/{tenant}", {"slug": tenant, "display_name": display_name}),
                (
                    "principal.create",
                    f"principal/{admin}",
                    {"name": admin, "roles": ["admin", "platform-admin"]},
                ),
                ("token.issue", f"token/{token.prefix}", {"principal": admin}),
            ):
                plane.audit.append(
                    session.connection(),
                    AuditEntry(
                        tenant=tenant,
                        principal="system/bootstrap",
                        action=kind,
                        resource=resource,
                        verdict="allow",
                        outcome="succeeded",
                        reasons=reason,
                        bundle_digest=bundle.digest,
                        payload_digest=sha256_digest({"kind": kind, "payload": payload}),
                    ),
                    session.info,
                )
            plane.audit.checkpoint_now(session)
        plane.audit.after_commit(session)
    finally:
        plane.close()
    return Bootstrap(tenant=tenant, admin=admin, token=token.token, audit_key_id=signer.key_id)
