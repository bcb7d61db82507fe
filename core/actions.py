"""Typed actions: every lifecycle operation is one ``Action`` with a kind and a validated payload.

Each kind names its RBAC resource type and verb (``dataset.register`` -> resource ``dataset``, verb
``register``) and a pydantic model for its payload. The kinds cover the whole lifecycle; a kind is known
here even when no handler for it is installed, so that policy, audit and explain can speak about it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,119}$")]
Role = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
Region = Annotated[str, StringConstraints(min_length=1, max_length=63)]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Comment = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Classification = Literal["public", "internal", "personal", "sensitive", "health"]
BackendKind = Literal["storage", "feature_store", "compute", "serving", "cost", "stream_source"]
NodeClass = Literal["cpu-smb", "gpu-cluster"]
Environment = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")]


MAX_VERSION = 2**31 - 1  # version numbers fit a 32-bit column on every database


class Payload(BaseModel):
    """Base of every payload: unknown fields are refused, strings are not coerced from numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)


class Empty(Payload):
    pass


# -- tenants, principals, tokens, roles ---------------------------------------------------------------
class TenantCreate(Payload):
    """A new tenant, and (``admin``) the name of its first admin, whose API token is shown once."""

    slug: Slug
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    ruleset: Slug = "uae-federal"
    admin: Name | None = None


class TenantUpdate(Payload):
    slug: Slug
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    ruleset: Slug | None = None
    disabled: bool | None = None


class PrincipalCreate(Payload):
    name: Name
    kind: Literal["user", "service"] = "user"
    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)] | None = None
    roles: list[Role] = Field(default_factory=list, max_length=16)


class PrincipalName(Payload):
    name: Name


class TokenIssue(Payload):
    principal: Name
    description: Annotated[str, StringConstraints(max_length=200)] = ""
    expires_in_days: int | None = Field(default=90, ge=1, le=3650)


class TokenRevoke(Payload):
    prefix: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{12}$")]


class RoleChange(Payload):
    principal: Name
    role: Role


# -- backends -------------------------------------------------------------------------------------------
class BackendRegister(Payload):
    name: Name
    kind: BackendKind
    plugin: Name
    region: Region
    node_class: NodeClass = "cpu-smb"
    settings: dict[str, Any] = Field(default_factory=dict)


class BackendName(Payload):
    name: Name


# -- data, consent, erasure -------------------------------------------------------------------------------
class DatasetRegister(Payload):
    name: Name
    classification: Classification
    residency: Country
    legal_basis: Annotated[str, StringConstraints(max_length=63)] | None = None
    uri: Annotated[str, StringConstraints(max_length=1024)] | None = None
    storage_backend: Name | None = None
    schema_: dict[str, str] = Field(default_factory=dict, alias="schema")
    digest: Digest | None = None
    subject_column: Name | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class DatasetRetire(Payload):
    name: Name
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class ConsentRecordPayload(Payload):
    subject_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    purpose: Role
    evidence: dict[str, Any] = Field(default_factory=dict)
    granted_at: datetime | None = None


class ConsentWithdraw(Payload):
    subject_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    purpose: Role


class TransferBasisRecord(Payload):
    """A recorded basis for personal data to leave its residency (PDPL Art. 22 adequacy, Art. 23 contract or
    express consent). ``dataset`` limits it to one dataset (and what derives from it); without it, it covers
    the tenant's data of that classification."""

    destination_country: Country
    basis: Literal["adequacy", "contract", "express-consent"]
    dataset: Name | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    expires_at: datetime | None = None


class ResidencyExceptionRecord(Payload):
    """A recorded exception for health data to be processed outside the UAE (MoHAP Resolution 51/2021)."""

    destination_country: Country
    dataset: Name
    exception: Annotated[str, StringConstraints(min_length=3, max_length=200)]
    evidence: dict[str, Any] = Field(default_factory=dict)


class ObjectionRecord(Payload):
    """A data subject objects to automated decisions by a deployment (PDPL Art. 18)."""

    deployment: Name
    subject_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    reason: Comment


class SigningKeyCreate(Payload):
    """Create a tenant signing key (ECDSA P-256), kept encrypted at rest by Falaj."""

    key_name: Name
    owner: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ModelVersionExport(Payload):
    """``destination`` names a new folder under ``FALAJ_HOME/exports/<tenant>/`` (a name, not a path)."""

    model: Name
    version: int = Field(ge=1, le=MAX_VERSION)
    destination: Name


