"""Feature store routes beyond the governed actions: online reads (``feature.retrieve`` as a governed read)
and the lineage events of materializations and retrievals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio.to_thread
from litestar import Request, get, post
from litestar.params import FromPath, JSONBody, Parameter
from pydantic import BaseModel, ConfigDict, Field

from falaj.api.rest.models import errors
from falaj.api.rest.problems import ApiProblem
from falaj.api.rest.reads import credential, governed_read, read_problems
from falaj.core.actions import FeatureRef, Name, Role
from falaj.core.errors import BackendError
from falaj.core.features.online import MAX_ONLINE_KEYS


class OnlineRequest(BaseModel):
    """Latest feature values for a batch of entities, for a purpose. Unknown keys answer nulls with a status."""

    model_config = ConfigDict(extra="forbid")

    purpose: Role
    features: list[FeatureRef] = Field(default_factory=list, max_length=1000)
    feature_service: Name | None = None
    entities: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ONLINE_KEYS)
    full_feature_names: bool = False
    include_expired: bool = Field(
        default=False, description="Also answer values older than a view's TTL (their status stays `expired`)."
    )


@post(
    "/api/v1/tenants/{tenant:str}/features/online",
    operation_id="readOnlineFeatures",
    tags=["features"],
    summary="Online features for a batch of entity keys (consent-checked per subject, freshness per view)",
    description="Needs `feature.retrieve`. Each entity row answers its values and, per view, a status: "
    "`present`, `not_found`, `expired` (older than the view's TTL), `withheld` (the subject has no valid consent "
    "for the purpose), `invalid_key`, or `computed` for on-demand views. Allowed reads are not audited one by "
    "one; denied reads are.",
    status_code=200,
    responses=errors(400, 401, 403, 404, 422, 502),
)
async def read_online(
    request: Request[Any, Any, Any], tenant: FromPath[str], data: JSONBody[OnlineRequest]
) -> dict[str, Any]:
    plane = request.app.state.plane

    def run() -> dict[str, Any]:
        with read_problems(tenant), _backend_problems():
            answer: dict[str, Any] = plane.features.read(
                credential(request),
                tenant,
                entities=data.entities,
                purpose=data.purpose,
                features=data.features,
                feature_service=data.feature_service,
                full_feature_names=data.full_feature_names,
                include_expired=data.include_expired,
            )
        return answer

    return await anyio.to_thread.run_sync(run)


@get(
    "/api/v1/tenants/{tenant:str}/features/lineage-events",
    operation_id="listLineageEvents",
    tags=["features"],
    summary="OpenLineage run events (START, COMPLETE, FAIL) of this tenant's materializations and retrievals",
    description="Needs `feature_view.read`. Present when events go to the local file (the default); with "
    "FALAJ_OPENLINEAGE_URL set they go to that endpoint instead.",
    sync_to_thread=True,
    responses=errors(400, 401, 403, 404),
)
def lineage_events(
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    plane = request.app.state.plane

    def query(session: Any, t: Any) -> list[dict[str, Any]]:
        namespace = f"falaj://{t.slug}"
        events = [e for e in plane.lineage.events() if e.get("job", {}).get("namespace") == namespace]
        return events[-limit:]

    return governed_read(request, tenant, "feature_view", query)  # type: ignore[no-any-return]


@contextmanager
def _backend_problems() -> Iterator[None]:
    try:
        yield
    except BackendError as exc:
        raise ApiProblem(502, "backend", str(exc)) from None


FEATURE_ROUTES = [read_online, lineage_events]
