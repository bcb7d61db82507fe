"""The tamper-evident audit log: hash chain, signed checkpoints, verification and export."""

from falaj.core.audit.chain import AuditEntry, AuditLog, canonical_bytes, sha256_digest
from falaj.core.audit.verifier import GENESIS, VerifyReport

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "VerifyReport", "canonical_bytes", "sha256_digest"]
