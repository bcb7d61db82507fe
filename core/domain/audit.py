"""The hash-chained audit log, its head and its signed checkpoints."""

from __future__ import annotations

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from falaj.core.domain.base import Base


class AuditEvent(Base):
    """One decision, appended in the same transaction as the state change it allowed (or the denial).

    ``hash`` is SHA-256 over the canonical JSON of every other column (see ``falaj.core.audit.chain``).
    ``prev_hash`` is unique, so two writers can never both extend the same head: the chain cannot fork.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))  # RFC 3339, UTC, microseconds
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    principal: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(63))
    resource: Mapped[str] = mapped_column(String(300))
    verdict: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[str] = mapped_column(Text)  # canonical JSON list of the checks
    bundle_digest: Mapped[str] = mapped_column(String(71))
    payload_digest: Mapped[str] = mapped_column(String(71))
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """A single row holding the chain head; appenders lock it, which serialises them across workers."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """An Ed25519 signature over (seq, hash) of the chain head at some moment."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(71))
    signature: Mapped[str] = mapped_column(Text)  # base64