class ErasureRequestPayload(Payload):
    subject_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ErasureExecute(Payload):
    request_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


# -- features, training ------------------------------------------------------------------------------------
#: A column of a feature view, entity or request: an identifier (quoted wherever it reaches SQL), and not one of
#: the columns every store keeps (event_ts, created_ts, event_id, subject_id).
def _not_reserved(name: str) -> str:
    if name in ("event_ts", "created_ts", "event_id", "subject_id"):
        raise ValueError(f"{name!r} is a column every feature store keeps: choose another name")
    return name


ColumnName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"), AfterValidator(_not_reserved)]
#: A column of a source dataset (it may carry a reserved name: a source's ``event_ts`` is the view's event time).
SourceColumn = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
FeatureDType = Literal["int64", "float64", "string", "bool", "timestamp"]
#: ``view:feature``, or ``view`` for all of a view's features.
FeatureRef = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,119}(:[A-Za-z_][A-Za-z0-9_]{0,62})?$")
]
MAX_PUSH_ROWS = 10_000
MAX_INLINE_ENTITY_ROWS = 10_000


class ColumnDef(Payload):
    name: ColumnName
    dtype: FeatureDType


class TransformOutput(Payload):
    """One output of an on-demand view: a numexpr expression over the inputs' names."""

    name: ColumnName
    dtype: Literal["int64", "float64", "bool"] = "float64"
    expr: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class EntityApply(Payload):
    """An entity: the join keys features hang off; ``subject`` when a key's value is a data subject id."""

    name: Name
    join_keys: list[ColumnDef] = Field(min_length=1, max_length=4)
    subject: bool = False
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _one_subject_key(self) -> EntityApply:
        if self.subject and len(self.join_keys) != 1:
            raise ValueError("a subject entity has exactly one join key (the subject id)")
        if len({k.name for k in self.join_keys}) != len(self.join_keys):
            raise ValueError("join key names must be unique")
        return self


class FeatureViewApply(Payload):
    """A batch view (``source_dataset`` with its ``features``) or an on-demand view (``sources`` and ``outputs``).

    Re-applying an identical definition changes nothing; a changed one becomes the next version.
    """

    name: Name
    entities: list[Name] = Field(default_factory=list, max_length=4)
    features: list[ColumnDef] = Field(default_factory=list, max_length=500)
    source_dataset: Name | None = None
    timestamp_field: SourceColumn = "event_timestamp"
    created_timestamp_field: SourceColumn | None = None
    ttl_seconds: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    offline_store: Name | None = None
    online_store: Name | None = None
    expectations: list[dict[str, Any]] = Field(default_factory=list, max_length=200)
    sources: list[Name] = Field(default_factory=list, max_length=16)
    request_fields: list[ColumnDef] = Field(default_factory=list, max_length=64)
    outputs: list[TransformOutput] = Field(default_factory=list, max_length=200)
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    owner: Name | None = None

    @model_validator(mode="after")
    def _batch_or_on_demand(self) -> FeatureViewApply:
        if self.outputs or self.sources:
            if self.source_dataset or self.features or self.offline_store or self.online_store or self.entities:
                raise ValueError(
                    "an on-demand view has sources, request_fields and outputs only "
                    "(no source_dataset, features, entities or stores)"
                )
            if not self.outputs:
                raise ValueError("an on-demand view needs at least one output")
        else:
            missing = [
                f
                for f, v in (
                    ("source_dataset", self.source_dataset),
                    ("entities", self.entities),
                    ("features", self.features),
                    ("offline_store", self.offline_store),
                )
                if not v
            ]
            if missing:
                raise ValueError(f"a batch view needs {', '.join(missing)} (or sources and outputs for on-demand)")
        names = [c.name for c in self.features] + [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique within a view")
        return self


class FeatureServiceApply(Payload):
    name: Name
    features: list[FeatureRef] = Field(min_length=1, max_length=1000)
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    owner: Name | None = None


class FeatureViewMaterialize(Payload):
    """Copy a view's source into its offline store and the latest values per key into its online store.

    ``incremental`` continues from the view's watermark; ``full`` starts from the beginning. ``end`` defaults to
    now. A materialization that crashed is resumed by the next one.
    """

    name: Name
    mode: Literal["full", "incremental"] = "incremental"
    start: datetime | None = None
    end: datetime | None = None
    purpose: Role = "feature-serving"


class FeatureViewPush(Payload):
    """Rows pushed into a view (each with a unique ``event_id``): written to its online and offline stores."""

    name: Name
    rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_PUSH_ROWS)
    to: Literal["online", "offline", "both"] = "both"
    purpose: Role = "feature-serving"


