"""The compliance report: what an auditor takes away for one tenant and one period, as pydantic models.

Times are aware UTC datetimes (ISO 8601 in every format). Rows that have a time are filtered to the period
``[period_start, period_end)``; inventory sections (datasets, backends, models, deployments) list what existed
at ``period_end``. Data subjects are never named: only SHA-256 hashes of their ids appear.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SchemaVersion = Literal["falaj-compliance-report/v1"]
SCHEMA_VERSION: SchemaVersion = "falaj-compliance-report/v1"
SCHEMA_ID = "https://falaj.dev/schemas/compliance-report.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Section = Literal[
    "header",
    "processing_inventory",
    "processing_locations",
    "cross_border_transfers",
    "consent",
    "erasure",
    "models",
    "deployments",
    "policy_bundles",
    "denied_actions",
    "audit",
    "controls",
]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- header --------------------------------------------------------------------------------------------------------
class ReportHeader(_Row):
    """Who and when the report is about, and what produced it."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    report_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="uuid4, hex")
    tenant: str = Field(description="tenant slug")
    tenant_name: str
    ruleset: str = Field(description="the data-protection rule set the tenant carries (uae-federal, difc, adgm)")
    period_start: AwareDatetime = Field(description="inclusive")
    period_end: AwareDatetime = Field(description="exclusive")
    generated_at: AwareDatetime
    falaj_version: str


# -- processing inventory ------------------------------------------------------------------------------------------
class DatasetRow(_Row):
    """A dataset version that existed at period end (PDPL Art. 7 record of processing)."""

    name: str
    version: int
    classification: str
    residency: str = Field(description="ISO 3166 country the data must stay in unless a basis is recorded")
    legal_basis: str | None
    consented_purposes: list[str] = Field(
        description="purposes for which the dataset's data subjects hold consent records (datasets store no "
        "purpose of their own)"
    )
    storage_backend: str | None
    storage_region: str | None = Field(description="region of the storage backend (the data's source region)")
    uri: str | None
    digest: str | None
    subject_column: str | None
    subjects_indexed: int = Field(description="data subjects in the dataset's subject index when generated")
    registered_at: AwareDatetime
    registered_by: str | None
    status: Literal["active", "retired"] = Field(description="status at period end")
    retired_at: AwareDatetime | None


# -- processing locations ------------------------------------------------------------------------------------------
class BackendRow(_Row):
    name: str
    kind: str
    plugin: str
    region: str
    country: str | None = Field(description="country of the region in the policy bundle's region catalogue")
    node_class: str
    enabled: bool = Field(description="state when generated")
    registered_at: AwareDatetime


class TrainingRunRow(_Row):
    """A training run submitted in the period, and where it ran."""

    run_id: str
    name: str
    backend: str | None
    region: str | None
    country: str | None
    node_class: str | None
    inputs: list[str]
    status: str
    requested_by: str
    submitted_at: AwareDatetime


class DeploymentLocationRow(_Row):
    name: str
    environment: str
    runtime_backend: str | None
    region: str | None
    country: str | None
    status: str


class ProcessingLocations(_Row):
    backends: list[BackendRow]
    training_runs: list[TrainingRunRow]
    deployments: list[DeploymentLocationRow]


# -- cross-border transfers ----------------------------------------------------------------------------------------
class TransferBasisRow(_Row):
    """A recorded basis for data to leave its residency country (PDPL Art. 22 / 23)."""

    recorded_at: AwareDatetime
    recorded_by: str
    destination_country: str
    basis: str
    article: str
    dataset: str | None = Field(description="null: every dataset of the tenant that the rules allow")
    expires_at: AwareDatetime | None
    revoked_at: AwareDatetime | None
    valid_at_period_end: bool
    evidence: dict[str, Any]


class ResidencyExceptionRow(_Row):
    """A recorded exception for health data processed outside the UAE."""

    recorded_at: AwareDatetime
    recorded_by: str
    dataset: str | None
    destination_country: str
    exception: str
    article: str
    evidence: dict[str, Any]


class CrossBorderTransfers(_Row):
    transfer_bases: list[TransferBasisRow]
    residency_exceptions: list[ResidencyExceptionRow]


# -- consent and objections ----------------------------------------------------------------------------------------
class ConsentCountRow(_Row):
    """Consent counts for one purpose, tenant-wide (``dataset`` null) or over one dataset's data subjects."""

    dataset: str | None
    dataset_version: int | None
    purpose: str
    purpose_description: str | None
    records: int = Field(description="consent records granted before period end")
    granted: int = Field(description="of those, valid at period end")
    withdrawn: int = Field(description="of those, withdrawn before period end")
    granted_in_period: int
    withdrawals_honoured: int = Field(
        description="withdrawn in the period; every later read for the purpose excluded these subjects"
    )


