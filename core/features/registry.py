"""Feature definitions as the control plane keeps them: lookups, store descriptions and consent scopes.

No pyarrow here: handlers and reads import this module whatever extras are installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from falaj.core.domain import Backend, ConsentRecord, Dataset, Entity, FeatureService, FeatureView
from falaj.core.errors import BackendError, NotFoundError, ValidationError
from falaj.core.plugin.interfaces import FeatureViewDef

if TYPE_CHECKING:
    from falaj.core.pipeline import ControlPlane


def definition_digest(definition: Any) -> str:
    """A digest of a definition's canonical JSON: identical definitions, identical digests."""
    return "sha256:" + hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()


def latest(session: Session, model: Any, tenant_id: str, name: str) -> Any:
    query = select(model).where(model.tenant_id == tenant_id, model.name == name)
    if model is FeatureView:
        query = query.where(FeatureView.status == "active")
    return session.scalar(query.order_by(model.version.desc()).limit(1))


def latest_view(session: Session, tenant_id: str, name: str) -> FeatureView:
    row: FeatureView | None = latest(session, FeatureView, tenant_id, name)
    if row is None:
        raise NotFoundError(f"no feature view named {name!r}: define it with feature_view.apply")
    return row


def view_version(session: Session, tenant_id: str, name: str, version: int) -> FeatureView:
    row = session.scalar(
        select(FeatureView).where(
            FeatureView.tenant_id == tenant_id, FeatureView.name == name, FeatureView.version == version
        )
    )
    if row is None:
        raise NotFoundError(f"no feature view {name!r} v{version}")
    return row


def latest_entity(session: Session, tenant_id: str, name: str) -> Entity:
    row: Entity | None = latest(session, Entity, tenant_id, name)
    if row is None:
        raise NotFoundError(f"no entity named {name!r}: define it with entity.apply")
    return row


def latest_service(session: Session, tenant_id: str, name: str) -> FeatureService:
    row: FeatureService | None = latest(session, FeatureService, tenant_id, name)
    if row is None:
        raise NotFoundError(f"no feature service named {name!r}: define it with feature_service.apply")
    return row


def view_def(row: FeatureView, tenant_slug: str) -> FeatureViewDef:
    """What a store is told about one view version (batch views; on-demand views are never stored)."""
    keys = tuple((k["name"], k["dtype"]) for e in row.entities for k in e["join_keys"])
    feats = tuple((f["name"], f["dtype"]) for f in row.features)
    return FeatureViewDef(tenant_slug, row.name, row.version, keys, feats, row.ttl_seconds)


def subject_key(row: FeatureView) -> str | None:
    """The join key whose value is a data subject id, when one of the view's entities is a subject entity."""
    for e in row.entities:
        if e.get("subject"):
            return str(e["join_keys"][0]["name"])
    return None


@dataclass(frozen=True)
class Selection:
    """Features asked for from one view version."""

    view: FeatureView
    features: tuple[str, ...]


def parse_refs(session: Session, tenant_id: str, refs: Sequence[str]) -> list[Selection]:
    """``view`` or ``view:feature`` references, resolved against the latest view versions, grouped by view."""
    order: list[str] = []
    chosen: dict[str, list[str]] = {}
    views: dict[str, FeatureView] = {}
    for ref in refs:
        name, _, feature = ref.partition(":")
        if name not in views:
            views[name] = latest_view(session, tenant_id, name)
            order.append(name)
            chosen[name] = []
        known = [f["name"] for f in views[name].features]
        wanted = [feature] if feature else known
        for f in wanted:
            if f not in known:
                raise ValidationError(f"feature view {name!r} has no feature {f!r} (it has {', '.join(known)})")
            if f not in chosen[name]:
                chosen[name].append(f)
    return [Selection(views[n], tuple(chosen[n])) for n in order]


def service_selection(session: Session, tenant_id: str, service: FeatureService) -> list[Selection]:
    """A feature service's pinned view versions and features."""
    return [
        Selection(view_version(session, tenant_id, item["view"], item["version"]), tuple(item["features"]))
        for item in service.features
    ]


def store(plane: ControlPlane, session: Session, tenant_slug: str, backend_id: str | None, capability: str) -> Any:
    """The live store behind a view's backend, checked to offer ``capability`` (``offline`` / ``online``)."""
    if backend_id is None:
        raise ValidationError(f"the feature view has no {capability} store")
    row = session.get(Backend, backend_id)
    if row is None or not row.enabled:
        raise BackendError(f"the view's {capability} store is gone or disabled")
    check_capability(plane, row, capability)
    return plane.backend_instance(tenant_slug, row)


def check_capability(plane: ControlPlane, row: Backend, capability: str) -> None:
    spec = plane.registry.backend_spec(row.kind, row.plugin)
    if row.kind != "feature_store" or spec is None or capability not in spec.capabilities:
        offered = sorted(spec.capabilities) if spec is not None else []
        raise ValidationError(
            f"backend {row.name!r} is not an {capability} feature store (plugin {row.plugin!r} offers {offered})"
        )


def current_source(session: Session, row: FeatureView) -> Dataset | None:
    """The dataset a batch view reads now: the latest active version of the dataset it was defined on (a view
    follows its source by name, so governance judges the version that is read, not the one first applied)."""
    pinned = session.get(Dataset, row.source_dataset_id) if row.source_dataset_id else None
    if pinned is None:
        return None
    latest_version: Dataset | None = session.scalar(
        select(Dataset)
        .where(Dataset.tenant_id == row.tenant_id, Dataset.name == pinned.name, Dataset.status == "active")
        .order_by(Dataset.version.desc())
        .limit(1)
    )
    return latest_version


def source_datasets(session: Session, row: FeatureView, seen: set[str] | None = None) -> list[Dataset]:
    """The datasets a view's data comes from (through on-demand views' sources too)."""
    seen = seen if seen is not None else set()
    if row.id in seen:
        return []
    seen.add(row.id)
    out: list[Dataset] = []
    if row.source_dataset_id:
        ds = current_source(session, row)
        if ds is not None:
            out.append(ds)
    for src in row.sources:
        parent = session.scalar(
            select(FeatureView).where(
                FeatureView.tenant_id == row.tenant_id,
                FeatureView.name == src["view"],
                FeatureView.version == src["version"],
            )
        )
        if parent is not None:
            out.extend(source_datasets(session, parent, seen))
    return out


def consent_scoped(plane: ControlPlane, datasets: Iterable[Dataset]) -> bool:
    """Whether any source rests on consent (legal basis in *filter* mode): then only consented subjects flow."""
    modes = plane.bundle.legal_bases
    return any(modes.get(d.legal_basis or "") == "filter" for d in datasets)


def consented(
    session: Session, tenant_id: str, purpose: str, now: datetime, subjects: Iterable[str] | None = None
) -> set[str]:
    """Subjects of the tenant with valid consent for ``purpose`` at ``now`` (only among ``subjects`` if given)."""
    query = select(ConsentRecord.subject_id).where(
        ConsentRecord.tenant_id == tenant_id,
        ConsentRecord.purpose == purpose,
        ConsentRecord.withdrawn_at.is_(None),
        ConsentRecord.granted_at <= now,
    )
    if subjects is not None:
        wanted = list(dict.fromkeys(subjects))
        if not wanted:
            return set()
        out: set[str] = set()
        for i in range(0, len(wanted), 500):
            out.update(session.scalars(query.where(ConsentRecord.subject_id.in_(wanted[i : i + 500]))))
        return out
    return set(session.scalars(query))