class FeatureRetrieve(Payload):
    """Point-in-time-correct training data for ``purpose``: only subjects with valid consent are returned.

    Entity rows come inline (``entity_rows``) or from a registered dataset (``entity_dataset``); the result is
    written as Parquet to ``FALAJ_HOME/exports/<tenant>/<destination>/`` or, for small results, returned inline.
    """

    purpose: Role
    features: list[FeatureRef] = Field(default_factory=list, max_length=1000)
    feature_service: Name | None = None
    entity_rows: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_INLINE_ENTITY_ROWS)
    entity_dataset: Name | None = None
    timestamp_column: ColumnName = "event_timestamp"
    full_feature_names: bool = False
    destination: Name | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> FeatureRetrieve:
        if bool(self.features) == bool(self.feature_service):
            raise ValueError("name either features or a feature_service")
        if (self.entity_rows is None) == (self.entity_dataset is None):
            raise ValueError("give either entity_rows or an entity_dataset")
        return self


class TrainingFeatures(Payload):
    """Training data from the feature store: a point-in-time join of ``entity_dataset`` (which holds the label)
    with a feature service, consent-filtered for the run's purpose."""

    feature_service: Name
    entity_dataset: Name
    timestamp_column: ColumnName = "event_timestamp"


class TrainingSubmit(Payload):
    name: Name
    backend: Name
    purpose: Role = "training"
    inputs: list[Name] = Field(default_factory=list, max_length=64)
    features: TrainingFeatures | None = None
    spec: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_data(self) -> TrainingSubmit:
        if not self.inputs and self.features is None:
            raise ValueError("name the training data: inputs (datasets) and/or features (a feature service)")
        return self


class RunRef(Payload):
    run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


# -- models, signing -----------------------------------------------------------------------------------------
class ModelRegister(Payload):
    name: Name
    description: Annotated[str, StringConstraints(max_length=4000)] = ""


class ModelVersionRegister(Payload):
    """A new version of ``model``: an artifact already in ``storage_backend`` (``artifact_digest``), or the
    artifact a finished training run produced (``training_run_id`` alone: it is copied into the store, and the
    run's metrics and lineage come with it)."""

    model: Name
    artifact_digest: Digest | None = None
    storage_backend: Name
    training_run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    signature_bundle: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _artifact_or_run(self) -> ModelVersionRegister:
        if self.artifact_digest is None and self.training_run_id is None:
            raise ValueError("give artifact_digest (an uploaded artifact) or training_run_id (a finished run)")
        return self


class ModelAliasSet(Payload):
    model: Name
    alias: Role
    version: int = Field(ge=1, le=MAX_VERSION)


class ArtifactSign(Payload):
    """Sign a model version with a Falaj-held key (``key_id``), or keyless with Sigstore (``key_id =
    "sigstore"`` and an OIDC ``identity_token``; never stored or audited, only its digest)."""

    model: Name
    version: int = Field(ge=1, le=MAX_VERSION)
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=71)]
    identity_token: Annotated[str, StringConstraints(min_length=20, max_length=8192)] | None = Field(
        default=None, repr=False
    )
    #: A bundle made offline with the private half of a registered key (``key_id``): verified, then attached.
    signature_bundle: dict[str, Any] | None = None


class ArtifactRef(Payload):
    storage_backend: Name
    digest: Digest


class StorageGc(Payload):
    """Delete the blobs of a store that no model version references, once older than ``min_age_hours``
    (so an upload not yet registered survives). ``dry_run`` (the default) only lists them."""

    storage_backend: Name
    dry_run: bool = True
    min_age_hours: int = Field(default=24, ge=0, le=24 * 365)


class SigningKeyRegister(Payload):
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=71)]
    owner: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    public_key_pem: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class SigningKeyRevoke(Payload):
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=71)]


