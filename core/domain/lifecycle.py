"""Backends, data, features, training, models and deployments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from falaj.core.domain.base import Base, CreatedMixin, IdMixin


class Backend(IdMixin, CreatedMixin, Base):
    """A configured backend instance: which plugin, which kind, which region, which node class."""

    __tablename__ = "backends"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(32))  # storage | feature_store | compute | serving | cost
    plugin: Mapped[str] = mapped_column(String(120))
    region: Mapped[str] = mapped_column(String(63))
    node_class: Mapped[str] = mapped_column(String(32))  # cpu-smb | gpu-cluster
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)


class Dataset(IdMixin, CreatedMixin, Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)
    classification: Mapped[str] = mapped_column(String(16))  # public|internal|personal|sensitive|health
    residency: Mapped[str] = mapped_column(String(16))  # ISO 3166 country code, e.g. AE
    legal_basis: Mapped[str | None] = mapped_column(String(63))
    uri: Mapped[str | None] = mapped_column(String(1024))
    storage_backend_id: Mapped[str | None] = mapped_column(ForeignKey("backends.id"))
    schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    digest: Mapped[str | None] = mapped_column(String(71))  # "sha256:<hex>"
    subject_column: Mapped[str | None] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | retired


class ConsentRecord(IdMixin, CreatedMixin, Base):
    """A data subject's consent for one purpose; withdrawal stops future use, not past use."""

    __tablename__ = "consent_records"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_id", "purpose"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_id: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(63))
    granted_at: Mapped[datetime]
    withdrawn_at: Mapped[datetime | None]
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ErasureRequest(IdMixin, CreatedMixin, Base):
    __tablename__ = "erasure_requests"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_id: Mapped[str] = mapped_column(String(200))
    requested_by: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | completed | failed
    completed_at: Mapped[datetime | None]
    verification: Mapped[dict[str, Any]] = mapped_column(default=dict)


class FeatureView(IdMixin, CreatedMixin, Base):
    __tablename__ = "feature_views"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)
    entities: Mapped[list[Any]] = mapped_column(default=list)
    features: Mapped[list[Any]] = mapped_column(default=list)
    ttl_seconds: Mapped[int | None]
    source_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    transformation: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(120))


class TrainingRun(IdMixin, CreatedMixin, Base):
    __tablename__ = "training_runs"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    backend_id: Mapped[str | None] = mapped_column(ForeignKey("backends.id"))
    requested_by: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inputs: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log_uri: Mapped[str | None] = mapped_column(String(1024))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Model(IdMixin, CreatedMixin, Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(32))


class ModelVersion(IdMixin, CreatedMixin, Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    artifact_digest: Mapped[str] = mapped_column(String(71))
    artifact_uri: Mapped[str | None] = mapped_column(String(1024))
    storage_backend_id: Mapped[str | None] = mapped_column(ForeignKey("backends.id"))
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    signature_bundle: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    signer: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="registered")
    flags: Mapped[list[Any]] = mapped_column(default=list)


class ModelAlias(IdMixin, CreatedMixin, Base):
    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(63))
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))


class Deployment(IdMixin, CreatedMixin, Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    environment: Mapped[str] = mapped_column(String(32))  # dev | staging | production
    runtime_backend_id: Mapped[str] = mapped_column(ForeignKey("backends.id"))
    # [{"model_version_id": ..., "weight": 90, "shadow": false}, ...]
    traffic: Mapped[list[Any]] = mapped_column(default=list)
    # The splits it served before, newest last (a promotion pushes, a rollback pops).
    traffic_history: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(24), default="pending")
    endpoint: Mapped[str | None] = mapped_column(String(1024))
    requested_by: Mapped[str] = mapped_column(String(32))
    human_review_contact: Mapped[str | None] = mapped_column(String(254))
    flags: Mapped[list[Any]] = mapped_column(default=list)


class DriftReport(IdMixin, CreatedMixin, Base):
    __tablename__ = "drift_reports"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    drifted: Mapped[bool] = mapped_column(default=False)
