"""Operations (the record of every action), approvals, lineage, cost, keys and policy bundles."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from falaj.core.domain.base import Base, CreatedMixin, IdMixin


class Operation(IdMixin, CreatedMixin, Base):
    """One governed action as the control plane saw it: its decision and its outcome.

    Denied, pending, failed and succeeded actions all leave one row; ``audit_seq`` links it to the
    audit event written in the same transaction.
    """

    __tablename__ = "operations"

    tenant: Mapped[str] = mapped_column(String(63), index=True)  # the slug as claimed
    principal: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(63), index=True)
    resource: Mapped[str] = mapped_column(String(300))
    verdict: Mapped[str] = mapped_column(String(16))  # allow | deny | pending
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded | failed | denied | pending
    decision: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    payload_digest: Mapped[str] = mapped_column(String(71))
    audit_seq: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[datetime | None]


class ApprovalRequest(IdMixin, CreatedMixin, Base):
    __tablename__ = "approval_requests"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    action_kind: Mapped[str] = mapped_column(String(63))
    action_payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resource: Mapped[str] = mapped_column(String(300))
    environment: Mapped[str] = mapped_column(String(32))
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    requester_id: Mapped[str] = mapped_column(String(32))
    quorum: Mapped[int]
    approver_role: Mapped[str] = mapped_column(String(63), default="approver")
    rejections_to_end: Mapped[int] = mapped_column(default=1)
    expires_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|approved|rejected|expired
    decided_at: Mapped[datetime | None]


class ApprovalVote(IdMixin, CreatedMixin, Base):
    __tablename__ = "approval_votes"
    # One vote per approver per request, enforced by the database as well as the policy.
    __table_args__ = (UniqueConstraint("request_id", "approver_id"),)

    request_id: Mapped[str] = mapped_column(ForeignKey("approval_requests.id"), index=True)
    approver_id: Mapped[str] = mapped_column(String(32))
    vote: Mapped[str] = mapped_column(String(8))  # approve | reject
    comment: Mapped[str] = mapped_column(Text)


class LineageEdge(IdMixin, CreatedMixin, Base):
    """``source`` was used to produce ``target`` (dataset -> feature view -> run -> model version)."""

    __tablename__ = "lineage_edges"
    __table_args__ = (UniqueConstraint("source_type", "source_id", "target_type", "target_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    source_type: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(32), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(32), index=True)
    relation: Mapped[str] = mapped_column(String(32), default="derived_from")


class CostRecord(IdMixin, CreatedMixin, Base):
    __tablename__ = "cost_records"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    operation_id: Mapped[str | None] = mapped_column(String(32))
    backend_id: Mapped[str | None] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(300))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    currency: Mapped[str] = mapped_column(String(3), default="AED")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Budget(IdMixin, CreatedMixin, Base):
    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("tenant_id", "period"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    limit_amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    currency: Mapped[str] = mapped_column(String(3), default="AED")


class SigningKey(IdMixin, CreatedMixin, Base):
    """A public key trusted (or once trusted) to sign model artifacts for a tenant."""

    __tablename__ = "signing_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key_id"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(71))
    owner: Mapped[str] = mapped_column(String(200))
    public_key_pem: Mapped[str] = mapped_column(Text)
    # Set only for keys Falaj holds (signing_key.create): PKCS#8, encrypted with the master key.
    private_key_pem: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None]


class PolicyBundleRecord(IdMixin, CreatedMixin, Base):
    """Every policy bundle that was ever in force, by digest, with the files it was made of."""

    __tablename__ = "policy_bundles"

    digest: Mapped[str] = mapped_column(String(71), unique=True)
    source: Mapped[str] = mapped_column(String(1024))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    loaded_by: Mapped[str | None] = mapped_column(String(200))
    # The bundle in force is the one activated last; every worker follows it (see ControlPlane).
    activated_at: Mapped[datetime | None] = mapped_column(index=True)


class TransferBasis(IdMixin, CreatedMixin, Base):
    """A recorded basis for data to leave its residency country (PDPL Art. 22 / 23)."""

    __tablename__ = "transfer_bases"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    destination_country: Mapped[str] = mapped_column(String(2))
    basis: Mapped[str] = mapped_column(String(32))  # adequacy | contract | express-consent
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recorded_by: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ResidencyException(IdMixin, CreatedMixin, Base):
    """A recorded exception for health data to be processed outside the UAE (MoHAP Resolution 51/2021)."""

    __tablename__ = "residency_exceptions"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    destination_country: Mapped[str] = mapped_column(String(2))
    exception: Mapped[str] = mapped_column(String(200))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recorded_by: Mapped[str] = mapped_column(String(32))


class Objection(IdMixin, CreatedMixin, Base):
    """A data subject's objection to automated decisions by a deployment (PDPL Art. 18)."""

    __tablename__ = "objections"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    subject_id: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | reviewed


class ModelSignature(IdMixin, CreatedMixin, Base):
    """A sigstore bundle (model-signing, in-toto statement) over a model version's artifact."""

    __tablename__ = "model_signatures"
    __table_args__ = (UniqueConstraint("model_version_id", "key_id"),)

    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(71))
    bundle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    signed_by: Mapped[str] = mapped_column(String(200))


class DatasetSubject(Base):
    """Which data subjects a dataset version holds (read from its subject column at registration)."""

    __tablename__ = "dataset_subjects"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