# -- deployments, approvals, serving policy, monitoring ---------------------------------------------------
class TrafficVariant(Payload):
    model: Name
    version: int = Field(ge=1, le=MAX_VERSION)
    weight: int = Field(ge=0, le=100)
    shadow: bool = False


class DeploymentRequest(Payload):
    name: Name
    environment: Environment
    runtime_backend: Name
    traffic: list[TrafficVariant] = Field(min_length=1, max_length=16)
    human_review_contact: Annotated[str, StringConstraints(max_length=254)] | None = None


class DeploymentRef(Payload):
    name: Name


class DeploymentPromote(Payload):
    name: Name
    traffic: list[TrafficVariant] = Field(min_length=1, max_length=16)


class ApprovalVotePayload(Payload):
    request_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    vote: Literal["approve", "reject"]
    comment: Comment


class InferencePolicySet(Payload):
    deployment: Name
    automated_decisions: bool = False
    human_review_contact: Annotated[str, StringConstraints(max_length=254)] | None = None
    max_batch_size: int = Field(default=32, ge=1, le=4096)


class MonitoringReport(Payload):
    deployment: Name
    metrics: dict[str, float]


class RetrainingTrigger(Payload):
    model: Name
    reason: Comment


class CostRecordPayload(Payload):
    resource: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=6)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "AED"
    backend: Name | None = None


class BudgetSet(Payload):
    period: Annotated[str, StringConstraints(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
    limit_amount: Decimal = Field(ge=0, max_digits=18, decimal_places=2)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "AED"


class ReportExport(Payload):
    period_start: datetime
    period_end: datetime
    format: Literal["json", "csv", "pdf"] = "json"


class ArtifactUpload(Payload):
    """Store an artifact staged by a streamed upload (the REST API writes the staging file).

    ``upload_id`` names the staging file under ``FALAJ_HOME/uploads/<tenant>/``; ``sha256`` and ``size`` are
    what the upload measured, checked again before anything is stored. ``layout`` is ``tar`` (a folder as an
    uncompressed tar archive) or ``file`` (one file, stored under ``filename``).
    """

    storage_backend: Name
    upload_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    sha256: Digest
    size: int = Field(ge=1, le=2**62)
    layout: Literal["tar", "file"] = "tar"
    filename: Name | None = None


WebhookOutcome = Literal["succeeded", "pending", "denied", "failed"]
DEFAULT_OUTCOMES: tuple[WebhookOutcome, ...] = ("succeeded", "pending")
WebhookEvent = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z_]+\.(\*|[a-z_]+))$")]


class WebhookSubscribe(Payload):
    """Deliver events of ``event_types`` (``deployment.*``, ``approval.vote``, ``*``) with these outcomes."""

    name: Name
    url: Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://")]
    event_types: list[WebhookEvent] = Field(min_length=1, max_length=64)
    outcomes: list[WebhookOutcome] = Field(default_factory=lambda: list(DEFAULT_OUTCOMES), min_length=1)
    description: Annotated[str, StringConstraints(max_length=200)] = ""


class WebhookName(Payload):
    name: Name


class WebhookRedeliver(Payload):
    delivery_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class WebhookAllowTarget(Payload):
    """Allow webhook targets in a private or loopback range for this tenant (e.g. ``10.20.0.0/16``)."""

    cidr: Annotated[str, StringConstraints(min_length=3, max_length=49)]
    note: Comment


class AuditExport(Payload):
    """``destination`` names a new folder under ``FALAJ_HOME/exports/<tenant>/`` (a name, not a path)."""

    destination: Name


