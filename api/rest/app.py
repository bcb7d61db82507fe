"""The Litestar application: resources under /api/v1, health, readiness, metrics, OpenAPI.

Controllers only authenticate (read the bearer token) and build an ``Action``; ``ControlPlane.execute``
decides, so the API can never allow what the CLI would deny. Results map to HTTP statuses one way:

    succeeded -> 200/201   pending -> 202   denied -> 401 (authentication) / 404 (unknown tenant, or a
    tenant the principal does not belong to: existence is never revealed) / 422 (payload) / 403 (policy)
    failed -> 422 (validation) / 404 / 409 / 502 (backend) / 500
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from litestar import Litestar, Request, Response, get, post
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, JSONBody, Parameter
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from falaj.api.rest.features import FEATURE_ROUTES
from falaj.api.rest.integration import INTEGRATION_ROUTES
from falaj.api.rest.models import PENDING, ActionResult, errors, payload_body
from falaj.api.rest.problems import EXCEPTION_HANDLERS, ApiProblem
from falaj.api.rest.reads import READ_ROUTES, credential
from falaj.core import __version__
from falaj.core.actions import PAYLOADS, Action, ActionKind, parse_kind
from falaj.core.decision import CheckOutcome

MAX_BODY = 1024 * 1024  # 1 MiB for JSON bodies; artifacts are uploaded by stream elsewhere


def plane_of(state: State) -> Any:
    return state.plane


def run_action(
    request: Request[Any, Any, Any], kind: str, tenant: str, payload: dict[str, Any], created: bool = False
) -> Response[Any]:
    """Build the Action, let the control plane decide, and translate its result to HTTP."""
    plane = plane_of(request.app.state)
    started = time.perf_counter()
    result = plane.execute(
        Action(
            kind=kind,
            tenant=tenant,
            principal=credential(request),
            payload=payload,
            context={"source": "rest", "path": str(request.url.path)},
            idempotency_key=request.headers.get("idempotency-key"),
        )
    )
    metrics = request.app.state.metrics
    metrics["actions"].labels(kind if parse_kind(kind) else "unknown", result.outcome).inc()
    metrics["latency"].labels(result.outcome).observe(time.perf_counter() - started)
    checks = [c.as_dict() for c in result.decision.checks]
    extra = {"operation_id": result.operation_id, "audit_seq": result.audit_seq}
    if result.outcome == "succeeded":
        body: dict[str, Any] = {
            "operation_id": result.operation_id,
            "outcome": "succeeded",
            "data": result.data,
            "audit_seq": result.audit_seq,
        }
        if result.secret:
            body["secret"] = result.secret  # shown once; never stored
        if result.replayed:
            body["replayed"] = True
            return Response(body, status_code=201 if created else 200, headers={"Idempotency-Replayed": "true"})
        return Response(body, status_code=201 if created else 200)
    if result.outcome == "pending":
        return Response(
            {
                "operation_id": result.operation_id,
                "outcome": "pending",
                "data": result.data,
                "audit_seq": result.audit_seq,
                "checks": checks,
                **({"replayed": True} if result.replayed else {}),
            },
            status_code=202,
            headers={"Idempotency-Replayed": "true"} if result.replayed else None,
        )
    if result.outcome == "denied":
        failure = next((c for c in result.decision.checks if c.outcome is CheckOutcome.FAIL), None)
        name = failure.check if failure else "default"
        reason = failure.reason if failure else "no check allowed this action"
        if name == "authenticate":
            raise ApiProblem(401, "unauthenticated", reason, **extra)
        if name == "tenant" or (name == "rbac" and "belongs to another tenant" in reason):
            raise ApiProblem(404, "not-found", f"no tenant {tenant!r} here", **extra)
        if name in ("payload", "action", "idempotency"):
            raise ApiProblem(422, "validation", reason, checks=checks, **extra)
        raise ApiProblem(403, "forbidden", reason, checks=checks, **extra)
    status = {"validation": 422, "not_found": 404, "conflict": 409, "backend": 502}.get(result.error_type or "", 500)
    kind_name = {422: "validation", 404: "not-found", 409: "conflict", 502: "backend"}.get(status, "internal")
    raise ApiProblem(status, kind_name, result.error or "failed", **extra)


ERRORS = {401, 403, 404, 409, 422, 502}
TenantPath = Parameter(description="Tenant slug", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


# -- health, readiness, metrics -----------------------------------------------------------------------------
@get("/healthz", operation_id="health", tags=["health"], summary="Liveness", exclude_from_auth=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@get(
    "/readyz",
    operation_id="ready",
    tags=["health"],
    summary="Readiness: the database answers",
    sync_to_thread=True,
    responses={503: ResponseSpec(data_container=dict[str, str], description="The database does not answer")},
)
def readyz(state: State) -> Response[dict[str, str]]:
    ready = plane_of(state).ping()
    return Response({"status": "ready" if ready else "unavailable"}, status_code=200 if ready else 503)


@get("/metrics", operation_id="metrics", tags=["health"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(state: State) -> Response[bytes]:
    return Response(generate_latest(state.registry), media_type="text/plain; version=0.0.4")


# -- actions -------------------------------------------------------------------------------------------------
@post(
    "/api/v1/tenants/{tenant:str}/actions/{kind:str}",
    operation_id="executeAction",
    tags=["actions"],
    summary="Run any governed action",
    description="The payload is the action kind's payload (see `falaj actions`). 200 when done, 202 when "
    "pending approval; problem+json otherwise.",
    sync_to_thread=True,
    request_max_body_size=MAX_BODY,
    status_code=200,
    responses={**errors(), 202: PENDING},
)
def execute_action(
    request: Request[Any, Any, Any], tenant: FromPath[str], kind: FromPath[str], data: JSONBody[dict[str, Any]]
) -> Response[ActionResult]:
    return run_action(request, kind, tenant, data)


@post(
    "/api/v1/tenants/{tenant:str}/policies/explain",
    operation_id="explainPolicy",
    tags=["policies"],
    summary="Dry-run an action: every check, its outcome and rule",
    sync_to_thread=True,
    request_max_body_size=MAX_BODY,
    status_code=200,
    responses=errors(400, 401, 404, 413, 422),
)
def explain(request: Request[Any, Any, Any], tenant: FromPath[str], data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    kind = data.get("kind")
    payload = data.get("payload", {})
    if not isinstance(kind, str) or not isinstance(payload, dict):
        raise ApiProblem(
            422,
            "validation",
            'body must be {"kind": str, "payload": object}',
            errors=[{"field": "kind", "message": "required string"}],
        )
    cred = credential(request)
    decision = plane_of(request.app.state).explain(Action(kind=kind, tenant=tenant, principal=cred, payload=payload))
    return decision.as_dict()  # type: ignore[no-any-return]


def _resource_route(
    path: str, kind: ActionKind, operation_id: str, tag: str, summary: str, created: bool = True
) -> Any:
    @post(
        path,
        operation_id=operation_id,
        tags=[tag],
        summary=summary,
        request_max_body_size=MAX_BODY,
        description=f"Runs the governed action `{kind.value}`.",
        status_code=201 if created else 200,
        responses={**errors(), 202: PENDING},
    )
    async def handler(
        request: Request[Any, Any, Any], tenant: FromPath[str], data: dict[str, Any]
    ) -> Response[ActionResult]:
        # async + a worker thread by hand: a path with a GET and a POST registers its handlers twice, and
        # Litestar would wrap a sync_to_thread handler a second time.
        return await anyio.to_thread.run_sync(lambda: run_action(request, kind.value, tenant, data, created=created))

    handler.fn.__annotations__["data"] = payload_body(PAYLOADS[kind])
    handler.fn.__name__ = operation_id  # distinct handler names for the OpenAPI schema
    return handler


RESOURCE_ROUTES = [
    _resource_route(
        "/api/v1/tenants/{tenant:str}/principals",
        ActionKind.PRINCIPAL_CREATE,
        "createPrincipal",
        "principals",
        "Create a principal with roles",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/tokens",
        ActionKind.TOKEN_ISSUE,
        "issueToken",
        "principals",
        "Issue an API token (shown once)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/tokens/revoke",
        ActionKind.TOKEN_REVOKE,
        "revokeToken",
        "principals",
        "Revoke an API token",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/roles", ActionKind.ROLE_ASSIGN, "assignRole", "roles", "Grant a role"
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/backends",
        ActionKind.BACKEND_REGISTER,
        "registerBackend",
        "backends",
        "Register a backend (plugin, region, node class)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/datasets",
        ActionKind.DATASET_REGISTER,
        "registerDataset",
        "datasets",
        "Register a dataset",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/consents",
        ActionKind.CONSENT_RECORD,
        "recordConsent",
        "consents",
        "Record a data subject's consent",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/consents/withdraw",
        ActionKind.CONSENT_WITHDRAW,
        "withdrawConsent",
        "consents",
        "Withdraw consent",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/erasure-requests",
        ActionKind.ERASURE_REQUEST,
        "requestErasure",
        "erasure-requests",
        "Request erasure of a data subject",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/models", ActionKind.MODEL_REGISTER, "registerModel", "models", "Register a model"
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/model-versions",
        ActionKind.MODEL_VERSION_REGISTER,
        "registerModelVersion",
        "models",
        "Register a model version",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/deployments",
        ActionKind.DEPLOYMENT_REQUEST,
        "requestDeployment",
        "deployments",
        "Request a deployment (may wait for approvals)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/approval-votes",
        ActionKind.APPROVAL_VOTE,
        "voteOnApproval",
        "approvals",
        "Vote on an approval request",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/audit/verify",
        ActionKind.AUDIT_VERIFY,
        "verifyAudit",
        "audit",
        "Verify the audit chain",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/reports",
        ActionKind.REPORT_EXPORT,
        "exportReport",
        "reports",
        "Export a signed compliance report for a period (json, csv or pdf)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/webhooks",
        ActionKind.WEBHOOK_SUBSCRIBE,
        "subscribeWebhook",
        "webhooks",
        "Subscribe a URL to events (the signing secret is shown once)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/webhooks/unsubscribe",
        ActionKind.WEBHOOK_UNSUBSCRIBE,
        "unsubscribeWebhook",
        "webhooks",
        "Stop a webhook",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/webhook-deliveries/redeliver",
        ActionKind.WEBHOOK_REDELIVER,
        "redeliverWebhook",
        "webhooks",
        "Send a past delivery again",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/webhook-allowlist",
        ActionKind.WEBHOOK_ALLOW_TARGET,
        "allowWebhookTarget",
        "webhooks",
        "Allow a private or loopback range as webhook target",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/model-aliases",
        ActionKind.MODEL_ALIAS_SET,
        "setModelAlias",
        "models",
        "Point an alias (champion, challenger) at a version",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/signatures",
        ActionKind.ARTIFACT_SIGN,
        "signArtifact",
        "models",
        "Sign a model version with a Falaj-held key, keyless, or attach an offline bundle",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/entities",
        ActionKind.ENTITY_APPLY,
        "applyEntity",
        "features",
        "Define an entity (versioned; an identical definition changes nothing)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/feature-views",
        ActionKind.FEATURE_VIEW_APPLY,
        "applyFeatureView",
        "features",
        "Define a batch or on-demand feature view (versioned)",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/feature-services",
        ActionKind.FEATURE_SERVICE_APPLY,
        "applyFeatureService",
        "features",
        "Define a feature service: features pinned to view versions",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/feature-views/materialize",
        ActionKind.FEATURE_VIEW_MATERIALIZE,
        "materializeFeatureView",
        "features",
        "Materialize a view: source checked against schema and expectations, offline history, latest values online",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/feature-views/push",
        ActionKind.FEATURE_VIEW_PUSH,
        "pushFeatures",
        "features",
        "Push rows (each with an event_id; a redelivered row changes nothing) to a view's stores",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/features/historical",
        ActionKind.FEATURE_RETRIEVE,
        "retrieveHistoricalFeatures",
        "features",
        "Point-in-time-correct training data for a purpose (consented subjects only)",
        created=False,
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/training-runs",
        ActionKind.TRAINING_SUBMIT,
        "submitTraining",
        "training-runs",
        "Submit a training run",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/audit/exports",
        ActionKind.AUDIT_EXPORT,
        "exportAudit",
        "audit",
        "Export the audit log with signed checkpoints, a signed manifest and a standalone verifier",
    ),
    _resource_route(
        "/api/v1/tenants/{tenant:str}/policies/reload",
        ActionKind.POLICY_RELOAD,
        "reloadPolicy",
        "policies",
        "Reload the policy bundle (audited)",
        created=False,
    ),
]


@post(
    "/api/v1/tenants",
    operation_id="createTenant",
    tags=["tenants"],
    summary="Create a tenant (platform-admin)",
    sync_to_thread=True,
    request_max_body_size=MAX_BODY,
    responses=errors(),
)
def create_tenant(request: Request[Any, Any, Any], data: dict[str, Any]) -> Response[ActionResult]:
    who = plane_of(request.app.state).whoami(credential(request))
    if who is None:
        raise ApiProblem(401, "unauthenticated", "unknown, expired or revoked API token")
    return run_action(request, ActionKind.TENANT_CREATE.value, who[0], data, created=True)


create_tenant.fn.__annotations__["data"] = payload_body(PAYLOADS[ActionKind.TENANT_CREATE])


@get(
    "/api/v1/plugins",
    operation_id="listPlugins",
    tags=["plugins"],
    summary="Every plugin and its state",
    sync_to_thread=True,
    responses=errors(401),
)
def list_plugins(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    plane = plane_of(request.app.state)
    if plane.whoami(credential(request)) is None:
        raise ApiProblem(401, "unauthenticated", "unknown, expired or revoked API token")
    return [dict(p.__dict__) for p in plane.registry.plugins.values()]


def _webhook_dispatcher(plane: Any) -> Any:
    """Each server worker runs a dispatcher (deliveries are claimed with leases, so they never collide).

    FALAJ_WEBHOOKS=off turns it off; FALAJ_WEBHOOK_RETRY_BASE (seconds, default 5) and
    FALAJ_WEBHOOK_MAX_ATTEMPTS (default 8) shape the exponential backoff.
    """
    if os.environ.get("FALAJ_WEBHOOKS", "on").lower() in ("off", "0", "false", "no"):
        return None
    from falaj.core.keys import master_key
    from falaj.core.webhooks import Dispatcher, RetryPolicy

    retry = RetryPolicy(
        base_seconds=float(os.environ.get("FALAJ_WEBHOOK_RETRY_BASE", "5")),
        max_attempts=int(os.environ.get("FALAJ_WEBHOOK_MAX_ATTEMPTS", "8")),
    )
    dispatcher = Dispatcher(plane.engine, master_key(plane.settings), retry=retry)
    dispatcher.start(interval=float(os.environ.get("FALAJ_WEBHOOK_INTERVAL", "0.5")))
    return dispatcher


def create_app(plane: Any = None) -> Litestar:
    """The application. Without ``plane`` it opens the installation named by the FALAJ_* environment."""
    registry = CollectorRegistry()
    counters = {
        "actions": Counter(
            "falaj_actions_total", "Governed actions by kind and outcome", ["kind", "outcome"], registry=registry
        ),
        "latency": Histogram("falaj_action_seconds", "Time to decide and do an action", ["outcome"], registry=registry),
    }

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        own = plane is None
        if own:
            from falaj.core.pipeline import ControlPlane

            app.state.plane = ControlPlane.open()
            app.state.plane.start_checkpointer()
            app.state.plane.lineage.warm()
            # What start-up built (modules, the policy bundle, plugins, mappers) lives as long as the server:
            # move it out of the collector's sight, so that full collections stay short under load.
            gc.collect()
            gc.freeze()
        else:
            app.state.plane = plane
        dispatcher = _webhook_dispatcher(app.state.plane) if own else None
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()
            if own:
                app.state.plane.close()

    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            execute_action,
            explain,
            create_tenant,
            list_plugins,
            *RESOURCE_ROUTES,
            *READ_ROUTES,
            *INTEGRATION_ROUTES,
            *FEATURE_ROUTES,
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({"registry": registry, "metrics": counters}),
        openapi_config=OpenAPIConfig(
            title="Falaj admin API",
            version=__version__,
            description="Every lifecycle action through one governed pipeline. Errors are RFC 9457 problem "
            "details (application/problem+json).",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="Falaj API token")}
            ),
            security=[{"bearer": []}],
        ),
        response_cache_config=ResponseCacheConfig(),
        request_max_body_size=MAX_BODY,
        debug=False,
    )