class ObjectionRow(_Row):
    """A data subject's objection to automated decisions (PDPL Art. 18)."""

    recorded_at: AwareDatetime
    deployment: str | None
    subject_hash: str
    reason: str
    status: str


class ConsentSection(_Row):
    purposes: list[ConsentCountRow]
    withdrawal_actions_in_period: int = Field(description="consent.withdraw actions that succeeded in the period")
    objections_count: int
    objections: list[ObjectionRow]


# -- erasure -------------------------------------------------------------------------------------------------------
class ErasureRow(_Row):
    """An erasure request open during the period (PDPL Art. 15); the subject only as a hash."""

    request_id: str
    subject_hash: str
    status: str
    requested_at: AwareDatetime
    requested_by: str
    completed_at: AwareDatetime | None
    verified: bool | None
    datasets: list[str]
    rows_removed: int
    feature_stores: int
    training_views: int
    flagged_model_versions: int


# -- models --------------------------------------------------------------------------------------------------------
class ModelVersionRow(_Row):
    model: str
    version: int
    artifact_digest: str
    storage_backend: str | None
    storage_region: str | None
    training_run_id: str | None
    registered_at: AwareDatetime
    registered_by: str | None
    status: str
    signer_key_ids: list[str]
    signed_by: list[str]
    flags: list[str] = Field(description="flag types, e.g. trained-on-erased-subject")


# -- deployments ---------------------------------------------------------------------------------------------------
class VoteRow(_Row):
    approver: str
    at: AwareDatetime
    decision: str
    comment: str


class ApprovalRow(_Row):
    request_id: str
    environment: str
    status: str
    quorum: int
    approver_role: str
    requested_by: str
    requested_at: AwareDatetime
    expires_at: AwareDatetime
    decided_at: AwareDatetime | None
    votes: list[VoteRow]


class DeploymentRow(_Row):
    name: str
    environment: str
    status: str = Field(description="status when generated")
    runtime_backend: str | None
    runtime_region: str | None
    requested_by: str
    requested_at: AwareDatetime
    traffic: list[str]
    automated_decisions: bool
    human_review_contact: str | None
    flags: list[str]
    approvals: list[ApprovalRow]


# -- policy bundles ------------------------------------------------------------------------------------------------
class PolicyBundleRow(_Row):
    """A policy bundle in force during the period (activated before it, in it, or deciding in it)."""

    digest: str
    source: str
    files: list[str]
    loaded_by: str | None
    activated_at: AwareDatetime | None = Field(description="last activation (earlier ones are not stored)")
    decisions_in_period: int = Field(description="this tenant's audit events decided under the bundle")


# -- denied actions ------------------------------------------------------------------------------------------------
class DeniedActionRow(_Row):
    at: AwareDatetime
    principal: str
    kind: str
    resource: str
    check: str | None
    reason: str
    operation_id: str
    audit_seq: int | None


class KindCount(_Row):
    kind: str
    count: int


class DeniedActions(_Row):
    count: int
    by_kind: list[KindCount]
    rows: list[DeniedActionRow]


# -- audit ---------------------------------------------------------------------------------------------------------
class AuditVerification(_Row):
    """The result of verifying the whole chain (every tenant), as ``falaj audit verify`` reports it."""

    ok: bool
    events: int
    last_seq: int
    first_bad_seq: int | None
    problem: str | None
    checkpoints_verified: int
    latest_checkpoint: int | None


class CheckpointRow(_Row):
    seq: int
    hash: str
    key_id: str
    at: AwareDatetime


class AuditSection(_Row):
    verification: AuditVerification
    latest_checkpoint: CheckpointRow | None
    audit_key_id: str | None = Field(description="the key that verifies checkpoints and this report's signature")
    tenant_events_in_period: int
    first_seq_in_period: int | None
    last_seq_in_period: int | None


# -- controls ------------------------------------------------------------------------------------------------------
class ControlRow(_Row):
    control: str
    articles: list[str]
    measure: str
    evidence_section: Section
    status: str


class ComplianceReport(_Row):
    """A tenant's compliance report for one period (schema ``falaj-compliance-report/v1``)."""

    header: ReportHeader
    processing_inventory: list[DatasetRow]
    processing_locations: ProcessingLocations
    cross_border_transfers: CrossBorderTransfers
    consent: ConsentSection
    erasure: list[ErasureRow]
    models: list[ModelVersionRow]
    deployments: list[DeploymentRow]
    policy_bundles: list[PolicyBundleRow]
    denied_actions: DeniedActions
    audit: AuditSection
    controls: list[ControlRow]


