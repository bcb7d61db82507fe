"""Governed reads: every list and item the API serves, with keyset (cursor) pagination, filters and sorting.

Each resource is described once by a :class:`ListSpec`: the entity, the RBAC resource type whose ``read``
verb guards it, the fields it exposes (never a secret: token hashes, private keys and webhook secrets have
no field here), which fields filter and which sort, and how the rows are scoped to one tenant.

Pagination is by keyset, not offset: the cursor carries the sort, the last row's sort value and its id, so
a page is one index range scan however deep the client pages, and rows inserted meanwhile neither repeat
nor vanish. Cursors are opaque (base64url JSON) and checked: a cursor made for another sort is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from falaj.core.domain import (
    ApiToken,
    ApprovalRequest,
    ApprovalVote,
    AuditEvent,
    Backend,
    Budget,
    ComplianceReportRecord,
    ConsentRecord,
    CostRecord,
    Dataset,
    Deployment,
    Entity,
    ErasureRequest,
    FeatureService,
    FeatureView,
    LineageEdge,
    Materialization,
    Model,
    ModelAlias,
    ModelSignature,
    ModelVersion,
    Objection,
    Operation,
    PolicyBundleRecord,
    Principal,
    ResidencyException,
    RoleAssignment,
    SigningKey,
    Tenant,
    TrainingRun,
    TransferBasis,
    WebhookAllowEntry,
    WebhookDelivery,
    WebhookSubscription,
)
from falaj.core.errors import NotFoundError, ValidationError

FieldType = Literal["str", "int", "bool", "datetime"]
MAX_LIMIT = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_LIMIT = 50


@dataclass(frozen=True)
class ListSpec:
    """One readable resource."""

    name: str  # the URL segment, e.g. "model-versions"
    rbac: str  # RBAC resource type; reading needs its ``read`` verb
    entity: Any  # the mapped class the rows come from
    fields: Mapping[str, Any]  # exposed field -> column expression
    filters: Mapping[str, FieldType]  # exact-match filters (field names)
    sorts: tuple[str, ...]  # sortable fields (never nullable)
    tenant_column: Any  # compared with the tenant's id (or slug when tenant_by_slug)
    key: str = "id"  # the field that names one item in GET /{resource}/{key}
    key_type: FieldType = "str"
    id_field: str = "id"  # unique tiebreaker for keyset pagination
    default_sort: str = "-created_at"
    joins: tuple[tuple[Any, Any], ...] = ()
    tenant_by_slug: bool = False
    summary: str = ""
    extra_where: Callable[[], ColumnElement[bool]] | None = None
    types: dict[str, FieldType] = field(default_factory=dict)  # filled in below from the filters and sorts

    def field_type(self, name: str) -> FieldType:
        return self.filters.get(name) or self.types.get(name) or "str"


def _cols(entity: Any, *names: str) -> dict[str, Any]:
    return {n: getattr(entity, n) for n in names}


_MODEL_NAME = Model.name.label("model")

SPECS: dict[str, ListSpec] = {}


def _add(spec: ListSpec) -> None:
    SPECS[spec.name] = spec


_add(
    ListSpec(
        "tenants",
        "tenant",
        Tenant,
        _cols(Tenant, "id", "slug", "display_name", "ruleset", "disabled", "created_at"),
        {"slug": "str", "ruleset": "str", "disabled": "bool"},
        ("created_at", "slug"),
        Tenant.id,
        key="slug",
        summary="The tenant itself (platform roles list every tenant through the operator tenant)",
    )
)
_add(
    ListSpec(
        "principals",
        "principal",
        Principal,
        _cols(Principal, "id", "name", "kind", "email", "disabled", "created_at"),
        {"name": "str", "kind": "str", "disabled": "bool"},
        ("created_at", "name"),
        Principal.tenant_id,
        key="name",
        summary="Users and service principals",
    )
)
_add(
    ListSpec(
        "tokens",
        "token",
        ApiToken,
        {
            "id": ApiToken.id,
            "prefix": ApiToken.prefix,
            "principal": Principal.name.label("principal"),
            "description": ApiToken.description,
            "expires_at": ApiToken.expires_at,
            "revoked_at": ApiToken.revoked_at,
            "last_used_at": ApiToken.last_used_at,
            "created_at": ApiToken.created_at,
        },
        {"principal": "str", "prefix": "str"},
        ("created_at",),
        Principal.tenant_id,
        key="prefix",
        joins=((Principal, ApiToken.principal_id == Principal.id),),
        summary="API tokens (prefixes and dates; the secret was shown once and only its hash is kept)",
    )
)
_add(
    ListSpec(
        "roles",
        "role",
        RoleAssignment,
        {
            "id": RoleAssignment.id,
            "principal": Principal.name.label("principal"),
            "role": RoleAssignment.role,
            "created_at": RoleAssignment.created_at,
        },
        {"principal": "str", "role": "str"},
        ("created_at", "role"),
        RoleAssignment.tenant_id,
        joins=((Principal, RoleAssignment.principal_id == Principal.id),),
        summary="Role assignments in the tenant",
    )
)
_add(
    ListSpec(
        "backends",
        "backend",
        Backend,
        _cols(Backend, "id", "name", "kind", "plugin", "region", "node_class", "settings", "enabled", "created_at"),
        {"name": "str", "kind": "str", "plugin": "str", "region": "str", "node_class": "str", "enabled": "bool"},
        ("created_at", "name", "region"),
        Backend.tenant_id,
        key="name",
        summary="Registered backends (plugin, region, node class)",
    )
)
_add(
    ListSpec(
        "datasets",
        "dataset",
        Dataset,
        _cols(
            Dataset,
            "id",
            "name",
            "version",
            "classification",
            "residency",
            "legal_basis",
            "uri",
            "schema",
            "digest",
            "subject_column",
            "status",
            "created_at",
        ),
        {"name": "str", "classification": "str", "residency": "str", "status": "str", "version": "int"},
        ("created_at", "name"),
        Dataset.tenant_id,
        summary="Registered datasets with classification and residency",
    )
)
_add(
    ListSpec(
        "consents",
        "consent",
        ConsentRecord,
        _cols(ConsentRecord, "id", "subject_id", "purpose", "granted_at", "withdrawn_at", "created_at"),
        {"subject_id": "str", "purpose": "str"},
        ("created_at", "granted_at"),
        ConsentRecord.tenant_id,
        summary="Consent records (personal data: data stewards and auditors only)",
    )
)
_add(
    ListSpec(
        "erasure-requests",
        "erasure",
        ErasureRequest,
        _cols(ErasureRequest, "id", "status", "completed_at", "verification", "created_at"),
        {"status": "str"},
        ("created_at",),
        ErasureRequest.tenant_id,
        summary="Erasure requests and their verified completion (subject ids are not listed)",
    )
)
_add(
    ListSpec(
        "transfer-bases",
        "transfer_basis",
        TransferBasis,
        _cols(TransferBasis, "id", "destination_country", "basis", "dataset_id", "evidence", "expires_at", "revoked_at")
        | {"created_at": TransferBasis.created_at},
        {"destination_country": "str", "basis": "str", "dataset_id": "str"},
        ("created_at",),
        TransferBasis.tenant_id,
        summary="Cross-border transfer bases (PDPL Art. 22/23)",
    )
)
_add(
    ListSpec(
        "residency-exceptions",
        "residency_exception",
        ResidencyException,
        _cols(ResidencyException, "id", "dataset_id", "destination_country", "exception", "evidence", "created_at"),
        {"destination_country": "str", "dataset_id": "str"},
        ("created_at",),
        ResidencyException.tenant_id,
        summary="Residency exceptions (e.g. health data, Federal Law 2/2019 Art. 13)",
    )
)
_add(
    ListSpec(
        "objections",
        "objection",
        Objection,
        _cols(Objection, "id", "deployment_id", "reason", "status", "created_at"),
        {"status": "str", "deployment_id": "str"},
        ("created_at",),
        Objection.tenant_id,
        summary="Objections to automated decisions (PDPL Art. 18)",
    )
)
_add(
    ListSpec(
        "entities",
        "entity",
        Entity,
        _cols(Entity, "id", "name", "version", "join_keys", "subject", "description", "created_at"),
        {"name": "str", "version": "int"},
        ("created_at", "name"),
        Entity.tenant_id,
        summary="Entities (what features are about; a subject entity's key is a data subject id)",
    )
)
_add(
    ListSpec(
        "feature-views",
        "feature_view",
        FeatureView,
        _cols(
            FeatureView,
            "id",
            "name",
            "version",
            "kind",
            "status",
            "entities",
            "features",
            "ttl_seconds",
            "source_dataset_id",
            "timestamp_field",
            "created_timestamp_field",
            "offline_backend_id",
            "online_backend_id",
            "expectations",
            "sources",
            "transform",
            "classification",
            "residency",
            "watermark",
            "description",
            "owner",
            "digest",
            "created_at",
        ),
        {"name": "str", "owner": "str", "version": "int", "kind": "str", "status": "str"},
        ("created_at", "name"),
        FeatureView.tenant_id,
        summary="Feature views (every version; the active one per name is the latest)",
    )
)
_add(
    ListSpec(
        "feature-services",
        "feature_service",
        FeatureService,
        _cols(FeatureService, "id", "name", "version", "features", "description", "owner", "created_at"),
        {"name": "str", "version": "int"},
        ("created_at", "name"),
        FeatureService.tenant_id,
        summary="Feature services (named groups of features pinned to view versions)",
    )
)
_add(
    ListSpec(
        "materializations",
        "feature_view",
        Materialization,
        _cols(
            Materialization,
            "id",
            "feature_view_id",
            "mode",
            "status",
            "window_start",
            "window_end",
            "source_digest",
            "rows_read",
            "entities_written",
            "excluded_subjects",
            "profile",
            "requested_by",
            "started_at",
            "finished_at",
            "created_at",
        ),
        {"feature_view_id": "str", "status": "str", "mode": "str"},
        ("created_at",),
        Materialization.tenant_id,
        summary="Materializations with their statistics profile (the reference for drift monitoring)",
    )
)
_add(
    ListSpec(
        "training-runs",
        "training",
        TrainingRun,
        _cols(
            TrainingRun,
            "id",
            "name",
            "backend_id",
            "spec",
            "inputs",
            "status",
            "metrics",
            "started_at",
            "finished_at",
            "created_at",
        ),
        {"name": "str", "status": "str", "backend_id": "str"},
        ("created_at", "name"),
        TrainingRun.tenant_id,
        summary="Training runs with their status and metrics",
    )
)
_add(
    ListSpec(
        "models",
        "model",
        Model,
        _cols(Model, "id", "name", "description", "created_at"),
        {"name": "str"},
        ("created_at", "name"),
        Model.tenant_id,
        key="name",
        summary="Registered models",
    )
)
_add(
    ListSpec(
        "model-versions",
        "model_version",
        ModelVersion,
        {
            "id": ModelVersion.id,
            "model": _MODEL_NAME,
            "version": ModelVersion.version,
            "artifact_digest": ModelVersion.artifact_digest,
            "storage_backend_id": ModelVersion.storage_backend_id,
            "training_run_id": ModelVersion.training_run_id,
            "signer": ModelVersion.signer,
            "metrics": ModelVersion.metrics,
            "status": ModelVersion.status,
            "flags": ModelVersion.flags,
            "created_at": ModelVersion.created_at,
        },
        {"model": "str", "version": "int", "status": "str", "signer": "str", "artifact_digest": "str"},
        ("created_at", "version"),
        Model.tenant_id,
        joins=((Model, ModelVersion.model_id == Model.id),),
        summary="Model versions with artifact digest, signer, metrics and flags",
    )
)
_add(
    ListSpec(
        "model-aliases",
        "model_alias",
        ModelAlias,
        {
            "id": ModelAlias.id,
            "model": _MODEL_NAME,
            "alias": ModelAlias.alias,
            "model_version_id": ModelAlias.model_version_id,
            "created_at": ModelAlias.created_at,
        },
        {"model": "str", "alias": "str"},
        ("created_at", "alias"),
        Model.tenant_id,
        joins=((Model, ModelAlias.model_id == Model.id),),
        summary="Model aliases (champion, challenger, ...)",
    )
)
_add(
    ListSpec(
        "signatures",
        "model_version",
        ModelSignature,
        {
            "id": ModelSignature.id,
            "model": _MODEL_NAME,
            "version": ModelVersion.version,
            "key_id": ModelSignature.key_id,
            "signed_by": ModelSignature.signed_by,
            "bundle": ModelSignature.bundle,
            "created_at": ModelSignature.created_at,
        },
        {"model": "str", "version": "int", "key_id": "str"},
        ("created_at",),
        Model.tenant_id,
        joins=(
            (ModelVersion, ModelSignature.model_version_id == ModelVersion.id),
            (Model, ModelVersion.model_id == Model.id),
        ),
        summary="Signatures of model versions (sigstore bundles)",
    )
)
_add(
    ListSpec(
        "signing-keys",
        "signing_key",
        SigningKey,
        _cols(SigningKey, "id", "key_id", "owner", "public_key_pem", "revoked_at", "created_at"),
        {"key_id": "str", "owner": "str"},
        ("created_at",),
        SigningKey.tenant_id,
        summary="Signing keys (public halves only)",
    )
)
_add(
    ListSpec(
        "deployments",
        "deployment",
        Deployment,
        _cols(
            Deployment,
            "id",
            "name",
            "environment",
            "runtime_backend_id",
            "traffic",
            "status",
            "endpoint",
            "human_review_contact",
            "flags",
            "created_at",
        ),
        {"name": "str", "environment": "str", "status": "str", "runtime_backend_id": "str"},
        ("created_at", "name"),
        Deployment.tenant_id,
        key="name",
        summary="Deployments with their traffic split and status",
    )
)
_add(
    ListSpec(
        "approvals",
        "approval",
        ApprovalRequest,
        _cols(
            ApprovalRequest,
            "id",
            "action_kind",
            "resource",
            "environment",
            "deployment_id",
            "quorum",
            "approver_role",
            "expires_at",
            "status",
            "decided_at",
            "created_at",
        ),
        {"status": "str", "environment": "str", "deployment_id": "str", "action_kind": "str"},
        ("created_at",),
        ApprovalRequest.tenant_id,
        summary="Approval requests",
    )
)
_add(
    ListSpec(
        "approval-votes",
        "approval",
        ApprovalVote,
        {
            "id": ApprovalVote.id,
            "request_id": ApprovalVote.request_id,
            "approver": Principal.name.label("approver"),
            "vote": ApprovalVote.vote,
            "comment": ApprovalVote.comment,
            "created_at": ApprovalVote.created_at,
        },
        {"request_id": "str", "vote": "str"},
        ("created_at",),
        ApprovalRequest.tenant_id,
        joins=(
            (ApprovalRequest, ApprovalVote.request_id == ApprovalRequest.id),
            (Principal, ApprovalVote.approver_id == Principal.id),
        ),
        summary="Votes on approval requests: who, when, comment",
    )
)
_add(
    ListSpec(
        "lineage",
        "model_version",
        LineageEdge,
        _cols(LineageEdge, "id", "source_type", "source_id", "target_type", "target_id", "relation", "created_at"),
        {"source_type": "str", "source_id": "str", "target_type": "str", "target_id": "str"},
        ("created_at",),
        LineageEdge.tenant_id,
        summary="Lineage edges (dataset -> run -> model version)",
    )
)
_add(
    ListSpec(
        "costs",
        "cost",
        CostRecord,
        _cols(CostRecord, "id", "operation_id", "backend_id", "resource", "amount", "currency", "created_at"),
        {"currency": "str", "backend_id": "str"},
        ("created_at",),
        CostRecord.tenant_id,
        summary="Cost records",
    )
)
_add(
    ListSpec(
        "budgets",
        "budget",
        Budget,
        _cols(Budget, "id", "period", "limit_amount", "currency", "created_at"),
        {"period": "str"},
        ("created_at", "period"),
        Budget.tenant_id,
        key="period",
        summary="Budgets per month",
    )
)
_add(
    ListSpec(
        "operations",
        "audit",
        Operation,
        _cols(
            Operation,
            "id",
            "principal",
            "kind",
            "resource",
            "verdict",
            "outcome",
            "decision",
            "result",
            "error",
            "audit_seq",
            "created_at",
        ),
        {"kind": "str", "verdict": "str", "outcome": "str", "principal": "str"},
        ("created_at",),
        Operation.tenant,
        tenant_by_slug=True,
        summary="Every action decided in the tenant, denials included, with its checks",
    )
)
_add(
    ListSpec(
        "audit-events",
        "audit",
        AuditEvent,
        _cols(
            AuditEvent,
            "seq",
            "ts",
            "principal",
            "action",
            "resource",
            "verdict",
            "outcome",
            "reasons",
            "bundle_digest",
            "payload_digest",
            "prev_hash",
            "hash",
        ),
        {"action": "str", "verdict": "str", "outcome": "str", "principal": "str"},
        ("seq",),
        AuditEvent.tenant,
        key="seq",
        key_type="int",
        id_field="seq",
        default_sort="seq",
        tenant_by_slug=True,
        summary="The tenant's audit events, in chain order",
        types={"seq": "int"},
    )
)
_add(
    ListSpec(
        "policy-bundles",
        "policy",
        PolicyBundleRecord,
        _cols(PolicyBundleRecord, "id", "digest", "source", "loaded_by", "activated_at", "created_at"),
        {"digest": "str"},
        ("created_at",),
        None,
        key="digest",
        summary="Policy bundles loaded into this installation, and when each was activated",
    )
)

_add(
    ListSpec(
        "webhooks",
        "webhook",
        WebhookSubscription,
        _cols(
            WebhookSubscription,
            "id",
            "name",
            "url",
            "event_types",
            "outcomes",
            "description",
            "active",
            "created_by",
            "created_at",
        ),
        {"name": "str", "active": "bool"},
        ("created_at", "name"),
        WebhookSubscription.tenant_id,
        key="name",
        summary="Webhook subscriptions (the signing secret was shown once)",
    )
)
_add(
    ListSpec(
        "webhook-deliveries",
        "webhook",
        WebhookDelivery,
        {
            "id": WebhookDelivery.id,
            "webhook": WebhookSubscription.name.label("webhook"),
            "event_seq": WebhookDelivery.event_seq,
            "event_type": WebhookDelivery.event_type,
            "generation": WebhookDelivery.generation,
            "status": WebhookDelivery.status,
            "attempts": WebhookDelivery.attempts,
            "next_attempt_at": WebhookDelivery.next_attempt_at,
            "last_status_code": WebhookDelivery.last_status_code,
            "last_error": WebhookDelivery.last_error,
            "delivered_at": WebhookDelivery.delivered_at,
            "history": WebhookDelivery.history,
            "body": WebhookDelivery.body,
            "created_at": WebhookDelivery.created_at,
        },
        {"webhook": "str", "status": "str", "event_type": "str", "event_seq": "int"},
        ("created_at",),
        WebhookDelivery.tenant_id,
        joins=((WebhookSubscription, WebhookDelivery.subscription_id == WebhookSubscription.id),),
        summary="Webhook deliveries: every attempt, its answer, and what is still to be retried",
    )
)
_add(
    ListSpec(
        "webhook-allowlist",
        "webhook",
        WebhookAllowEntry,
        _cols(WebhookAllowEntry, "id", "cidr", "note", "created_by", "created_at"),
        {"cidr": "str"},
        ("created_at",),
        WebhookAllowEntry.tenant_id,
        summary="Private or loopback ranges allowed as webhook targets",
    )
)
_add(
    ListSpec(
        "reports",
        "report",
        ComplianceReportRecord,
        _cols(
            ComplianceReportRecord,
            "id",
            "period_start",
            "period_end",
            "format",
            "size",
            "sha256",
            "signature",
            "created_by",
            "created_at",
        ),
        {"format": "str"},
        ("created_at",),
        ComplianceReportRecord.tenant_id,
        summary="Exported compliance reports with their detached signatures",
    )
)

for _spec in SPECS.values():
    for _name in _spec.sorts:
        if _name in ("created_at",):
            _spec.types.setdefault(_name, "datetime")
        elif _name in ("version", "seq"):
            _spec.types.setdefault(_name, "int")
    if _spec.key_type != "str":
        _spec.types.setdefault(_spec.key, _spec.key_type)


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _coerce(spec: ListSpec, name: str, raw: Any) -> Any:
    kind = spec.field_type(name)
    if raw is None:
        return None
    try:
        if kind == "int":
            number = int(raw)
            if not INT64_MIN <= number <= INT64_MAX:
                raise ValueError(raw)
            return number
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1"):
                return True
            if str(raw).lower() in ("false", "0"):
                return False
            raise ValueError(raw)
        if kind == "datetime":
            if isinstance(raw, datetime):
                return raw
            return datetime.fromisoformat(str(raw))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name}: {str(raw)[:60]!r} is not a valid {kind}") from exc
    return str(raw)


def encode_cursor(sort: str, value: Any, row_id: Any) -> str:
    raw = json.dumps([sort, jsonable(value), row_id], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(spec: ListSpec, sort: str, cursor: str) -> tuple[Any, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, value, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError("cursor: not a cursor this API issued; start again without one") from exc
    if made_for != sort:
        raise ValidationError(f"cursor: it was issued for sort={made_for!r}, not sort={sort!r}")
    field_name = sort.lstrip("-")
    return _coerce(spec, field_name, value), _coerce(spec, spec.id_field, row_id)


def _tenant_clause(spec: ListSpec, tenant_id: str, tenant_slug: str) -> ColumnElement[bool] | None:
    if spec.tenant_column is None:
        return None
    return spec.tenant_column == (tenant_slug if spec.tenant_by_slug else tenant_id)  # type: ignore[no-any-return]


def _base(spec: ListSpec, tenant_id: str, tenant_slug: str) -> Select[Any]:
    stmt = select(*[col.label(name) for name, col in spec.fields.items()]).select_from(spec.entity)
    for target, onclause in spec.joins:
        stmt = stmt.join(target, onclause)
    clause = _tenant_clause(spec, tenant_id, tenant_slug)
    if clause is not None:
        stmt = stmt.where(clause)
    return stmt


def list_page(
    session: Session,
    spec: ListSpec,
    tenant_id: str,
    tenant_slug: str,
    *,
    filters: Mapping[str, Any] | None = None,
    sort: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """One page of ``spec``'s rows in the tenant, filtered and sorted; ``next_cursor`` is None on the last."""
    sort = sort or spec.default_sort
    field_name = sort.lstrip("-")
    if field_name not in spec.sorts:
        raise ValidationError(f"sort: {sort!r} is not one of {sorted(spec.sorts)} (prefix - to sort descending)")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: {limit} is outside 1..{MAX_LIMIT}")
    descending = sort.startswith("-")
    stmt = _base(spec, tenant_id, tenant_slug)
    for name, raw in (filters or {}).items():
        if raw is None:
            continue
        if name not in spec.filters:
            raise ValidationError(f"{name}: not a filter of {spec.name} (filters: {sorted(spec.filters)})")
        stmt = stmt.where(spec.fields[name] == _coerce(spec, name, raw))
    sort_col, id_col = spec.fields[field_name], spec.fields[spec.id_field]
    if cursor:
        value, last_id = decode_cursor(spec, sort, cursor)
        if field_name == spec.id_field:
            stmt = stmt.where(sort_col < value if descending else sort_col > value)
        elif descending:
            stmt = stmt.where(or_(sort_col < value, and_(sort_col == value, id_col < last_id)))
        else:
            stmt = stmt.where(or_(sort_col > value, and_(sort_col == value, id_col > last_id)))
    order = [sort_col.desc() if descending else sort_col.asc()]
    if field_name != spec.id_field:
        order.append(id_col.desc() if descending else id_col.asc())
    rows = session.execute(stmt.order_by(*order).limit(limit + 1)).mappings().all()
    items = [{k: jsonable(v) for k, v in row.items()} for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(sort, last[field_name], last[spec.id_field])
    return Page(items, next_cursor)


def get_item(session: Session, spec: ListSpec, tenant_id: str, tenant_slug: str, key: Any) -> dict[str, Any]:
    """One item by its key; NotFoundError when it is not in this tenant (another tenant's answers the same)."""
    stmt = _base(spec, tenant_id, tenant_slug).where(spec.fields[spec.key] == _coerce(spec, spec.key, key))
    rows = session.execute(stmt.limit(2)).mappings().all()
    if not rows:
        raise NotFoundError(f"no {spec.name} item {str(key)[:120]!r} in tenant {tenant_slug!r}")
    return {k: jsonable(v) for k, v in rows[0].items()}
