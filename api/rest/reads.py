"""GET routes: a list (cursor pagination, filters, sorting) and an item for every readable resource.

The routes are generated from :data:`falaj.core.queries.SPECS`, each with its own operation id and its own
documented query parameters, so the OpenAPI schema names every filter and sort a client may send.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import FromPath, Parameter

from falaj.api.rest.models import errors
from falaj.api.rest.problems import ApiProblem
from falaj.core.actions import TokenCredential
from falaj.core.errors import NotFoundError, ReadDenied, ValidationError
from falaj.core.queries import DEFAULT_LIMIT, INT64_MAX, INT64_MIN, MAX_LIMIT, SPECS, ListSpec, get_item, list_page

_PY: dict[str, type] = {"str": str, "int": int, "bool": bool, "datetime": datetime}


def _camel(name: str) -> str:
    parts = name.replace("-", "_").split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def credential(request: Request[Any, Any, Any]) -> TokenCredential:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "unauthenticated", "send an API token: Authorization: Bearer flj_<id>_<secret>")
    return TokenCredential(token.strip())


def governed_read(
    request: Request[Any, Any, Any], tenant: str, resource_type: str, query: Any, *, verb: str = "read"
) -> Any:
    """Authenticate, authorize ``<resource_type>.<verb>`` and run ``query(session, tenant_view)``."""
    plane = request.app.state.plane
    with read_problems(tenant):
        return plane.read(credential(request), tenant, resource_type, query, verb=verb)


@contextmanager
def read_problems(tenant: str) -> Iterator[None]:
    """A governed read's failures as problem responses: denied (audited) 401/403/404, bad input 400, an unknown
    item 404."""
    try:
        yield
    except ReadDenied as exc:
        extra = {"audit_seq": exc.audit_seq}
        if exc.check == "authenticate":
            raise ApiProblem(401, "unauthenticated", exc.reason, **extra) from None
        if exc.check == "tenant" or "belongs to another tenant" in exc.reason:
            raise ApiProblem(404, "not-found", f"no tenant {tenant!r} here", **extra) from None
        raise ApiProblem(403, "forbidden", exc.reason, **extra) from None
    except ValidationError as exc:
        raise ApiProblem(400, "invalid-request", str(exc)) from None
    except NotFoundError as exc:
        raise ApiProblem(404, "not-found", str(exc)) from None


def _python_type(column: Any) -> Any:
    """The JSON-facing type of an exposed column, for the OpenAPI schema (times are ISO 8601 strings)."""
    from falaj.core.domain.base import UTCDateTime

    element = getattr(column, "element", column)  # a label's column
    kind = getattr(element, "type", None)
    nullable = bool(getattr(element, "nullable", False))
    if isinstance(kind, UTCDateTime):
        py: Any = datetime
    else:
        try:
            py = kind.python_type if kind is not None else Any
        except NotImplementedError:
            py = Any
        if py is object or py in (dict, list):
            py = Any  # JSON columns: any JSON value
        elif py is Decimal:
            py = str  # amounts are sent as decimal strings, never floats
    return py | None if nullable and py is not Any else py


def item_type(spec: ListSpec) -> Any:
    """A msgspec Struct naming every field of one item, with its type and nullability."""
    fields = [(name, _python_type(column)) for name, column in spec.fields.items()]
    return msgspec.defstruct(f"{_camel(spec.name)}Item", fields, kw_only=True)


def page_type(spec: ListSpec, item: Any) -> Any:
    return msgspec.defstruct(f"{_camel(spec.name)}Page", [("items", list[item]), ("next_cursor", str | None)])


def _list_route(spec: ListSpec) -> Any:
    sort_values = sorted({s for s in spec.sorts} | {f"-{s}" for s in spec.sorts})
    sort_enum = StrEnum(f"{_camel(spec.name)}Sort", {v.replace("-", "desc_"): v for v in sort_values})  # type: ignore[misc]

    def handler(request: Request[Any, Any, Any], tenant: str, **params: Any) -> dict[str, Any]:
        limit = params.pop("limit")
        cursor = params.pop("cursor")
        sort = params.pop("sort")
        filters = {k: v for k, v in params.items() if v is not None}
        return governed_read(  # type: ignore[no-any-return]
            request,
            tenant,
            spec.rbac,
            lambda session, t: list_page(
                session,
                spec,
                t.id,
                t.slug,
                filters=filters,
                sort=str(sort.value) if sort is not None else None,
                limit=limit,
                cursor=cursor,
            ).as_dict(),
        )

    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request[Any, Any, Any]),
        inspect.Parameter("tenant", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=FromPath[str]),
        inspect.Parameter(
            "limit",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description=f"Items per page (1..{MAX_LIMIT})")],
            default=DEFAULT_LIMIT,
        ),
        inspect.Parameter(
            "cursor",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                str | None,
                Parameter(max_length=512, description="`next_cursor` of the previous page; omit for the first"),
            ],
            default=None,
        ),
        inspect.Parameter(
            "sort",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                sort_enum | None,  # type: ignore[valid-type]
                Parameter(description=f"Sort field; prefix - for descending (default {spec.default_sort})"),
            ],
            default=None,
        ),
    ]
    for name, kind in spec.filters.items():
        py = _PY[kind]
        described = f"Only items whose {name} equals this"
        if py is str:
            constraint = Parameter(description=described, max_length=300)
        elif py is int:
            constraint = Parameter(description=described, ge=INT64_MIN, le=INT64_MAX)
        else:
            constraint = Parameter(description=described)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[py | None, constraint], default=None
            )
        )
    page = page_type(spec, item_type(spec))
    handler.__signature__ = inspect.Signature(parameters, return_annotation=page)  # type: ignore[attr-defined]
    handler.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": page}
    op = "list" + _camel(spec.name)
    handler.__name__ = handler.__qualname__ = op
    return get(
        f"/api/v1/tenants/{{tenant:str}}/{spec.name}",
        operation_id=op,
        tags=[spec.name],
        summary=f"List {spec.name}",
        description=(spec.summary or spec.name)
        + f". Needs `{spec.rbac}.read`. Keyset pagination: follow `next_cursor` until it is null. "
        f"Filters: {', '.join(spec.filters) or 'none'}. Sorts: {', '.join(spec.sorts)}.",
        sync_to_thread=True,
        responses=errors(400, 401, 403, 404, 422),
    )(handler)


def _item_route(spec: ListSpec) -> Any:
    key_type = _PY[spec.key_type]

    def handler(request: Request[Any, Any, Any], tenant: str, key: Any) -> dict[str, Any]:
        return governed_read(  # type: ignore[no-any-return]
            request, tenant, spec.rbac, lambda session, t: get_item(session, spec, t.id, t.slug, key)
        )

    key_annotation: Any = (
        Annotated[int, Parameter(ge=INT64_MIN, le=INT64_MAX)]
        if key_type is int
        else Annotated[str, Parameter(max_length=300)]
    )
    handler.__annotations__ = {
        "request": Request[Any, Any, Any],
        "tenant": FromPath[str],
        "key": key_annotation,
        "return": item_type(spec),
    }
    op = "get" + _camel(spec.name)
    handler.__name__ = handler.__qualname__ = op
    converter = "int" if spec.key_type == "int" else "str"
    return get(
        f"/api/v1/tenants/{{tenant:str}}/{spec.name}/{{key:{converter}}}",
        operation_id=op,
        tags=[spec.name],
        summary=f"One of {spec.name} by {spec.key}",
        description=f"Needs `{spec.rbac}.read`. 404 when there is none in this tenant.",
        sync_to_thread=True,
        responses=errors(400, 401, 403, 404, 422),
    )(handler)


def _tenant_route() -> Any:
    spec = SPECS["tenants"]

    def getTenant(request: Request[Any, Any, Any], tenant: FromPath[str]) -> dict[str, Any]:
        return governed_read(  # type: ignore[no-any-return]
            request, tenant, spec.rbac, lambda session, t: get_item(session, spec, t.id, t.slug, t.slug)
        )

    return get(
        "/api/v1/tenants/{tenant:str}",
        operation_id="getTenant",
        tags=["tenants"],
        summary="The tenant",
        description="Needs `tenant.read` in the tenant.",
        sync_to_thread=True,
        responses=errors(401, 403, 404),
    )(getTenant)


READ_ROUTES = [_tenant_route()] + [
    route for spec in SPECS.values() if spec.name != "tenants" for route in (_list_route(spec), _item_route(spec))
]
