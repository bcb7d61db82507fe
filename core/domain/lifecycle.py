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


class Entity(IdMixin, CreatedMixin, Base):
    """What features are about (a customer, a card): its join keys, and whether its key is a data subject."""

    __tablename__ = "entities"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)
    join_keys: Mapped[list[Any]] = mapped_column(default=list)  # [{"name": ..., "dtype": ...}]
    subject: Mapped[bool] = mapped_column(default=False)  # the key's value is a data subject id
    description: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(71))  # of the definition: an identical re-apply is a no-op
    applied_by: Mapped[str | None] = mapped_column(String(32))


class FeatureView(IdMixin, CreatedMixin, Base):
    """One version of a feature view: a batch view over a source dataset, or an on-demand transformation."""

    __tablename__ = "feature_views"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)
    kind: Mapped[str] = mapped_column(String(16), default="batch")  # batch | on_demand
    entities: Mapped[list[Any]] = mapped_column(default=list)  # [{"name", "version"}]
    features: Mapped[list[Any]] = mapped_column(default=list)  # [{"name", "dtype", "source"?}]
    ttl_seconds: Mapped[int | None]
    source_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    timestamp_field: Mapped[str | None] = mapped_column(String(120))
    created_timestamp_field: Mapped[str | None] = mapped_column(String(120))
    subject_column: Mapped[str | None] = mapped_column(String(120))  # source column naming the data subject
    offline_backend_id: Mapped[str | None] = mapped_column(ForeignKey("backends.id"))
    online_backend_id: Mapped[str | None] = mapped_column(ForeignKey("backends.id"))
    expectations: Mapped[list[Any]] = mapped_column(default=list)
    sources: Mapped[list[Any]] = mapped_column(default=list)  # on-demand: [{"view", "version"}], request fields
    transform: Mapped[dict[str, Any]] = mapped_column(default=dict)  # on-demand: {"outputs": [...]}
    classification: Mapped[str | None] = mapped_column(String(16))  # inherited from the sources
    residency: Mapped[list[Any]] = mapped_column(default=list)  # inherited from the sources
    description: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(120))
    digest: Mapped[str | None] = mapped_column(String(71))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | superseded
    watermark: Mapped[datetime | None]  # materialized into the online store up to (exclusive)
    applied_by: Mapped[str | None] = mapped_column(String(32))


class FeatureService(IdMixin, CreatedMixin, Base):
    """A named, versioned group of features from several views (what one model reads)."""

    __tablename__ = "feature_services"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)
    features: Mapped[list[Any]] = mapped_column(default=list)  # [{"view", "version", "features": [...]}]
    description: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(120))
    digest: Mapped[str] = mapped_column(String(71))
    applied_by: Mapped[str | None] = mapped_column(String(32))


class Materialization(IdMixin, CreatedMixin, Base):
    """One materialization of a feature view into its online store; a crashed one is resumed by the next."""

    __tablename__ = "materializations"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    feature_view_id: Mapped[str] = mapped_column(ForeignKey("feature_views.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # full | incremental
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | failed
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    source_digest: Mapped[str | None] = mapped_column(String(71))
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    entities_written: Mapped[int] = mapped_column(Integer, default=0)
    excluded_subjects: Mapped[int] = mapped_column(Integer, default=0)
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    failures: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


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
