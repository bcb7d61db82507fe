"""What integrations need: idempotency records, webhook subscriptions and deliveries, report records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from falaj.core.domain.base import Base, CreatedMixin, IdMixin


class IdempotencyRecord(IdMixin, CreatedMixin, Base):
    """The stored answer to a creating request sent with an ``Idempotency-Key``.

    Written in the same transaction as the action, so a retried request either finds the committed answer
    or runs the action for the first time; never both. Keyed by the principal, not the token, so a pipeline
    that rotates its token still gets the same answer.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("principal_id", "key"),)

    principal_id: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(63))
    payload_digest: Mapped[str] = mapped_column(String(71))
    operation_id: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    audit_seq: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class WebhookSubscription(IdMixin, CreatedMixin, Base):
    """Where a tenant wants its events delivered. The signing secret is kept encrypted (AES-256-GCM)."""

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    outcomes: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(200), default="")
    secret_encrypted: Mapped[str] = mapped_column(Text)
    from_seq: Mapped[int] = mapped_column(BigInteger)  # audit events after this one are delivered
    created_by: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)


class WebhookDelivery(IdMixin, CreatedMixin, Base):
    """One event to one subscription: its attempts, last answer and state (pending|delivered|failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("subscription_id", "event_seq", "generation"),)

    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(63))
    generation: Mapped[int] = mapped_column(Integer, default=0)  # 0, then 1.. for each redelivery
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent, so a signature can be recomputed
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    lease_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None]
    history: Mapped[list[Any]] = mapped_column(default=list)  # [{at, status_code, error, ms}]


class WebhookAllowEntry(IdMixin, CreatedMixin, Base):
    """A private or loopback range a tenant admin allowed as a webhook target."""

    __tablename__ = "webhook_allowlist"
    __table_args__ = (UniqueConstraint("tenant_id", "cidr"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    cidr: Mapped[str] = mapped_column(String(49))
    note: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))


class WebhookCursor(Base):
    """The last audit event the dispatcher has fanned out to subscriptions (one row)."""

    __tablename__ = "webhook_cursor"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)


class ComplianceReportRecord(IdMixin, CreatedMixin, Base):
    """An exported compliance report: where its file is, its digest and detached signature."""

    __tablename__ = "compliance_reports"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    format: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(200))


class TenantDataKey(IdMixin, CreatedMixin, Base):
    """A tenant's data key for encryption at rest, stored only wrapped by the master key."""

    __tablename__ = "tenant_data_keys"
    __table_args__ = (UniqueConstraint("tenant", "key_id"), UniqueConstraint("tenant", "active"))

    tenant: Mapped[str] = mapped_column(String(63), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    wrapped: Mapped[str] = mapped_column(Text)
    active: Mapped[bool | None] = mapped_column(default=True)  # True for the current key, NULL once rotated out
