"""Tenants, principals, their API tokens and role assignments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from falaj.core.domain.base import Base, CreatedMixin, IdMixin


class Tenant(IdMixin, CreatedMixin, Base):
    """An organisation using Falaj; the casbin domain of its role assignments."""

    __tablename__ = "tenants"

    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # Which rule set of the policy bundle applies (e.g. "uae-federal", "difc", "adgm").
    ruleset: Mapped[str] = mapped_column(String(63), default="uae-federal")
    disabled: Mapped[bool] = mapped_column(default=False)


class Principal(IdMixin, CreatedMixin, Base):
    """A user or a service identity (pipelines, schedulers) inside one tenant."""

    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))  # user | service
    email: Mapped[str | None] = mapped_column(String(254))
    disabled: Mapped[bool] = mapped_column(default=False)


class ApiToken(IdMixin, CreatedMixin, Base):
    """An API token; only a SHA-256 digest of the secret is stored."""

    __tablename__ = "api_tokens"

    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    # Public lookup part of the token (``flj_<prefix>_<secret>``), shown in listings.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class RoleAssignment(IdMixin, CreatedMixin, Base):
    """Grants a role to a principal within a tenant (casbin grouping with a domain)."""

    __tablename__ = "role_assignments"
    __table_args__ = (UniqueConstraint("tenant_id", "principal_id", "role"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    role: Mapped[str] = mapped_column(String(63))
    granted_by: Mapped[str | None] = mapped_column(String(32))
