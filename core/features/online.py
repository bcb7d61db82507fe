"""Online feature reads: governed (authentication, RBAC, consent) without becoming the slow part.

A read is ``feature.retrieve`` through :meth:`ControlPlane.read`: allowed reads are not audited one by one
(they change nothing), denied ones are. What a request resolves to (service -> pinned view versions -> stores)
is cached for a second, as policy bundles are; consent is checked against the database on every read, for
exactly the subjects in the batch, so a withdrawal takes effect at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from falaj.core.actions import TokenCredential
from falaj.core.db import read_only
from falaj.core.domain import Backend
from falaj.core.errors import BackendError, ValidationError
from falaj.core.features import registry as reg
from falaj.core.handlers.base import TenantView
from falaj.core.plugin.interfaces import FeatureViewDef

if TYPE_CHECKING:
    from falaj.core.pipeline import ControlPlane

MAX_ONLINE_KEYS = 1000
PLAN_TTL_S = 1.0
#: How long an allowed (credential, tenant) pair is remembered: a revoked token, a disabled principal or tenant,
#: a removed role stops online reads within this time (as a policy reload reaches every worker).
GRANT_TTL_S = 1.0

_KEY_TYPES: dict[str, tuple[type, ...]] = {"int64": (int,), "string": (str,), "float64": (int, float), "bool": (bool,)}


@dataclass(frozen=True)
class _Grant:
    tenant: TenantView
    bundle: str
    made: float


@dataclass(frozen=True)
class _ViewPlan:
    name: str
    version: int
    vdef: FeatureViewDef | None  # None for on-demand views
    store: Any  # the live online store (None for on-demand views)
    features: tuple[str, ...]
    subject_key: str | None
    has_subject: bool
    ttl: int | None
    transform: Any = None  # on-demand: (Transform, dtypes, source view names, request fields)
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    views: tuple[_ViewPlan, ...]
    internal: tuple[_ViewPlan, ...]  # source views of on-demand views not asked for themselves
    consent_scoped: bool
    output: tuple[tuple[str, str], ...]  # (view, feature) in answer order
    clashes: tuple[str, ...] = ()  # feature names two views share: only answerable with full names
    made: float = field(default_factory=time.monotonic)


class OnlineReader:
    """One per control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget every plan (a definition changed in this process; other processes follow within a second)."""
        with self._lock:
            self._plans.clear()
            self._grants.clear()

    def read(
        self,
        credential: Any,
        tenant: str,
        *,
        entities: Sequence[Mapping[str, Any]],
        purpose: str,
        features: Sequence[str] = (),
        feature_service: str | None = None,
        full_feature_names: bool = False,
        include_expired: bool = False,
    ) -> dict[str, Any]:
        """``include_expired`` answers values older than a view's TTL too (status still ``expired``)."""
        if bool(features) == bool(feature_service):
            raise ValidationError("name either features or a feature_service")
        if not isinstance(entities, Sequence) or not entities:
            raise ValidationError("entities: give at least one entity row (an object of join key values)")
        if len(entities) > MAX_ONLINE_KEYS:
            raise ValidationError(f"at most {MAX_ONLINE_KEYS} entity rows per online read")
        if purpose not in self.plane.bundle.purposes:
            raise ValidationError(
                f"unknown purpose {purpose!r}: known purposes are {sorted(self.plane.bundle.purposes)}"
            )

        grant_key = _grant_key(credential, tenant)
        grant = self._grants.get(grant_key) if grant_key is not None else None
        if (
            grant is not None
            and time.monotonic() - grant.made < GRANT_TTL_S
            and grant.bundle == self.plane.bundle.digest
        ):
            # Allowed a moment ago: no database round trip unless the plan is stale or consent must be checked.
            return self._fast(
                grant.tenant, feature_service, tuple(features), entities, purpose, full_feature_names, include_expired
            )

        def query(session: Session, t: TenantView) -> dict[str, Any]:
            plan = self._plan(session, t, feature_service, tuple(features))
            if grant_key is not None:
                with self._lock:
                    if len(self._grants) > 10_000:
                        self._grants.clear()
                    self._grants[grant_key] = _Grant(t, self.plane.bundle.digest, time.monotonic())
            return self._answer(session, t, plan, entities, purpose, full_feature_names, include_expired)

        answer: dict[str, Any] = self.plane.read(credential, tenant, "feature", query, verb="retrieve")
        return answer

    def _fast(
        self,
        tenant: TenantView,
        service: str | None,
        refs: tuple[str, ...],
        entities: Sequence[Mapping[str, Any]],
        purpose: str,
        full: bool,
        include_expired: bool,
    ) -> dict[str, Any]:
        plan = self._plans.get((tenant.id, service, refs))
        if plan is not None and time.monotonic() - plan.made < PLAN_TTL_S and not plan.consent_scoped:
            return self._answer(None, tenant, plan, entities, purpose, full, include_expired)
        with Session(read_only(self.plane.engine)) as session:
            plan = self._plan(session, tenant, service, refs)
            answer = self._answer(session, tenant, plan, entities, purpose, full, include_expired)
            session.rollback()
            return answer

    # -- planning -------------------------------------------------------------------------------------------
    def _plan(self, session: Session, tenant: TenantView, service: str | None, refs: tuple[str, ...]) -> _Plan:
        key = (tenant.id, service, refs)
        plan = self._plans.get(key)
        if plan is not None and time.monotonic() - plan.made < PLAN_TTL_S:
            return plan
        plan = self._build(session, tenant, service, refs)
        with self._lock:
            if len(self._plans) > 1024:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _build(self, session: Session, tenant: TenantView, service: str | None, refs: tuple[str, ...]) -> _Plan:
        if service:
            selections = reg.service_selection(session, tenant.id, reg.latest_service(session, tenant.id, service))
        else:
            selections = reg.parse_refs(session, tenant.id, list(refs))
        views: list[_ViewPlan] = []
        internal: dict[tuple[str, int], _ViewPlan] = {}
        datasets = []
        for sel in selections:
            datasets += reg.source_datasets(session, sel.view)
            if sel.view.kind == "on_demand":
                from falaj.core.features.transforms import validate_transform

                dtypes: dict[str, str] = {}
                names = []
                for src in sel.view.sources:
                    parent = reg.view_version(session, tenant.id, src["view"], src["version"])
                    names.append(_ref(parent.name, parent.version))
                    dtypes.update({f["name"]: f["dtype"] for f in parent.features})
                    if (parent.name, parent.version) not in internal:
                        internal[(parent.name, parent.version)] = self._stored(
                            session, parent, tenant, tuple(f["name"] for f in parent.features)
                        )
                request = tuple(f["name"] for f in sel.view.transform.get("request_fields", []))
                dtypes.update({f["name"]: f["dtype"] for f in sel.view.transform.get("request_fields", [])})
                transform = validate_transform(dtypes, sel.view.transform["outputs"])
                views.append(
                    _ViewPlan(
                        sel.view.name,
                        sel.view.version,
                        None,
                        None,
                        sel.features,
                        None,
                        False,
                        None,
                        (transform, request),
                        tuple(names),
                    )
                )
            else:
                if sel.view.online_backend_id is None:
                    raise ValidationError(f"feature view {sel.view.name!r} has no online store")
                views.append(self._stored(session, sel.view, tenant, sel.features))
        output = tuple((v.name, f) for v in views for f in v.features)
        plain = [f for _, f in output]
        clashes = tuple(sorted({f for f in plain if plain.count(f) > 1}))
        return _Plan(tuple(views), tuple(internal.values()), reg.consent_scoped(self.plane, datasets), output, clashes)

    def _stored(self, session: Session, view: Any, tenant: TenantView, features: tuple[str, ...]) -> _ViewPlan:
        backend = session.get(Backend, view.online_backend_id) if view.online_backend_id else None
        if backend is None or not backend.enabled:
            raise ValidationError(f"the online store of {view.name!r} is gone or disabled")
        return _ViewPlan(
            view.name,
            view.version,
            reg.view_def(view, tenant.slug),
            self.plane.backend_instance(tenant.slug, backend),
            features,
            reg.subject_key(view),
            bool(view.subject_column),
            view.ttl_seconds,
        )

    # -- answering ------------------------------------------------------------------------------------------
    def _answer(
        self,
        session: Session | None,
        tenant: TenantView,
        plan: _Plan,
        entities: Sequence[Mapping[str, Any]],
        purpose: str,
        full: bool,
        include_expired: bool = False,
    ) -> dict[str, Any]:
        if plan.clashes and not full:
            raise ValidationError(
                f"features {list(plan.clashes)} come from more than one view: ask with full_feature_names"
            )
        now = datetime.now(UTC)
        stored = [v for v in plan.views if v.vdef is not None]
        fetched: dict[str, list[Any]] = {}  # "view@vN" -> per entity: OnlineRow or a status string
        for view in [*stored, *plan.internal]:
            if _ref(view.name, view.version) in fetched:
                continue
            fetched[_ref(view.name, view.version)] = self._fetch(view, entities)
        if plan.consent_scoped:
            assert session is not None
            subjects = {
                row.subject_id
                for rows in fetched.values()
                for row in rows
                if not isinstance(row, str) and row.values is not None and row.subject_id is not None
            }
            allowed = reg.consented(session, tenant.id, purpose, now, subjects) if subjects else set()
            for rows in fetched.values():
                for i, row in enumerate(rows):
                    if (
                        not isinstance(row, str)
                        and row.values is not None
                        and row.subject_id is not None
                        and row.subject_id not in allowed
                    ):
                        rows[i] = "withheld"
        answers: list[dict[str, Any]] = []
        for i, entity in enumerate(entities):
            values: dict[str, Any] = {}
            status: dict[str, Any] = {}
            for view in plan.views:
                if view.vdef is not None:
                    values_i, status[view.name] = self._values(
                        view, fetched[_ref(view.name, view.version)][i], now, include_expired
                    )
                else:
                    values_i, status[view.name] = self._on_demand(view, plan, fetched, i, entity, now)
                for f in view.features:
                    values[f"{view.name}__{f}" if full else f] = values_i.get(f) if values_i else None
            answers.append(
                {"entity": dict(entity) if isinstance(entity, Mapping) else None, "values": values, "status": status}
            )
        return {
            "purpose": purpose,
            "features": [f"{v}__{f}" if full else f for v, f in plan.output],
            "views": [f"{v.name} v{v.version}" for v in plan.views],
            "consent_filtered": plan.consent_scoped,
            "results": answers,
        }

    @staticmethod
    def _fetch(view: _ViewPlan, entities: Sequence[Mapping[str, Any]]) -> list[Any]:
        assert view.vdef is not None
        out: list[Any] = [None] * len(entities)
        keys: list[tuple[Any, ...]] = []
        where: list[int] = []
        for i, entity in enumerate(entities):
            key = _key(view.vdef, entity)
            if key is None:
                out[i] = "invalid_key"
            else:
                keys.append(key)
                where.append(i)
        if keys:
            try:
                rows = view.store.read(view.vdef, keys, None)
            except ValueError as exc:
                raise ValidationError(f"online store of {view.name!r} refused the keys: {exc}") from exc
            except Exception as exc:
                raise BackendError(f"online store of {view.name!r} did not answer: {exc}") from exc
            position = view.vdef.key_names.index(view.subject_key) if view.subject_key else None
            for i, key, row in zip(where, keys, rows, strict=True):
                if position is not None and row.values is not None and row.subject_id is None:
                    row = dataclasses.replace(row, subject_id=str(key[position]))
                out[i] = row
        return out

    @staticmethod
    def _values(
        view: _ViewPlan, row: Any, now: datetime, include_expired: bool = False
    ) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
        if isinstance(row, str):
            return None, {"status": row}
        if row is None or row.values is None:
            return None, {"status": "not_found"}
        age = (now - row.event_ts).total_seconds() if row.event_ts is not None else None
        info: dict[str, Any] = {
            "status": "present",
            "event_ts": row.event_ts.isoformat() if row.event_ts is not None else None,
            "age_seconds": round(age, 3) if age is not None else None,
        }
        if view.ttl is not None and age is not None and age > view.ttl:
            info["status"] = "expired"
            if not include_expired:
                return None, info
        return {k: _plain(v) for k, v in row.values.items()}, info

    def _on_demand(
        self,
        view: _ViewPlan,
        plan: _Plan,
        fetched: dict[str, list[Any]],
        i: int,
        entity: Mapping[str, Any],
        now: datetime,
    ) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
        import pyarrow as pa

        transform, request = view.transform
        columns: dict[str, Any] = {}
        statuses: list[str] = []
        sources = {_ref(v.name, v.version): v for v in [*plan.views, *plan.internal] if v.vdef is not None}
        for ref in view.sources:
            src = sources[ref]
            values, info = self._values(src, fetched[ref][i], now)
            statuses.append(info["status"])
            assert src.vdef is not None
            for f, dtype in src.vdef.features:
                columns[f] = pa.array([values.get(f) if values else None], _arrow(dtype))
        if not isinstance(entity, Mapping):
            return None, {"status": "invalid_key"}
        dtypes: dict[str, str] = dict(transform.inputs)
        for field_name in request:
            if field_name not in entity:
                return None, {"status": "missing_request_field", "field": field_name}
            try:
                field_dtype = dtypes.get(field_name)
                columns[field_name] = pa.array([entity[field_name]], _arrow(field_dtype) if field_dtype else None)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                return None, {"status": "invalid_request_field", "field": field_name}
        # The most telling status of the sources: a withheld or invalid one means no answer at all.
        for blocking in ("withheld", "invalid_key"):
            if blocking in statuses:
                return None, {"status": blocking}
        worst = next((s for s in ("not_found", "expired") if s in statuses), "present")
        out = transform.apply(columns).to_pylist()[0]
        return out, {"status": "computed" if worst == "present" else f"computed_from_{worst}"}