def json_schema() -> dict[str, Any]:
    """The published JSON Schema (2020-12) of the report."""
    schema = ComplianceReport.model_json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": SCHEMA_ID, **schema}


def json_schema_text() -> str:
    """The schema as committed in ``docs/schemas/compliance-report.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- the PDPL mapping of docs/compliance.md, as data ---------------------------------------------------------------
_ART7 = "PDPL Art. 7 (controller's obligations: record of processing, protective measures)"
_ART20 = "PDPL Art. 20 (security)"

CONTROLS: tuple[dict[str, Any], ...] = (
    {
        "control": "Tamper-evident audit log of every decision, denials included",
        "articles": [_ART7, _ART20],
        "measure": "SHA-256 hash-chained audit events in the same transaction as each change; Ed25519-signed "
        "checkpoints, also kept in a witness file outside the database",
        "evidence_section": "audit",
        "status": "in place",
    },
    {
        "control": "Record of processing",
        "articles": ["PDPL Art. 7 (record: data categories, purposes, access, cross-border movements)"],
        "measure": "every action recorded with its decision; datasets carry classification, residency, legal basis, "
        "schema, subject column, digest; transfer bases and exceptions are recorded",
        "evidence_section": "processing_inventory",
        "status": "in place",
    },
    {
        "control": "Deny by default, RBAC per tenant, separation of duties",
        "articles": [_ART7, _ART20],
        "measure": "casbin RBAC with tenants as domains, deny overrides allow; another tenant's principal always "
        "denied; approvers and auditors cannot change state; the requester never approves",
        "evidence_section": "denied_actions",
        "status": "in place",
    },
    {
        "control": "Authentication with hashed, expiring, revocable tokens",
        "articles": ["PDPL Art. 20 (security)"],
        "measure": "256-bit random API tokens, only SHA-256 of the secret stored, expiry and revocation effective on "
        "the next action, secrets never logged or audited",
        "evidence_section": "denied_actions",
        "status": "in place",
    },
    {
        "control": "Keys encrypted at rest",
        "articles": ["PDPL Art. 20 (encryption, confidentiality)"],
        "measure": "audit and signing private keys are PKCS#8-encrypted with the master key",
        "evidence_section": "audit",
        "status": "in place",
    },
    {
        "control": "Artifacts encrypted at rest, per tenant",
        "articles": ["PDPL Art. 20 (encryption, confidentiality, integrity)"],
        "measure": "the builtin store seals every blob with AES-256-GCM under the tenant's own data key, wrapped "
        "by the master key, in authenticated chunks; every read is checked chunk by chunk and against its address",
        "evidence_section": "models",
        "status": "in place",
    },
    {
        "control": "Consent with evidence; withdrawal stops future use",
        "articles": ["PDPL Art. 6 (conditions for consent; withdrawal does not affect earlier processing)"],
        "measure": "consent per subject and purpose with evidence and time; reads for a purpose see only subjects "
        "whose consent is valid at that moment; withdrawal applies to the next read",
        "evidence_section": "consent",
        "status": "in place",
    },
    {
        "control": "Purpose limitation; lawful basis",
        "articles": [
            "PDPL Art. 5 (processing controls: specific purpose)",
            "PDPL Art. 4 (processing without consent)",
        ],
        "measure": "every read of personal data names a known purpose; datasets name their legal basis; "
        "non-consent bases are not consent-filtered",
        "evidence_section": "processing_inventory",
        "status": "in place",
    },
    {
        "control": "Residency and cross-border transfer",
        "articles": [
            "PDPL Art. 22 (transfer with adequate protection)",
            "PDPL Art. 23 (transfer otherwise: contract, express consent)",
        ],
        "measure": "every backend's region has a country; every delegation is checked; personal and sensitive data "
        "leave their residency only with a recorded basis valid under the tenant's rule set",
        "evidence_section": "cross_border_transfers",
        "status": "in place",
    },
    {
        "control": "Health data stays in the UAE",
        "articles": [
            "Federal Law No. 2 of 2019 (ICT in health fields) Art. 13",
            "MoHAP Resolution No. 51 of 2021 (exceptions)",
        ],
        "measure": "health data is stored and processed only in UAE regions unless an exception is recorded for that "
        "dataset and country",
        "evidence_section": "cross_border_transfers",
        "status": "in place",
    },
    {
        "control": "Erasure",
        "articles": ["PDPL Art. 15 (correction or erasure)"],
        "measure": "the subject is removed from every dataset file and from every feature store (offline history "
        "and online stores), each store then reports no row of the subject left; models trained on their data "
        "flagged, their consent records deleted",
        "evidence_section": "erasure",
        "status": "in place",
    },
    {
        "control": "Consent on every feature read and write",
        "articles": ["PDPL Art. 6 (conditions for consent)", "PDPL Art. 5 (processing controls: specific purpose)"],
        "measure": "materializations, pushes and stream messages carry only subjects with valid consent for "
        "feature-serving; historical retrieval for a purpose returns only consenting subjects; online reads check "
        "consent per subject at read time",
        "evidence_section": "consent",
        "status": "in place",
    },
    {
        "control": "Residency of feature data",
        "articles": [
            "PDPL Art. 22 (transfer with adequate protection)",
            "PDPL Art. 23 (transfer otherwise: contract, express consent)",
        ],
        "measure": "feature views inherit classification and residency from their sources; their stores' region is "
        "checked at definition, materialization, push and retrieval",
        "evidence_section": "cross_border_transfers",
        "status": "in place",
    },
    {
        "control": "Data quality and accuracy of features",
        "articles": ["PDPL Art. 5 (processing controls: accurate, kept up to date)"],
        "measure": "expectations per feature view; a failing one, or a source whose schema changed, denies the "
        "materialization naming each failure; each materialization keeps a statistics profile as drift reference",
        "evidence_section": "denied_actions",
        "status": "in place",
    },
    {
        "control": "Lineage of features",
        "articles": [_ART7],
        "measure": "lineage edges dataset -> feature view -> training run; OpenLineage run events for every "
        "materialization and retrieval",
        "evidence_section": "processing_inventory",
        "status": "in place",
    },
    {
        "control": "Automated decisions: human review and objection",
        "articles": [
            "PDPL Art. 18 (objection to automated processing; human review on request)",
            "PDPL Art. 13 (information on automated decisions)",
        ],
        "measure": "a deployment making automated decisions names a human-review contact; subjects' objections are "
        "recorded and answered with it",
        "evidence_section": "consent",
        "status": "in place",
    },
    {
        "control": "Signed model artifacts",
        "articles": ["PDPL Art. 20 (integrity)"],
        "measure": "model-signing bundles by trusted keys, verified at registration, request, approval and rollout; "
        "revocation blocks new rollouts and flags live deployments",
        "evidence_section": "models",
        "status": "in place",
    },
    {
        "control": "Approvals before production",
        "articles": ["PDPL Art. 7 (organisational measures)", "PDPL Art. 21 (impact assessment)"],
        "measure": "deployments to protected environments need a quorum of approvers with a comment each, never the "
        "requester, before expiry; the rollout re-checks every policy",
        "evidence_section": "deployments",
        "status": "in place",
    },
    {
        "control": "Free-zone regimes",
        "articles": ["PDPL Art. 2 (scope: free zones with their own law excluded)"],
        "measure": "a tenant carries a rule set (uae-federal, difc, adgm) with its transfer bases and adequate "
        "countries; the bundle digest is in every decision",
        "evidence_section": "policy_bundles",
        "status": "in place",
    },
)

#: The article each recorded transfer basis rests on, per rule set (uae-federal is the default).
TRANSFER_ARTICLES: dict[str, dict[str, str]] = {
    "uae-federal": {
        "adequacy": "PDPL Art. 22 (transfer with adequate protection)",
        "contract": "PDPL Art. 23 (transfer otherwise: contract)",
        "express-consent": "PDPL Art. 23 (transfer otherwise: express consent)",
    },
    "difc": {
        "adequacy": "DIFC DPL No. 5 of 2020 Art. 26 (adequate jurisdiction)",
        "contract": "DIFC DPL No. 5 of 2020 Art. 27 (appropriate safeguards)",
        "express-consent": "DIFC DPL No. 5 of 2020 Art. 27 (explicit consent)",
    },
    "adgm": {
        "adequacy": "ADGM DPR 2021 ss. 40-41 (transfers: adequacy)",
        "contract": "ADGM DPR 2021 ss. 40-41 (transfers: safeguards)",
        "express-consent": "ADGM DPR 2021 ss. 40-41 (transfers: explicit consent)",
    },
}
RESIDENCY_EXCEPTION_ARTICLE = "Federal Law No. 2 of 2019 Art. 13; MoHAP Resolution No. 51 of 2021"


def transfer_article(ruleset: str, basis: str) -> str:
    """The article a transfer basis rests on under a rule set (the basis itself when unknown)."""
    return TRANSFER_ARTICLES.get(ruleset, {}).get(basis, basis)
