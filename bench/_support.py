"""Shared set-up for the benchmarks: fresh installations on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import os
import secrets
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_URL = os.environ.get("FALAJ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"falaj_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG_URL, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
        return True
    except Exception:
        return False


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
