"""Gathering the facts of a decision from the database: lineage, regions, consent, signatures, approvals."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from falaj.core.actions import ActionKind, Payload
from falaj.core.domain import (
    ApprovalRequest,
    ApprovalVote,
    Backend,
    ConsentRecord,
    Dataset,
    DatasetSubject,
    Deployment,
    FeatureView,
    LineageEdge,
    Model,
    ModelSignature,
    ModelVersion,
    ResidencyException,
    SigningKey,
    TransferBasis,
)
from falaj.core.errors import FalajError
from falaj.core.policy.engine import (
    CONSENT_KINDS,
    HOME_COUNTRY,
    SIGNATURE_KINDS,
    UNKNOWN_LINEAGE,
    ApprovalFacts,
    ConsentFacts,
    DataProfile,
    Facts,
    SignatureFacts,
    SourceData,
    strictest,
)

if TYPE_CHECKING:
    from falaj.core.handlers.base import PrincipalView, TenantView
    from falaj.core.pipeline import ControlPlane
    from falaj.core.plugin import BackendConfig


def latest_dataset(session: Session, tenant_id: str, name: str) -> Dataset | None:
    return session.scalar(
        select(Dataset)
        .where(Dataset.tenant_id == tenant_id, Dataset.name == name, Dataset.status == "active")
        .order_by(Dataset.version.desc())
        .limit(1)
    )


def model_version(session: Session, tenant_id: str, model: str, version: int) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(Model.tenant_id == tenant_id, Model.name == model, ModelVersion.version == version)
    )


def source_datasets(session: Session, tenant_id: str, versions: Iterable[ModelVersion]) -> list[Dataset]:
    """Datasets a set of model versions were trained on, through lineage (dataset -> run -> version)."""
    run_ids = {v.training_run_id for v in versions if v.training_run_id}
    if not run_ids:
        return []
    ids = session.scalars(
        select(LineageEdge.source_id).where(
            LineageEdge.tenant_id == tenant_id,
            LineageEdge.target_type == "training_run",
            LineageEdge.target_id.in_(run_ids),
            LineageEdge.source_type == "dataset",
        )
    ).all()
    if not ids:
        return []
    return list(session.scalars(select(Dataset).where(Dataset.id.in_(ids), Dataset.tenant_id == tenant_id)))


_FEATURE_KINDS = (
    ActionKind.FEATURE_VIEW_APPLY,
    ActionKind.FEATURE_VIEW_MATERIALIZE,
    ActionKind.FEATURE_VIEW_PUSH,
    ActionKind.FEATURE_RETRIEVE,
)


class FactLoader:
    """Reads what the policy engine needs for one action. Read-only: it never writes."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def load(
        self,
        session: Session,
        tenant: TenantView,
        principal: PrincipalView,
        roles: frozenset[str],
        kind: ActionKind,
        payload: Payload,
        backend: BackendConfig | None,
    ) -> Facts:
        bundle = self.plane.bundle
        unknown: list[tuple[str, str]] = []
        p: Any = payload
        region = backend.region if backend is not None else None
        data: DataProfile | None = None
        sources: list[Dataset] = []
        versions: list[tuple[str, ModelVersion | None]] = []
        deployment: Deployment | None = None
        other_regions: tuple[str, ...] = ()

        if kind in (ActionKind.BACKEND_REGISTER,) and p.region not in bundle.regions:
            unknown.append(("region", p.region))
        if kind in (ActionKind.PRINCIPAL_CREATE, ActionKind.ROLE_ASSIGN):
            for role in p.roles if kind is ActionKind.PRINCIPAL_CREATE else [p.role]:
                if role not in bundle.known_roles:
                    unknown.append(("role", role))
        if kind in (ActionKind.CONSENT_RECORD, ActionKind.CONSENT_WITHDRAW) and p.purpose not in bundle.purposes:
            unknown.append(("purpose", p.purpose))
        if kind is ActionKind.TENANT_CREATE and p.ruleset not in bundle.rulesets:
            unknown.append(("rule set", p.ruleset))

        if kind is ActionKind.DATASET_REGISTER:
            if p.storage_backend is not None:
                data = DataProfile(
                    p.classification,
                    frozenset({p.residency}),
                    (p.name,),
                    frozenset({p.legal_basis}) if p.legal_basis else frozenset(),
                )
        elif kind is ActionKind.TRAINING_SUBMIT:
            for name in p.inputs:
                ds = latest_dataset(session, tenant.id, name)
                if ds is None:
                    unknown.append(("dataset", name))
                else:
                    sources.append(ds)
        elif kind is ActionKind.MODEL_VERSION_REGISTER and p.training_run_id:
            sources = source_datasets(session, tenant.id, [ModelVersion(training_run_id=p.training_run_id)])
        elif kind in (ActionKind.DEPLOYMENT_REQUEST, ActionKind.DEPLOYMENT_PROMOTE):
            if kind is ActionKind.DEPLOYMENT_PROMOTE:
                # A promotion moves traffic on the deployment's own runtime: that region is where data goes.
                deployment = session.scalar(
                    select(Deployment).where(Deployment.tenant_id == tenant.id, Deployment.name == p.name)
                )
                if deployment is None:
                    unknown.append(("deployment", p.name))
                else:
                    runtime = session.get(Backend, deployment.runtime_backend_id)
                    region = runtime.region if runtime is not None else region
            for variant in p.traffic:
                mv = model_version(session, tenant.id, variant.model, variant.version)
                if mv is None:
                    unknown.append(("model version", f"{variant.model} v{variant.version}"))
                versions.append((f"{variant.model} v{variant.version}", mv))
        elif kind in (ActionKind.DEPLOYMENT_ROLLOUT, ActionKind.APPROVAL_VOTE):
            if kind is ActionKind.APPROVAL_VOTE:
                request = session.get(ApprovalRequest, p.request_id)
                if request is not None and request.tenant_id == tenant.id and request.deployment_id:
                    deployment = session.get(Deployment, request.deployment_id)
            else:
                deployment = session.scalar(
                    select(Deployment).where(Deployment.tenant_id == tenant.id, Deployment.name == p.name)
                )
                if deployment is None:
                    unknown.append(("deployment", p.name))
            if deployment is not None:
                for variant in deployment.traffic:
                    mv = model_version(session, tenant.id, variant["model"], variant["version"])
                    versions.append((f"{variant['model']} v{variant['version']}", mv))
                runtime = session.get(Backend, deployment.runtime_backend_id)
                if runtime is not None and kind is ActionKind.DEPLOYMENT_ROLLOUT:
                    region = runtime.region

        elif kind in _FEATURE_KINDS:
            regions, found = self._feature_facts(session, tenant, kind, p, unknown)
            sources.extend(found)
            if region is None and regions:
                region = regions[0]
            other_regions = tuple(r for r in regions if r != region)
        if kind is ActionKind.TRAINING_SUBMIT and p.features is not None:
            # The join happens in the control plane; the data then goes to the compute backend's region.
            _, found = self._feature_facts(session, tenant, kind, p.features, unknown)
            sources.extend(d for d in found if d.id not in {s.id for s in sources})

        now = datetime.now(UTC)
        unknown_lineage = []
        if versions:
            known = [mv for _, mv in versions if mv is not None]
            sources = source_datasets(session, tenant.id, known)
            # A version with no recorded training data cannot show where that data may go.
            unknown_lineage = [label for label, mv in versions if mv is not None and not mv.training_run_id]
        if sources or unknown_lineage:
            items = tuple(
                SourceData(
                    f"{d.name} v{d.version}",
                    d.classification,
                    d.residency,
                    self._bases(session, tenant.id, d, now),
                    self._exceptions(session, d),
                )
                for d in sources
            ) + tuple(SourceData(label, UNKNOWN_LINEAGE, HOME_COUNTRY) for label in unknown_lineage)
            data = DataProfile(
                strictest(bundle, (d.classification for d in sources)),
                frozenset(d.residency for d in sources) | ({HOME_COUNTRY} if unknown_lineage else set()),
                tuple(item.name for item in items),
                frozenset(d.legal_basis for d in sources if d.legal_basis),
                items,
            )
        elif data is not None and kind is ActionKind.DATASET_REGISTER:
            data = DataProfile(
                data.classification,
                data.residencies,
                data.sources,
                data.legal_bases,
                (
                    SourceData(
                        p.name, p.classification, p.residency, self._bases(session, tenant.id, None, now), frozenset()
                    ),
                ),
            )
        return Facts(
            kind=kind.value,
            tenant=tenant.slug,
            ruleset=tenant.ruleset,
            roles=roles,
            principal=principal.id,
            target_region=region,
            data=data,
            consent=self._consent(session, tenant.id, kind, p, sources, now),
            signatures=self._signatures(session, tenant, kind, versions) if kind.value in SIGNATURE_KINDS else None,
            approval=self._approval(session, tenant.id, principal, roles, kind, p, deployment, now),
            unknown=tuple(unknown),
            other_regions=other_regions,
        )

    # -- pieces ----------------------------------------------------------------------------------------------
    def _feature_facts(
        self, session: Session, tenant: TenantView, kind: ActionKind, p: Any, unknown: list[tuple[str, str]]
    ) -> tuple[list[str], list[Dataset]]:
        """Where a feature action's data comes from (datasets, through views, and an entity dataset) and every
        region it reaches (the stores of every view involved, on-demand views' sources included)."""
        from falaj.core.errors import NotFoundError
        from falaj.core.features import registry as reg

        sources: list[Dataset] = []
        views: list[FeatureView] = []
        try:
            if kind is ActionKind.FEATURE_VIEW_APPLY:
                if p.source_dataset:
                    ds = latest_dataset(session, tenant.id, p.source_dataset)
                    if ds is None:
                        unknown.append(("dataset", p.source_dataset))
                    else:
                        sources.append(ds)
                views = [reg.latest_view(session, tenant.id, n) for n in p.sources]
            elif kind in (ActionKind.FEATURE_VIEW_MATERIALIZE, ActionKind.FEATURE_VIEW_PUSH):
                views = [reg.latest_view(session, tenant.id, p.name)]
            else:  # a retrieval, or a training run's features
                if getattr(p, "feature_service", None):
                    service = reg.latest_service(session, tenant.id, p.feature_service)
                    views = [s.view for s in reg.service_selection(session, tenant.id, service)]
                else:
                    views = [s.view for s in reg.parse_refs(session, tenant.id, p.features)]
                entity_dataset = getattr(p, "entity_dataset", None)
                if entity_dataset:
                    ds = latest_dataset(session, tenant.id, entity_dataset)
                    if ds is None:
                        unknown.append(("dataset", entity_dataset))
                    else:
                        sources.append(ds)
        except NotFoundError as exc:
            unknown.append(("feature definition", str(exc)))
        except FalajError:
            pass  # a malformed reference is the handler's to explain
        regions: list[str] = []
        pending = list(views)
        seen: set[str] = set()
        while pending:
            view = pending.pop(0)
            if view.id in seen:
                continue
            seen.add(view.id)
            for ds in reg.source_datasets(session, view):
                if ds.id not in {d.id for d in sources}:
                    sources.append(ds)
            for src in view.sources:  # an on-demand view reaches its sources' stores
                try:
                    pending.append(reg.view_version(session, tenant.id, src["view"], src["version"]))
                except NotFoundError:
                    unknown.append(("feature view", f"{src['view']} v{src['version']}"))
            store_ids = [view.online_backend_id] if kind is ActionKind.FEATURE_VIEW_PUSH else []
            store_ids += [view.online_backend_id, view.offline_backend_id]
            for backend_id in store_ids:
                backend = session.get(Backend, backend_id) if backend_id else None
                if backend is not None and backend.region not in regions:
                    regions.append(backend.region)
        return regions, sources

    def _bases(
        self, session: Session, tenant_id: str, dataset: Dataset | None, now: datetime
    ) -> frozenset[tuple[str, str]]:
        """Transfer bases valid now for one dataset: those recorded for it, and tenant-wide ones."""
        query = select(TransferBasis).where(TransferBasis.tenant_id == tenant_id, TransferBasis.revoked_at.is_(None))
        if dataset is None:
            query = query.where(TransferBasis.dataset_id.is_(None))
        else:
            query = query.where((TransferBasis.dataset_id.is_(None)) | (TransferBasis.dataset_id == dataset.id))
        return frozenset(
            (r.destination_country, r.basis)
            for r in session.scalars(query)
            if r.expires_at is None or r.expires_at > now
        )

    def _exceptions(self, session: Session, dataset: Dataset) -> frozenset[str]:
        """Countries a health dataset has a recorded exception for."""
        if dataset.classification != "health":
            return frozenset()
        return frozenset(
            session.scalars(
                select(ResidencyException.destination_country).where(ResidencyException.dataset_id == dataset.id)
            )
        )

    def _consent(
        self,
        session: Session,
        tenant_id: str,
        kind: ActionKind,
        p: Any,
        sources: list[Dataset],
        now: datetime,
    ) -> ConsentFacts | None:
        if kind.value not in CONSENT_KINDS:
            return None
        purpose = getattr(p, "purpose", None) or "feature-serving"
        modes = self.plane.bundle.legal_bases
        filtered = [d for d in sources if modes.get(d.legal_basis or "") == "filter"]
        subjects: dict[str, int] = {}
        consented: dict[str, int] = {}
        for ds in filtered:
            label = f"{ds.name} v{ds.version}"
            subjects[label] = (
                session.scalar(
                    select(func.count()).select_from(DatasetSubject).where(DatasetSubject.dataset_id == ds.id)
                )
                or 0
            )
            consented[label] = len(consented_subjects(session, tenant_id, ds.id, purpose, now))
        return ConsentFacts(purpose, subjects, consented)

    def _signatures(
        self,
        session: Session,
        tenant: TenantView,
        kind: ActionKind,
        versions: list[tuple[str, ModelVersion | None]],
    ) -> tuple[SignatureFacts, ...] | None:
        if not versions:
            return None
        policy = self.plane.bundle.signer_policy(tenant.slug)
        out = []
        for label, mv in versions:
            if mv is None:
                continue
            entries = []
            for sig in session.scalars(select(ModelSignature).where(ModelSignature.model_version_id == mv.id)):
                if sig.key_id == "sigstore":
                    problem = self.plane.verify_keyless(session, tenant.slug, mv, sig.bundle, policy.keyless)
                    entries.append((sig.key_id, problem is None, bool(policy.keyless), False))
                    continue
                key = session.scalar(
                    select(SigningKey).where(SigningKey.tenant_id == tenant.id, SigningKey.key_id == sig.key_id)
                )
                trusted = key is not None and (policy.trust == "registered" or sig.key_id in policy.keys)
                revoked = key is not None and key.revoked_at is not None
                valid = (
                    key is not None
                    and self.plane.verify_signature(session, tenant.slug, mv, sig.bundle, key.public_key_pem) is None
                )
                entries.append((sig.key_id, valid, trusted, revoked))
            out.append(SignatureFacts(label, tuple(entries)))
        return tuple(out)

    def _approval(
        self,
        session: Session,
        tenant_id: str,
        principal: PrincipalView,
        roles: frozenset[str],
        kind: ActionKind,
        p: Any,
        deployment: Deployment | None,
        now: datetime,
    ) -> ApprovalFacts | None:
        if kind is ActionKind.DEPLOYMENT_REQUEST:
            return ApprovalFacts(environment=p.environment)
        if kind is ActionKind.DEPLOYMENT_ROLLOUT and deployment is not None:
            request = session.scalar(
                select(ApprovalRequest)
                .where(ApprovalRequest.deployment_id == deployment.id)
                .order_by(ApprovalRequest.created_at.desc())
                .limit(1)
            )
            status = None if request is None else _status(request, now)
            return ApprovalFacts(
                environment=deployment.environment, request_id=request.id if request else None, status=status
            )
        if kind is ActionKind.DEPLOYMENT_PROMOTE and deployment is not None:
            # The approval is for exactly this traffic split: the latest request for it decides.
            wanted = promotion_payload(p)
            request = session.scalar(
                select(ApprovalRequest)
                .where(
                    ApprovalRequest.deployment_id == deployment.id,
                    ApprovalRequest.action_kind == ActionKind.DEPLOYMENT_PROMOTE.value,
                    ApprovalRequest.status.in_(("pending", "approved")),
                )
                .order_by(ApprovalRequest.created_at.desc())
                .limit(1)
            )
            if request is not None and request.action_payload != wanted:
                request = None
            return ApprovalFacts(
                environment=deployment.environment,
                request_id=request.id if request else None,
                status=None if request is None else _status(request, now),
            )
        if kind is ActionKind.APPROVAL_VOTE:
            request = session.get(ApprovalRequest, p.request_id)
            if request is None or request.tenant_id != tenant_id:
                return ApprovalFacts(environment="?", request_id=None)
            voted = (
                session.scalar(
                    select(ApprovalVote.id).where(
                        ApprovalVote.request_id == request.id, ApprovalVote.approver_id == principal.id
                    )
                )
                is not None
            )
            return ApprovalFacts(
                environment=request.environment,
                request_id=request.id,
                status=request.status,
                requester=request.requester_id,
                voter=principal.id,
                voter_roles=roles,
                already_voted=voted,
                expires_at=request.expires_at,
                now=now,
            )
        return None


def promotion_payload(p: Any) -> dict[str, Any]:
    """A promotion's payload as stored with its approval request (and compared when it runs)."""
    return {"name": p.name, "traffic": [v.model_dump(mode="json") for v in p.traffic]}


def _status(request: ApprovalRequest, now: datetime) -> str:
    if request.status == "pending" and request.expires_at <= now:
        return "expired"
    return request.status


def consented_subjects(session: Session, tenant_id: str, dataset_id: str, purpose: str, now: datetime) -> set[str]:
    """Subjects of a dataset whose consent for ``purpose`` is valid at ``now`` (granted, not withdrawn)."""
    rows = session.scalars(
        select(DatasetSubject.subject_id)
        .join(
            ConsentRecord,
            (ConsentRecord.subject_id == DatasetSubject.subject_id) & (ConsentRecord.tenant_id == tenant_id),
        )
        .where(
            DatasetSubject.dataset_id == dataset_id,
            ConsentRecord.purpose == purpose,
            ConsentRecord.withdrawn_at.is_(None),
            ConsentRecord.granted_at <= now,
        )
    )
    return set(rows)