def _arrow(dtype: str) -> Any:
    from falaj.core.features.arrow import arrow_type

    return arrow_type(dtype)


def _key(vdef: FeatureViewDef, entity: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The entity row's key in entity order, or None when it does not fit the join keys' types."""
    if not isinstance(entity, Mapping):
        return None
    out: list[Any] = []
    for name, dtype in vdef.join_keys:
        value = entity.get(name)
        if value is None or (dtype != "bool" and isinstance(value, bool)):
            return None
        if dtype == "timestamp":
            try:
                ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                return None
            value = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        elif not _fits(dtype, value):
            return None
        out.append(value)
    return tuple(out)


def _fits(dtype: str, value: Any) -> bool:
    if not isinstance(value, _KEY_TYPES.get(dtype, (str,))):
        return False
    if dtype == "int64" and isinstance(value, int):
        return -(2**63) <= value < 2**63
    if dtype == "float64" and isinstance(value, int | float):
        return math.isfinite(value)
    return True


def _ref(name: str, version: int) -> str:
    return f"{name}@v{version}"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def _grant_key(credential: Any, tenant: str) -> tuple[str, str] | None:
    """Remember only bearer tokens (by digest): other credentials go through the full check every time."""
    if isinstance(credential, TokenCredential) and isinstance(credential.token, str):
        return hashlib.sha256(credential.token.encode("utf-8", "surrogatepass")).hexdigest(), tenant
    return None