class ActionKind(enum.StrEnum):
    TENANT_CREATE = "tenant.create"
    TENANT_UPDATE = "tenant.update"
    PRINCIPAL_CREATE = "principal.create"
    PRINCIPAL_DISABLE = "principal.disable"
    TOKEN_ISSUE = "token.issue"  # noqa: S105 - an action name, not a secret
    TOKEN_REVOKE = "token.revoke"  # noqa: S105
    ROLE_ASSIGN = "role.assign"
    ROLE_REVOKE = "role.revoke"
    BACKEND_REGISTER = "backend.register"
    BACKEND_DISABLE = "backend.disable"
    DATASET_REGISTER = "dataset.register"
    DATASET_RETIRE = "dataset.retire"
    CONSENT_RECORD = "consent.record"
    CONSENT_WITHDRAW = "consent.withdraw"
    TRANSFER_BASIS_RECORD = "transfer_basis.record"
    RESIDENCY_EXCEPTION_RECORD = "residency_exception.record"
    OBJECTION_RECORD = "objection.record"
    ERASURE_REQUEST = "erasure.request"
    ERASURE_EXECUTE = "erasure.execute"
    ENTITY_APPLY = "entity.apply"
    FEATURE_VIEW_APPLY = "feature_view.apply"
    FEATURE_VIEW_MATERIALIZE = "feature_view.materialize"
    FEATURE_VIEW_PUSH = "feature_view.push"
    FEATURE_SERVICE_APPLY = "feature_service.apply"
    FEATURE_RETRIEVE = "feature.retrieve"
    TRAINING_SUBMIT = "training.submit"
    TRAINING_CANCEL = "training.cancel"
    MODEL_REGISTER = "model.register"
    MODEL_VERSION_REGISTER = "model_version.register"
    MODEL_ALIAS_SET = "model_alias.set"
    MODEL_VERSION_EXPORT = "model_version.export"
    ARTIFACT_SIGN = "artifact.sign"
    ARTIFACT_DELETE = "artifact.delete"
    ARTIFACT_GC = "artifact.gc"
    SIGNING_KEY_CREATE = "signing_key.create"
    SIGNING_KEY_REGISTER = "signing_key.register"
    SIGNING_KEY_REVOKE = "signing_key.revoke"
    DEPLOYMENT_REQUEST = "deployment.request"
    DEPLOYMENT_ROLLOUT = "deployment.rollout"
    DEPLOYMENT_PROMOTE = "deployment.promote"
    DEPLOYMENT_ROLLBACK = "deployment.rollback"
    DEPLOYMENT_RETIRE = "deployment.retire"
    APPROVAL_VOTE = "approval.vote"
    INFERENCE_POLICY_SET = "inference_policy.set"
    MONITORING_REPORT = "monitoring.report"
    RETRAINING_TRIGGER = "retraining.trigger"
    COST_RECORD = "cost.record"
    BUDGET_SET = "budget.set"
    REPORT_EXPORT = "report.export"
    POLICY_RELOAD = "policy.reload"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_EXPORT = "audit.export"
    ARTIFACT_UPLOAD = "artifact.upload"
    WEBHOOK_SUBSCRIBE = "webhook.subscribe"
    WEBHOOK_UNSUBSCRIBE = "webhook.unsubscribe"
    WEBHOOK_REDELIVER = "webhook.redeliver"
    WEBHOOK_ALLOW_TARGET = "webhook.allow_target"

    @property
    def resource_type(self) -> str:
        return self.value.rpartition(".")[0]

    @property
    def verb(self) -> str:
        return self.value.rpartition(".")[2]


