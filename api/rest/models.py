"""Response bodies as the OpenAPI schema documents them, and the error responses every operation declares."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec

from falaj.api.rest.problems import MEDIA_TYPE, Problem


class ActionResult(msgspec.Struct, omit_defaults=True):
    """The answer to a governed action: 200/201 when done, 202 when it waits for approvals."""

    operation_id: str
    outcome: str  # succeeded | pending
    data: dict[str, Any]
    audit_seq: int | None = None
    secret: str | None = None  # a new token or webhook secret: shown once, never stored
    replayed: bool | None = None  # the stored answer to an earlier request with the same Idempotency-Key
    checks: list[dict[str, Any]] | None = None  # when pending: every check and its outcome


class Page(msgspec.Struct):
    """One page of a list. Follow ``next_cursor`` until it is null."""

    items: list[dict[str, Any]]
    next_cursor: str | None


_MEANINGS = {
    400: "The request could not be read (a malformed parameter, cursor or header)",
    401: "No valid API token (missing, unknown, expired or revoked)",
    403: "Denied by policy: the problem names the check and the rule",
    404: "No such resource in this tenant (another tenant's answers the same)",
    409: "Conflicts with the current state",
    413: "Over the size limit",
    422: "Invalid input: the problem names each field",
    502: "A backend plugin failed",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """RFC 9457 problem responses for ``codes`` (all the usual ones when none are given)."""
    return {
        code: ResponseSpec(
            data_container=Problem, description=_MEANINGS[code], media_type=MEDIA_TYPE, generate_examples=False
        )
        for code in (codes or tuple(_MEANINGS))
    }


PENDING = ResponseSpec(data_container=ActionResult, description="Waiting for approvals", generate_examples=False)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve pydantic's local ``$defs`` references in place (payload models are not recursive)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = walk(dict(defs[ref.rsplit("/", 1)[1]]))
                return {**target, **{k: walk(v) for k, v in node.items() if k != "$ref"}}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def payload_body(model: type[Any]) -> Any:
    """A JSON body documented with the payload model's JSON Schema, but passed on unvalidated.

    The control plane validates it, so a malformed body is a denial it audits (422), not a rejection the
    web framework would make without a trace.
    """
    from typing import Annotated

    from litestar.params import Body

    schema = _inline(model.model_json_schema(mode="validation"))
    keep = ("properties", "required", "additionalProperties", "title", "description")
    return Annotated[dict[str, Any], Body(schema_extra={k: v for k, v in schema.items() if k in keep})]
