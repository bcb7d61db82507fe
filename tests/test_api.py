"""The admin REST API, served by the real server process (`falaj serve`) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apiserver import auth, running_server

PROBLEM = "application/problem+json"


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    with running_server(request, tmp_path, request.param) as srv:
        yield srv.client, srv.token


def test_health_readiness_metrics_and_openapi(server):
    client, token = server
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ready"}
    schema = client.get("/schema/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert operations and all(op.get("operationId") for op in operations)
    client.post("/api/v1/tenants/operator/budgets-nope", headers=auth(token))
    client.post(
        "/api/v1/tenants/operator/actions/budget.set",
        headers=auth(token),
        json={"period": "2027-01", "limit_amount": "10"},
    )
    text = client.get("/metrics").text
    assert 'falaj_actions_total{kind="budget.set",outcome="succeeded"} 1.0' in text


def test_authentication_is_required_and_401_differs_from_403(server):
    client, token = server
    r = client.post("/api/v1/tenants/operator/datasets", json={})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["type"].endswith("/unauthenticated") and "WWW-Authenticate" in r.headers
    r = client.post("/api/v1/tenants/operator/datasets", json={}, headers=auth("flj_000000000000_nope"))
    assert r.status_code == 401 and "unknown API token" in r.json()["detail"]
    assert r.json()["audit_seq"] > 0  # the denial is audited
    made = client.post(
        "/api/v1/tenants/operator/principals", headers=auth(token), json={"name": "approver1", "roles": ["approver"]}
    )
    assert made.status_code == 201
    issued = client.post("/api/v1/tenants/operator/tokens", headers=auth(token), json={"principal": "approver1"})
    assert issued.status_code == 201 and issued.json()["secret"].startswith("flj_")
    approver = issued.json()["secret"]
    r = client.post(
        "/api/v1/tenants/operator/datasets",
        headers=auth(approver),
        json={"name": "d", "classification": "public", "residency": "AE"},
    )
    assert r.status_code == 403 and r.json()["type"].endswith("/forbidden")
    assert any(c["check"] == "rbac" and c["outcome"] == "fail" for c in r.json()["checks"])


def test_validation_names_the_field_and_conflicts_are_409(server):
    client, token = server
    r = client.post("/api/v1/tenants/operator/principals", headers=auth(token), json={"name": "x", "kind": "robot"})
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = client.post(
        "/api/v1/tenants/operator/principals",
        headers=auth(token),
        content=b"{not json",
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
    assert (
        client.post("/api/v1/tenants/operator/principals", headers=auth(token), json={"name": "p"}).status_code == 201
    )
    again = client.post("/api/v1/tenants/operator/principals", headers=auth(token), json={"name": "p"})
    assert again.status_code == 409 and again.json()["type"].endswith("/conflict")
    unknown = client.post("/api/v1/tenants/operator/actions/model.teleport", headers=auth(token), json={})
    assert unknown.status_code == 422 and "unknown action kind" in unknown.json()["detail"]
    big = client.post(
        "/api/v1/tenants/operator/principals",
        headers=auth(token),
        content=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}',
    )
    assert big.status_code == 413 and big.headers["content-type"].startswith(PROBLEM)


def test_another_tenant_answers_404_like_a_missing_one(server):
    client, token = server
    made = client.post(
        "/api/v1/tenants", headers=auth(token), json={"slug": "acme", "display_name": "Acme", "admin": "root"}
    )
    assert made.status_code == 201, made.text
    acme = made.json()["secret"]
    theirs = client.post("/api/v1/tenants/operator/principals", headers=auth(acme), json={"name": "spy"})
    missing = client.post("/api/v1/tenants/ghost/principals", headers=auth(acme), json={"name": "spy"})
    assert theirs.status_code == missing.status_code == 404
    assert (
        theirs.json()["detail"] == "no tenant 'operator' here" and missing.json()["detail"] == "no tenant 'ghost' here"
    )
    own = client.post("/api/v1/tenants/acme/principals", headers=auth(acme), json={"name": "eng"})
    assert own.status_code == 201


def test_explain_and_plugins(server):
    client, token = server
    r = client.post(
        "/api/v1/tenants/operator/policies/explain",
        headers=auth(token),
        json={"kind": "tenant.create", "payload": {"slug": "b", "display_name": "B"}},
    )
    assert r.status_code == 200 and r.json()["verdict"] == "allow"
    assert [c["check"] for c in r.json()["checks"]][:3] == ["authenticate", "payload", "rbac"]
    plugins = client.get("/api/v1/plugins", headers=auth(token)).json()
    assert {p["name"] for p in plugins} >= {"local-storage", "static-cost"}
    assert client.get("/api/v1/plugins").status_code == 401


def test_the_api_cannot_allow_what_the_cli_denies(server, tmp_path):
    """The same token, the same action: the CLI and the API get the same decision from the control plane."""
    client, token = server
    r = client.post(
        "/api/v1/tenants/operator/actions/dataset.register",
        headers=auth(token),
        json={"name": "d", "classification": "public", "residency": "AE"},
    )
    assert r.status_code == 403  # admin may not register data
    verify = client.post("/api/v1/tenants/operator/audit/verify", headers=auth(token), json={})
    assert verify.status_code == 200 and verify.json()["data"]["ok"] is True
