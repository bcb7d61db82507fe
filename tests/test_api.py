"""The admin REST API, served by the real server process (`falaj serve`) on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PROBLEM = "application/problem+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    env = dict(os.environ, FALAJ_HOME=str(tmp_path / "home"))
    env.pop("FALAJ_DATABASE_URL", None)
    cleanup = None
    if request.param == "postgres":
        from tests.conftest import drop_pg_database, fresh_pg_database

        template = request.getfixturevalue("pg_template")
        if template is None:
            pytest.skip("PostgreSQL unavailable")
        name, url = fresh_pg_database(template)
        env["FALAJ_DATABASE_URL"] = url
        cleanup = name
    init = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", "init", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["token"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "falaj.api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        for _ in range(200):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("server did not start: " + (proc.stdout.read(4000).decode() if proc.stdout else ""))
        yield client, token
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=20)
        if cleanup:
            from tests.conftest import drop_pg_database

            drop_pg_database(cleanup)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
