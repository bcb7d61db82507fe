"""What a handler gets and returns, and the registry of handlers by action kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from falaj.core.actions import ActionKind, Payload
from falaj.core.decision import Decision
from falaj.core.domain import Backend
from falaj.core.errors import ConflictError, NotFoundError, ValidationError

T = TypeVar("T")

if TYPE_CHECKING:
    from falaj.core.pipeline import ControlPlane


@dataclass(frozen=True, slots=True)
class TenantView:
    """The tenant an action runs in, as the pipeline read it (load the row to change it)."""

    id: str
    slug: str
    ruleset: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """The authenticated principal. ``label`` is ``<home tenant>/<name>``, as audit events show it."""

    id: str
    name: str
    kind: str
    tenant_id: str
    label: str


@dataclass
class HandlerContext:
    """Everything a handler may use. It runs inside the action's transaction (a savepoint)."""

    session: Session
    plane: ControlPlane
    tenant: TenantView
    principal: PrincipalView
    payload: Any  # the kind's Payload model
    decision: Decision
    operation_id: str

    def export_folder(self, name: str) -> Path:
        """A new, empty folder for an export: ``FALAJ_HOME/exports/<tenant>/<name>``; never elsewhere."""
        root = (self.plane.settings.exports_dir / self.tenant.slug).resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise ValidationError(f"export name {name!r} must be a plain folder name")
        if folder.exists() and any(folder.iterdir()):
            raise ConflictError(f"export {name!r} already exists: choose a new name")
        return folder

    def named(self, model: type[T], name: str) -> T:
        """The tenant's row of ``model`` (Deployment, Model, ...) called ``name``, or NotFoundError."""
        table: Any = model
        row = self.session.scalar(select(table).where(table.tenant_id == self.tenant.id, table.name == name))
        if row is None:
            raise NotFoundError(f"no {table.__tablename__[:-1]} named {name!r} in tenant {self.tenant.slug!r}")
        return cast(T, row)

    def backend(self, name: str, kind: str) -> Backend:
        row = self.session.scalar(select(Backend).where(Backend.tenant_id == self.tenant.id, Backend.name == name))
        if row is None or row.kind != kind:
            raise NotFoundError(f"no {kind} backend named {name!r} in tenant {self.tenant.slug!r}")
        return row


#: ``session.info`` key of the callbacks the pipeline runs once the action's transaction has committed.
AFTER_COMMIT = "falaj.after_commit"


def after_commit(ctx: HandlerContext, callback: Callable[[], Any]) -> None:
    """Run ``callback`` after the action commits (never if it rolls back); its failure is logged, not raised."""
    ctx.session.info.setdefault(AFTER_COMMIT, []).append(callback)


def add_lineage(ctx: HandlerContext, source: tuple[str, str], target: tuple[str, str], relation: str) -> None:
    """Record that ``source`` (type, id) was used to produce ``target`` (type, id)."""
    from falaj.core.domain import LineageEdge

    ctx.session.add(
        LineageEdge(
            tenant_id=ctx.tenant.id,
            source_type=source[0],
            source_id=source[1],
            target_type=target[0],
            target_id=target[1],
            relation=relation,
        )
    )


@dataclass
class Outcome:
    """What a handler produced. ``secret`` is shown once to the caller and never stored or audited."""

    data: dict[str, Any] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)


Handler = Callable[[HandlerContext], Outcome]
HANDLERS: dict[ActionKind, Handler] = {}
#: Handlers run when the decision is *pending* (e.g. a deployment request waiting for approvals).
PENDING_HANDLERS: dict[ActionKind, Handler] = {}


def handles(kind: ActionKind, *, pending: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        table = PENDING_HANDLERS if pending else HANDLERS
        if kind in table:
            raise RuntimeError(f"two handlers for {kind}")
        table[kind] = fn
        return fn

    return register


def typed(ctx: HandlerContext, model: type[Payload]) -> Any:
    assert isinstance(ctx.payload, model), f"expected {model.__name__}, got {type(ctx.payload).__name__}"
    return ctx.payload
