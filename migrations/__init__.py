"""Alembic migrations: the schema only ever changes through a revision here."""
