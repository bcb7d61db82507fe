"""The domain model, persisted with SQLAlchemy 2 and migrated with alembic (``migrations/``)."""

from falaj.core.domain.audit import AuditCheckpoint, AuditEvent, AuditHead
from falaj.core.domain.base import Base, new_id, utcnow
from falaj.core.domain.governance import (
    ApprovalRequest,
    ApprovalVote,
    Budget,
    CostRecord,
    LineageEdge,
    Operation,
    OutboxEvent,
    PolicyBundleRecord,
    SigningKey,
)
from falaj.core.domain.identity import ApiToken, Principal, RoleAssignment, Tenant
from falaj.core.domain.lifecycle import (
    Backend,
    ConsentRecord,
    Dataset,
    Deployment,
    DriftReport,
    ErasureRequest,
    FeatureView,
    Model,
    ModelAlias,
    ModelVersion,
    TrainingRun,
)

__all__ = [
    "ApiToken",
    "ApprovalRequest",
    "ApprovalVote",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "Backend",
    "Base",
    "Budget",
    "ConsentRecord",
    "CostRecord",
    "Dataset",
    "Deployment",
    "DriftReport",
    "ErasureRequest",
    "FeatureView",
    "LineageEdge",
    "Model",
    "ModelAlias",
    "ModelVersion",
    "Operation",
    "OutboxEvent",
    "PolicyBundleRecord",
    "Principal",
    "RoleAssignment",
    "SigningKey",
    "Tenant",
    "TrainingRun",
    "new_id",
    "utcnow",
]
