"""Migrations: upgrade, downgrade and check on SQLite and PostgreSQL; the models match the migrations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from falaj.core import Settings
from falaj.core.bootstrap import alembic_config
from falaj.core.db import create_db_engine
from falaj.core.domain import Base

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_url(request, tmp_path):
    """A database with no tables at all (PostgreSQL: a fresh, empty database)."""
    if "sqlite" in request.node.callspec.id:
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    from tests.conftest import _pg_admin, _pg_available, _url_for, drop_pg_database

    if _pg_available():
        if os.environ.get("FALAJ_REQUIRE_POSTGRES") == "1":
            pytest.fail(_pg_available())
        pytest.skip(_pg_available())
    import secrets

    name = f"falaj_m_{secrets.token_hex(5)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        drop_pg_database(name)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_check_downgrade(backend, empty_url):
    cfg = alembic_config(empty_url)
    command.upgrade(cfg, "head")
    engine = create_db_engine(empty_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        # Models match the migrations: autogenerate finds nothing to do.
        command.check(cfg)
        command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        command.check(cfg)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_alembic_command_line_from_the_repo_root(backend, empty_url):
    env = dict(os.environ, FALAJ_DATABASE_URL=empty_url)
    alembic = [sys.executable, "-m", "alembic"]
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"]):
        proc = subprocess.run(alembic + args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_single_head_and_dated_revision_files():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        assert path.name[:11].replace("_", "").isdigit(), f"{path.name} lacks the date prefix"


def test_naming_convention_names_every_constraint():
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            assert constraint.name, f"unnamed constraint on {table.name}"


def test_default_database_is_sqlite_under_falaj_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FALAJ_DATABASE_URL", raising=False)
    monkeypatch.setenv("FALAJ_HOME", str(tmp_path / "h"))
    settings = Settings.from_env()
    assert settings.database_url == f"sqlite:///{tmp_path / 'h' / 'falaj.db'}"
    monkeypatch.delenv("FALAJ_HOME")
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env().home == tmp_path / ".falaj"
