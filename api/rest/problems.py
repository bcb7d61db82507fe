"""RFC 9457 problem details: one stable ``type`` per kind of failure, never a stack trace."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

PROBLEM_BASE = "https://falaj.dev/problems/"
MEDIA_TYPE = "application/problem+json"

#: The stable problem types, by HTTP status where one status has one meaning.
TITLES = {
    "unauthenticated": "Authentication required",
    "forbidden": "Denied by policy",
    "not-found": "Not found",
    "invalid-request": "The request could not be read",
    "validation": "Invalid input",
    "conflict": "Conflicts with the current state",
    "too-large": "Request too large",
    "pending": "Waiting for approval",
    "backend": "A backend failed",
    "internal": "Internal error",
    "method-not-allowed": "Method not allowed",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem details object, with Falaj's extension members."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
    checks: list[dict[str, Any]] | None = None
    operation_id: str | None = None
    audit_seq: int | None = None


class ApiProblem(Exception):
    """Raised by controllers; rendered as problem+json."""

    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra


def problem_response(
    request: Request[Any, Any, Any] | None, status: int, kind: str, detail: str, **extra: Any
) -> Response[Problem]:
    body = Problem(
        type=PROBLEM_BASE + kind,
        title=TITLES.get(kind, kind),
        status=status,
        detail=detail,
        instance=str(request.url.path) if request is not None else None,
        **extra,
    )
    headers = {"WWW-Authenticate": 'Bearer realm="falaj"'} if status == 401 else None
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def on_api_problem(request: Request[Any, Any, Any], exc: ApiProblem) -> Response[Problem]:
    return problem_response(request, exc.status, exc.kind, exc.detail, **exc.extra)


def on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        {"field": e.get("key"), "message": e.get("message"), "source": e.get("source")}
        for e in extra
        if isinstance(e, dict)
    ]
    status = 400 if not errors else 422
    return problem_response(
        request,
        status,
        "invalid-request" if status == 400 else "validation",
        exc.detail or "invalid request",
        errors=errors or None,
    )


def on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    kinds = {
        401: "unauthenticated",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        409: "conflict",
        413: "too-large",
    }
    status = exc.status_code
    kind = kinds.get(status, "invalid-request" if status < 500 else "internal")
    detail = exc.detail if status < 500 else "internal error"
    return problem_response(request, status, kind, str(detail))


def on_not_found(request: Request[Any, Any, Any], exc: NotFoundException) -> Response[Problem]:
    return problem_response(request, 404, "not-found", "no such resource")


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    import logging

    logging.getLogger("falaj.api").exception("unhandled error on %s", request.url.path)
    return problem_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal", "internal error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiProblem: on_api_problem,
    ValidationException: on_validation,
    NotFoundException: on_not_found,
    HTTPException: on_http,
    Exception: on_unexpected,
}