PAYLOADS: dict[ActionKind, type[Payload]] = {
    ActionKind.TENANT_CREATE: TenantCreate,
    ActionKind.TENANT_UPDATE: TenantUpdate,
    ActionKind.PRINCIPAL_CREATE: PrincipalCreate,
    ActionKind.PRINCIPAL_DISABLE: PrincipalName,
    ActionKind.TOKEN_ISSUE: TokenIssue,
    ActionKind.TOKEN_REVOKE: TokenRevoke,
    ActionKind.ROLE_ASSIGN: RoleChange,
    ActionKind.ROLE_REVOKE: RoleChange,
    ActionKind.BACKEND_REGISTER: BackendRegister,
    ActionKind.BACKEND_DISABLE: BackendName,
    ActionKind.DATASET_REGISTER: DatasetRegister,
    ActionKind.DATASET_RETIRE: DatasetRetire,
    ActionKind.CONSENT_RECORD: ConsentRecordPayload,
    ActionKind.CONSENT_WITHDRAW: ConsentWithdraw,
    ActionKind.TRANSFER_BASIS_RECORD: TransferBasisRecord,
    ActionKind.RESIDENCY_EXCEPTION_RECORD: ResidencyExceptionRecord,
    ActionKind.OBJECTION_RECORD: ObjectionRecord,
    ActionKind.ERASURE_REQUEST: ErasureRequestPayload,
    ActionKind.ERASURE_EXECUTE: ErasureExecute,
    ActionKind.ENTITY_APPLY: EntityApply,
    ActionKind.FEATURE_VIEW_APPLY: FeatureViewApply,
    ActionKind.FEATURE_VIEW_MATERIALIZE: FeatureViewMaterialize,
    ActionKind.FEATURE_VIEW_PUSH: FeatureViewPush,
    ActionKind.FEATURE_SERVICE_APPLY: FeatureServiceApply,
    ActionKind.FEATURE_RETRIEVE: FeatureRetrieve,
    ActionKind.TRAINING_SUBMIT: TrainingSubmit,
    ActionKind.TRAINING_CANCEL: RunRef,
    ActionKind.MODEL_REGISTER: ModelRegister,
    ActionKind.MODEL_VERSION_REGISTER: ModelVersionRegister,
    ActionKind.MODEL_ALIAS_SET: ModelAliasSet,
    ActionKind.MODEL_VERSION_EXPORT: ModelVersionExport,
    ActionKind.ARTIFACT_SIGN: ArtifactSign,
    ActionKind.ARTIFACT_DELETE: ArtifactRef,
    ActionKind.ARTIFACT_GC: StorageGc,
    ActionKind.SIGNING_KEY_CREATE: SigningKeyCreate,
    ActionKind.SIGNING_KEY_REGISTER: SigningKeyRegister,
    ActionKind.SIGNING_KEY_REVOKE: SigningKeyRevoke,
    ActionKind.DEPLOYMENT_REQUEST: DeploymentRequest,
    ActionKind.DEPLOYMENT_ROLLOUT: DeploymentRef,
    ActionKind.DEPLOYMENT_PROMOTE: DeploymentPromote,
    ActionKind.DEPLOYMENT_ROLLBACK: DeploymentRef,
    ActionKind.DEPLOYMENT_RETIRE: DeploymentRef,
    ActionKind.APPROVAL_VOTE: ApprovalVotePayload,
    ActionKind.INFERENCE_POLICY_SET: InferencePolicySet,
    ActionKind.MONITORING_REPORT: MonitoringReport,
    ActionKind.RETRAINING_TRIGGER: RetrainingTrigger,
    ActionKind.COST_RECORD: CostRecordPayload,
    ActionKind.BUDGET_SET: BudgetSet,
    ActionKind.REPORT_EXPORT: ReportExport,
    ActionKind.POLICY_RELOAD: Empty,
    ActionKind.AUDIT_VERIFY: Empty,
    ActionKind.AUDIT_EXPORT: AuditExport,
    ActionKind.ARTIFACT_UPLOAD: ArtifactUpload,
    ActionKind.WEBHOOK_SUBSCRIBE: WebhookSubscribe,
    ActionKind.WEBHOOK_UNSUBSCRIBE: WebhookName,
    ActionKind.WEBHOOK_REDELIVER: WebhookRedeliver,
    ActionKind.WEBHOOK_ALLOW_TARGET: WebhookAllowTarget,
}


@dataclass(frozen=True, slots=True)
class TokenCredential:
    """A bearer API token as presented by a caller. Never printed."""

    token: str = field(repr=False)

    def describe(self) -> str:
        # Only the public prefix may appear in logs and audit events.
        parts = self.token.split("_", 2) if isinstance(self.token, str) else []
        if (
            len(parts) == 3
            and parts[0] == "flj"
            and len(parts[1]) == 12
            and all(c in "0123456789abcdef" for c in parts[1])
        ):
            return f"token:{parts[1]}"
        return "token:<malformed>"


@dataclass(frozen=True, slots=True)
class PrincipalRef:
    """An in-process identity (a scheduler acting as a service principal), resolved by principal id."""

    principal_id: str

    def describe(self) -> str:
        return f"principal:{self.principal_id[:32]}"


@dataclass(frozen=True, slots=True)
class Action:
    """A request to do one lifecycle operation in one tenant, before anything has checked it.

    ``kind`` and ``payload`` arrive raw (strings and plain data) so that an unknown kind or a malformed
    payload is a denial the pipeline audits, not an exception at the caller.
    """

    kind: str
    tenant: str
    principal: TokenCredential | PrincipalRef
    payload: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    #: A client's key for retrying a creating request safely: the first answer is stored with the action
    #: and given again for the same key and payload, without doing the action twice.
    idempotency_key: str | None = None


def parse_kind(raw: str) -> ActionKind | None:
    try:
        return ActionKind(raw)
    except ValueError:
        return None
