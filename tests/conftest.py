"""Fixtures: a real database (SQLite file and PostgreSQL server), a real control plane, real principals.

Every test that takes ``plane`` runs twice, once per database. PostgreSQL is the server at
FALAJ_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); each test gets its own fresh
database cloned from a migrated template. Where no server answers, the PostgreSQL runs are skipped with
the reason, unless FALAJ_REQUIRE_POSTGRES=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from falaj.core import Action, ControlPlane, Settings, TokenCredential
from falaj.core.bootstrap import initialise, migrate
from falaj.core.keys import AuditSigner
from falaj.core.plugin import create_plugin_manager

PG_URL = os.environ.get("FALAJ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("FALAJ_REQUIRE_POSTGRES") == "1"


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=3)


def _pg_available() -> str | None:
    try:
        with _pg_admin() as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"


def _url_for(database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A migrated template database to clone per test; None where PostgreSQL is absent."""
    problem = _pg_available()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"FALAJ_REQUIRE_POSTGRES=1 but {problem}")
        yield None
        return
    name = f"falaj_tpl_{os.getpid()}_{secrets.token_hex(3)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    home = tmp_path_factory.mktemp("pg-template")
    migrate(Settings(home=home, database_url=_url_for(name)))
    yield name
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_pg_database(template: str) -> tuple[str, str]:
    name = f"falaj_t_{secrets.token_hex(6)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, _url_for(name)


def drop_pg_database(name: str) -> None:
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty control-plane database URL (not yet migrated for SQLite)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'falaj.db'}"
        return
    template = request.getfixturevalue("pg_template")
    if template is None:
        pytest.skip(_pg_available() or "PostgreSQL unavailable")
    name, url = fresh_pg_database(template)
    try:
        yield url
    finally:
        drop_pg_database(name)


@dataclass
class World:
    """A bootstrapped installation with helpers to act as its principals."""

    plane: ControlPlane
    settings: Settings
    admin_token: str
    tenant: str = "operator"
    tokens: dict[str, str] = field(default_factory=dict)

    def act(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        as_: str = "admin",
        tenant: str | None = None,
    ) -> Any:
        token = self.admin_token if as_ == "admin" else self.tokens[as_]
        return self.plane.execute(
            Action(
                kind=kind,
                tenant=tenant or self.tenant,
                principal=TokenCredential(token),
                payload=payload or {},
            )
        )

    def principal(
        self,
        name: str,
        roles: list[str],
        *,
        tenant: str | None = None,
        as_: str = "admin",
        kind: str = "user",
    ) -> str:
        """Create a principal with roles and return its token (kept under ``name``)."""
        created = self.act("principal.create", {"name": name, "roles": roles, "kind": kind}, as_=as_, tenant=tenant)
        assert created.ok, created.message()
        issued = self.act("token.issue", {"principal": name}, as_=as_, tenant=tenant)
        assert issued.ok, issued.message()
        self.tokens[name] = issued.secret
        return issued.secret


def make_world(tmp_path: Path, database_url: str, **plane_kwargs: Any) -> World:
    settings = Settings(home=tmp_path / "home", database_url=database_url, checkpoint_every=8)
    boot = initialise(settings, tenant="operator", display_name="Operator", admin="admin")
    plane = ControlPlane(settings, signer=AuditSigner.load(settings), **plane_kwargs)
    return World(plane=plane, settings=settings, admin_token=boot.token)


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    w = make_world(tmp_path, database_url, registry=create_plugin_manager(load_entrypoints=False))
    try:
        yield w
    finally:
        w.plane.close()


# -- test backends: a compute backend and a serving runtime that record what the control plane hands them --
class RecordingCompute:
    """Keeps every job it receives (the test double of a compute backend; runs nothing)."""

    jobs: list[dict[str, Any]] = []

    def __init__(self, config: Any) -> None:
        self.config = config

    def submit(self, job: dict[str, Any]) -> str:
        RecordingCompute.jobs.append(job)
        return f"job-{len(RecordingCompute.jobs)}"

    def status(self, handle: str) -> Any:
        from falaj.core.plugin import JobStatus

        return JobStatus("succeeded")

    def cancel(self, handle: str) -> None:
        return None


class RecordingServing:
    """Keeps every deployment it is asked to serve."""

    deployed: list[dict[str, Any]] = []

    def __init__(self, config: Any) -> None:
        self.config = config

    def deploy(self, deployment: dict[str, Any]) -> str:
        RecordingServing.deployed.append(deployment)
        return f"http://127.0.0.1:9/{deployment['name']}"

    def undeploy(self, name: str) -> None:
        return None

    def status(self, name: str) -> str:
        return "ready"


def recording_plugins() -> Any:
    from falaj.core.plugin import (
        ComputeBackend,
        ComputeBackendSpec,
        ServingRuntime,
        ServingRuntimeSpec,
        hookimpl,
    )
    from falaj.core.plugin.manager import module_from_object

    compute = type("Compute", (RecordingCompute, ComputeBackend), {})
    serving = type("Serving", (RecordingServing, ServingRuntime), {})
    return module_from_object(
        "recording",
        falaj_compute_backends=hookimpl(lambda: [ComputeBackendSpec(name="recording-compute", factory=compute)]),
        falaj_serving_runtimes=hookimpl(lambda: [ServingRuntimeSpec(name="recording-serving", factory=serving)]),
    )


@pytest.fixture
def lifecycle(tmp_path: Path, database_url: str) -> Iterator[World]:
    """An installation with test compute and serving backends, and the people of a governed lifecycle."""
    RecordingCompute.jobs.clear()
    RecordingServing.deployed.clear()
    registry = create_plugin_manager(load_entrypoints=False, extra=[("recording", recording_plugins())])
    w = make_world(tmp_path, database_url, registry=registry)
    try:
        for name, roles in (
            ("eng", ["ml-engineer"]),
            ("dpo", ["data-steward"]),
            ("ap1", ["approver"]),
            ("ap2", ["approver"]),
            ("ap3", ["approver"]),
            ("aud", ["auditor"]),
        ):
            w.principal(name, roles)
        for name, kind, plugin, region in (
            ("store-ae", "storage", "local", "me-central-1"),
            ("gpu-ae", "compute", "recording-compute", "me-central-1"),
            ("gpu-bh", "compute", "recording-compute", "me-south-1"),
            ("serve-ae", "serving", "recording-serving", "uaenorth"),
            ("serve-qa", "serving", "recording-serving", "me-central1"),
        ):
            r = w.act("backend.register", {"name": name, "kind": kind, "plugin": plugin, "region": region})
            assert r.ok, r.message()
        yield w
    finally:
        w.plane.close()
