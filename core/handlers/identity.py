"""Tenants, principals, tokens and roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from falaj.core.actions import (
    ActionKind,
    PrincipalCreate,
    PrincipalName,
    RoleChange,
    TenantCreate,
    TenantUpdate,
    TokenIssue,
    TokenRevoke,
)
from falaj.core.domain import ApiToken, Principal, RoleAssignment, Tenant
from falaj.core.errors import ConflictError, NotFoundError, ValidationError
from falaj.core.handlers.base import HandlerContext, Outcome, handles, typed
from falaj.core.tokens import new_token


def _principal(ctx: HandlerContext, name: str) -> Principal:
    row = ctx.session.scalar(select(Principal).where(Principal.tenant_id == ctx.tenant.id, Principal.name == name))
    if row is None:
        raise NotFoundError(f"no principal named {name!r} in tenant {ctx.tenant.slug!r}")
    return row


def _check_roles(ctx: HandlerContext, roles: list[str]) -> None:
    known = ctx.plane.bundle.known_roles
    unknown = sorted(set(roles) - known)
    if unknown:
        raise ValidationError(f"unknown roles {unknown}: known roles are {sorted(known)}")
    platform = sorted(r for r in roles if r.startswith("platform-"))
    if platform:
        granter_is_platform_admin = ctx.session.scalar(
            select(RoleAssignment.id).where(
                RoleAssignment.tenant_id == ctx.tenant.id,
                RoleAssignment.principal_id == ctx.principal.id,
                RoleAssignment.role == "platform-admin",
            )
        )
        if granter_is_platform_admin is None:
            raise ValidationError(f"{platform} can only be granted in the operator tenant, by a platform-admin")


@handles(ActionKind.TENANT_CREATE)
def create_tenant(ctx: HandlerContext) -> Outcome:
    p: TenantCreate = typed(ctx, TenantCreate)
    if p.ruleset not in ctx.plane.bundle.known_rulesets:
        raise ValidationError(
            f"unknown ruleset {p.ruleset!r}: known rulesets are {sorted(ctx.plane.bundle.known_rulesets)}"
        )
    if ctx.session.scalar(select(Tenant.id).where(Tenant.slug == p.slug)) is not None:
        raise ConflictError(f"tenant {p.slug!r} already exists")
    tenant = Tenant(slug=p.slug, display_name=p.display_name, ruleset=p.ruleset)
    ctx.session.add(tenant)
    ctx.session.flush()
    data: dict[str, Any] = {"tenant_id": tenant.id, "slug": tenant.slug, "ruleset": tenant.ruleset}
    if p.admin is None:
        return Outcome(data)
    # Roles are per tenant, so the platform admin has none in the new tenant: its first admin is made here.
    admin = Principal(tenant_id=tenant.id, name=p.admin, kind="user")
    ctx.session.add(admin)
    ctx.session.flush()
    ctx.session.add(
        RoleAssignment(tenant_id=tenant.id, principal_id=admin.id, role="admin", granted_by=ctx.principal.id)
    )
    token = new_token()
    ctx.session.add(
        ApiToken(
            principal_id=admin.id,
            prefix=token.prefix,
            secret_hash=token.secret_hash,
            description=f"first admin of {p.slug}",
            expires_at=datetime.now(UTC) + timedelta(days=30),
        )
    )
    return Outcome({**data, "admin": p.admin, "token_prefix": token.prefix}, secret=token.token)


@handles(ActionKind.TENANT_UPDATE)
def update_tenant(ctx: HandlerContext) -> Outcome:
    p: TenantUpdate = typed(ctx, TenantUpdate)
    if p.slug != ctx.tenant.slug:
        raise ValidationError(f"slug {p.slug!r} must name the tenant the action runs in ({ctx.tenant.slug!r})")
    if p.ruleset is not None and p.ruleset not in ctx.plane.bundle.known_rulesets:
        raise ValidationError(f"unknown ruleset {p.ruleset!r}")
    tenant = ctx.session.get(Tenant, ctx.tenant.id)
    assert tenant is not None
    if p.display_name is not None:
        tenant.display_name = p.display_name
    if p.ruleset is not None:
        tenant.ruleset = p.ruleset
    if p.disabled is not None:
        tenant.disabled = p.disabled
    return Outcome({"slug": tenant.slug, "ruleset": tenant.ruleset, "disabled": tenant.disabled})


@handles(ActionKind.PRINCIPAL_CREATE)
def create_principal(ctx: HandlerContext) -> Outcome:
    p: PrincipalCreate = typed(ctx, PrincipalCreate)
    _check_roles(ctx, p.roles)
    exists = ctx.session.scalar(
        select(Principal.id).where(Principal.tenant_id == ctx.tenant.id, Principal.name == p.name)
    )
    if exists is not None:
        raise ConflictError(f"principal {p.name!r} already exists in tenant {ctx.tenant.slug!r}")
    principal = Principal(tenant_id=ctx.tenant.id, name=p.name, kind=p.kind, email=p.email)
    ctx.session.add(principal)
    ctx.session.flush()
    for role in sorted(set(p.roles)):
        ctx.session.add(
            RoleAssignment(tenant_id=ctx.tenant.id, principal_id=principal.id, role=role, granted_by=ctx.principal.id)
        )
    return Outcome(
        {"principal_id": principal.id, "name": principal.name, "kind": p.kind, "roles": sorted(set(p.roles))}
    )


@handles(ActionKind.PRINCIPAL_DISABLE)
def disable_principal(ctx: HandlerContext) -> Outcome:
    p: PrincipalName = typed(ctx, PrincipalName)
    principal = _principal(ctx, p.name)
    if principal.id == ctx.principal.id:
        raise ValidationError("a principal cannot disable itself; ask another admin")
    principal.disabled = True
    return Outcome({"principal_id": principal.id, "disabled": True})


@handles(ActionKind.TOKEN_ISSUE)
def issue_token(ctx: HandlerContext) -> Outcome:
    p: TokenIssue = typed(ctx, TokenIssue)
    principal = _principal(ctx, p.principal)
    if principal.disabled:
        raise ValidationError(f"principal {p.principal!r} is disabled")
    token = new_token()
    expires = datetime.now(UTC) + timedelta(days=p.expires_in_days) if p.expires_in_days else None
    ctx.session.add(
        ApiToken(
            principal_id=principal.id,
            prefix=token.prefix,
            secret_hash=token.secret_hash,
            description=p.description,
            expires_at=expires,
        )
    )
    return Outcome(
        {
            "prefix": token.prefix,
            "principal": principal.name,
            "expires_at": expires.isoformat() if expires else None,
        },
        secret=token.token,
    )


@handles(ActionKind.TOKEN_REVOKE)
def revoke_token(ctx: HandlerContext) -> Outcome:
    p: TokenRevoke = typed(ctx, TokenRevoke)
    token = ctx.session.scalar(
        select(ApiToken)
        .join(Principal, ApiToken.principal_id == Principal.id)
        .where(ApiToken.prefix == p.prefix, Principal.tenant_id == ctx.tenant.id)
    )
    if token is None:
        raise NotFoundError(f"no API token {p.prefix} in tenant {ctx.tenant.slug!r}")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return Outcome({"prefix": token.prefix, "revoked_at": token.revoked_at.isoformat()})


@handles(ActionKind.ROLE_ASSIGN)
def assign_role(ctx: HandlerContext) -> Outcome:
    p: RoleChange = typed(ctx, RoleChange)
    _check_roles(ctx, [p.role])
    principal = _principal(ctx, p.principal)
    exists = ctx.session.scalar(
        select(RoleAssignment.id).where(
            RoleAssignment.tenant_id == ctx.tenant.id,
            RoleAssignment.principal_id == principal.id,
            RoleAssignment.role == p.role,
        )
    )
    if exists is not None:
        raise ConflictError(f"{p.principal!r} already has role {p.role!r}")
    ctx.session.add(
        RoleAssignment(tenant_id=ctx.tenant.id, principal_id=principal.id, role=p.role, granted_by=ctx.principal.id)
    )
    return Outcome({"principal": principal.name, "role": p.role})


@handles(ActionKind.ROLE_REVOKE)
def revoke_role(ctx: HandlerContext) -> Outcome:
    p: RoleChange = typed(ctx, RoleChange)
    principal = _principal(ctx, p.principal)
    row = ctx.session.scalar(
        select(RoleAssignment).where(
            RoleAssignment.tenant_id == ctx.tenant.id,
            RoleAssignment.principal_id == principal.id,
            RoleAssignment.role == p.role,
        )
    )
    if row is None:
        raise NotFoundError(f"{p.principal!r} does not have role {p.role!r}")
    if principal.id == ctx.principal.id and p.role == "admin":
        raise ValidationError("an admin cannot revoke their own admin role; ask another admin")
    ctx.session.delete(row)
    return Outcome({"principal": principal.name, "role": p.role, "revoked": True})
