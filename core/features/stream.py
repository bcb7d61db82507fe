"""Streaming ingestion: messages from a stream-source plugin become governed pushes, exactly once in effect.

Each batch of messages is parsed and checked row by row; a message that can never be stored (malformed JSON, a
row that does not fit the view, a subject without valid consent) is answered with its reason, so the source
plugin sends it to the dead-letter subject and the stream goes on. The good rows go through one
``feature_view.push`` action (audited) whose writes are idempotent by event id; only when it has succeeded are
their messages acknowledged. A crash anywhere before that leaves them unacknowledged: they are redelivered and
written again, changing nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.orm import Session

from falaj.core.actions import Action, ActionKind
from falaj.core.errors import FalajError
from falaj.core.features import registry as reg
from falaj.core.plugin.interfaces import StreamMessage

if TYPE_CHECKING:
    from falaj.core.pipeline import ControlPlane

log = logging.getLogger(__name__)


class TransientPushError(FalajError):
    """The push failed for a reason that may pass (a backend down): the batch is redelivered."""


class StreamIngestor:
    """The handler a stream source calls with each batch of messages for one feature view."""

    def __init__(self, plane: ControlPlane, credential: Any, tenant: str, view: str, purpose: str = "feature-serving"):
        self.plane = plane
        self.credential = credential
        self.tenant = tenant
        self.view = view
        self.purpose = purpose
        self.stats = {"batches": 0, "written": 0, "duplicates": 0, "dead_lettered": 0}

    def __call__(self, messages: Sequence[StreamMessage]) -> list[str | None]:
        from falaj.core.features.push import check_row

        answers: list[str | None] = [None] * len(messages)
        rows: list[dict[str, Any]] = []
        where: list[int] = []
        with Session(self.plane.engine) as session:
            tenant_id = self._tenant_id(session)
            view = reg.latest_view(session, tenant_id, self.view)
            vdef = reg.view_def(view, self.tenant)
            now = datetime.now(UTC)
            checked: list[tuple[int, dict[str, Any], Any]] = []
            for i, message in enumerate(messages):
                try:
                    record = orjson.loads(message.data)
                except orjson.JSONDecodeError as exc:
                    answers[i] = f"malformed JSON: {exc}"
                    continue
                row, reason = check_row(vdef, view, record, now)
                if row is None:
                    answers[i] = f"does not fit feature view {self.view!r}: {reason}"
                    continue
                checked.append((i, record, row))
            if reg.consent_scoped(self.plane, reg.source_datasets(session, view)):
                subjects = {r["subject_id"] for _, _, r in checked if r["subject_id"] is not None}
                allowed = reg.consented(session, tenant_id, self.purpose, now, subjects)
                for i, _, r in checked:
                    if r["subject_id"] is not None and r["subject_id"] not in allowed:
                        answers[i] = f"the row's data subject has no valid consent for {self.purpose!r}"
            for i, record, _ in checked:
                if answers[i] is None:
                    rows.append(record)
                    where.append(i)
        if rows:
            result = self.plane.execute(
                Action(
                    kind=ActionKind.FEATURE_VIEW_PUSH.value,
                    tenant=self.tenant,
                    principal=self.credential,
                    payload={"name": self.view, "rows": rows, "purpose": self.purpose},
                    context={"source": "stream"},
                )
            )
            if result.outcome != "succeeded":
                # Denials (RBAC, residency) and backend failures may be fixed by an operator: retry later,
                # never drop. The source bounds retries (max deliveries) and then dead-letters with this reason.
                raise TransientPushError(f"push of {len(rows)} rows {result.outcome}: {result.message()}")
            self.stats["written"] += int(result.data.get("written", 0))
            self.stats["duplicates"] += int(result.data.get("duplicates", 0))
        self.stats["batches"] += 1
        self.stats["dead_lettered"] += sum(1 for a in answers if a is not None)
        return answers

    def _tenant_id(self, session: Session) -> str:
        from sqlalchemy import select

        from falaj.core.domain import Tenant

        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == self.tenant))
        if tenant_id is None:
            raise FalajError(f"no tenant {self.tenant!r}")
        return tenant_id


def run_stream(
    plane: ControlPlane,
    credential: Any,
    tenant: str,
    view: str,
    source_backend: str,
    subscription: dict[str, Any],
    stop: threading.Event,
    purpose: str = "feature-serving",
) -> StreamIngestor:
    """Consume ``subscription`` from the tenant's stream-source backend into ``view`` until ``stop`` is set."""
    from sqlalchemy import select

    from falaj.core.domain import Backend, Tenant

    with Session(plane.engine) as session:
        row = session.scalar(
            select(Backend)
            .join(Tenant, Tenant.id == Backend.tenant_id)
            .where(Tenant.slug == tenant, Backend.name == source_backend)
        )
        if row is None or row.kind != "stream_source" or not row.enabled:
            raise FalajError(f"no enabled stream_source backend named {source_backend!r} in tenant {tenant!r}")
        source = plane.backend_instance(tenant, row)
    ingestor = StreamIngestor(plane, credential, tenant, view, purpose)
    source.consume(subscription, ingestor, stop)
    return ingestor
