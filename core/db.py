"""Database engines and sessions for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "falaj_read_only"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs unless a driver is named."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine tuned for the control plane.

    SQLite runs in WAL mode with ``synchronous=NORMAL`` (durable at checkpoints, safe against corruption)
    and every transaction starts with ``BEGIN IMMEDIATE``, so two writers serialise at the start instead
    of failing when a reader upgrades to a writer half-way through an action.
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: bound values (payload data, keys) never appear in error messages, which are audited.
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so that BEGIN IMMEDIATE below is what runs.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if engine in BACKGROUND_CHECKPOINTS:
                cursor.execute("PRAGMA wal_autocheckpoint=0")  # a background thread checkpoints instead
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # Readers (verification, export, explain) must not queue behind writers: WAL lets them read.
            if connection.get_execution_options().get(READ_ONLY):
                connection.exec_driver_sql("BEGIN DEFERRED")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)


#: SQLite engines whose write-ahead log a background thread checkpoints (ControlPlane.start_checkpointer).
BACKGROUND_CHECKPOINTS: weakref.WeakSet[Engine] = weakref.WeakSet()


def read_only(engine: Engine) -> Engine:
    """The same engine, for transactions that only read (no write lock is taken on SQLite)."""
    return engine.execution_options(**{READ_ONLY: True})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
