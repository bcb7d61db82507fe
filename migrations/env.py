"""Alembic environment: the URL comes from FALAJ_DATABASE_URL (or FALAJ_HOME's SQLite file)."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection

from falaj.core.config import Settings
from falaj.core.db import create_db_engine, is_sqlite, normalise_url
from falaj.core.domain import Base
from falaj.core.domain.base import UTCDateTime

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # No alembic.ini: paths live in pyproject.toml [tool.alembic]; the database comes from the environment
    # (or from the caller, when `falaj init` runs the migrations programmatically).
    explicit = config.attributes.get("database_url")
    return normalise_url(explicit or Settings.from_env().database_url)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Revisions must not import application types: render UTCDateTime as what it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    sqlite = is_sqlite(url or _url())
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=sqlite,  # SQLite cannot ALTER most things: batch mode copies the table
        compare_type=True,
        render_item=_render_item,
        literal_binds=url is not None,
    )


def run_migrations_offline() -> None:
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
