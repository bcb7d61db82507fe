"""Appending to the hash chain inside the caller's transaction, checkpoints, verification, export."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from falaj.core.audit import verifier
from falaj.core.audit.verifier import FIELDS, Checkpoint, VerifyReport, checkpoint_message
from falaj.core.db import read_only
from falaj.core.domain import AuditCheckpoint, AuditEvent, AuditHead

if TYPE_CHECKING:
    from falaj.core.keys import AuditSigner

HEAD_ID = 1
_LOCK_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID).with_for_update()
_INSERT_EVENT = insert(AuditEvent)
_MOVE_HEAD = (
    update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_INSERT_CHECKPOINT = insert(AuditCheckpoint)
WITNESS_FILE = "checkpoints.jsonl"
_PENDING = "falaj.pending_checkpoints"


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON, byte-identical to ``verifier.canonical_json`` (tested), about 5x faster."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def sha256_digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_bytes(value)).hexdigest()


def fast_event_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    tenant: str
    principal: str
    action: str
    resource: str
    verdict: str
    outcome: str
    reasons: list[dict[str, Any]]
    bundle_digest: str
    payload_digest: str


class AuditLog:
    """The audit chain of one control-plane database.

    ``append`` must run inside the transaction that carries the state change: it locks the chain head
    row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions here start ``IMMEDIATE``), so
    concurrent writers, in one process or many, extend the chain one after another and never fork it.
    """

    def __init__(
        self,
        signer: AuditSigner | None,
        witness_dir: Path | None,
        checkpoint_every: int,
        public_key_files: Iterable[Path] = (),
    ) -> None:
        self.signer = signer
        self.witness_dir = witness_dir
        self.checkpoint_every = checkpoint_every
        self.public_key_files = list(public_key_files)

    # -- writing ------------------------------------------------------------------------------------------
    def append(self, conn: Connection, entry: AuditEntry, info: dict[str, Any]) -> int:
        """Append ``entry`` on ``conn`` inside its open transaction; ``info`` collects new checkpoints."""
        head = conn.execute(_LOCK_HEAD).first()
        if head is None:
            raise RuntimeError("audit head row missing: the database was not migrated (`falaj init`)")
        head_seq, head_hash = head
        fields: dict[str, Any] = {
            "seq": head_seq + 1,
            "ts": rfc3339(datetime.now(UTC)),
            "tenant": entry.tenant,
            "principal": entry.principal,
            "action": entry.action,
            "resource": entry.resource,
            "verdict": entry.verdict,
            "outcome": entry.outcome,
            "reasons": canonical_bytes(entry.reasons).decode("utf-8"),
            "bundle_digest": entry.bundle_digest,
            "payload_digest": entry.payload_digest,
            "prev_hash": head_hash,
        }
        digest = fast_event_hash(fields)
        fields["hash"] = digest
        conn.execute(_INSERT_EVENT, fields)
        conn.execute(_MOVE_HEAD, {"new_seq": fields["seq"], "new_hash": digest})
        if self.signer is not None and fields["seq"] % self.checkpoint_every == 0:
            self._checkpoint(conn, fields["seq"], digest, info)
        return int(fields["seq"])

    def checkpoint_now(self, session: Session) -> Checkpoint | None:
        """Sign the current head now (bootstrap, export); a no-op if the head is already signed."""
        conn = session.connection()
        head_seq, head_hash = conn.execute(_LOCK_HEAD).one()
        if head_seq == 0 or self.signer is None:
            return None
        existing = session.get(AuditCheckpoint, head_seq)
        if existing is not None:
            return _as_checkpoint(existing)
        return self._checkpoint(conn, head_seq, head_hash, session.info)

    def _checkpoint(self, conn: Connection, seq: int, head_hash: str, info: dict[str, Any]) -> Checkpoint:
        assert self.signer is not None
        signature = base64.b64encode(self.signer.sign(checkpoint_message(seq, head_hash))).decode("ascii")
        cp = Checkpoint(
            seq=seq,
            hash=head_hash,
            ts=rfc3339(datetime.now(UTC)),
            key_id=self.signer.key_id,
            signature=signature,
        )
        conn.execute(_INSERT_CHECKPOINT, cp.__dict__)
        info.setdefault(_PENDING, []).append(cp)
        return cp

    def after_commit(self, session: Session) -> None:
        """Copy checkpoints committed by ``session`` to the witness file outside the database.

        Written only after the commit, so the witness never names a checkpoint the database lacks; an
        attacker who truncates the tables (checkpoints included) is still caught by the witness.
        """
        pending: list[Checkpoint] = session.info.pop(_PENDING, [])
        if not pending or self.witness_dir is None:
            return
        self.witness_dir.mkdir(parents=True, exist_ok=True)
        with (self.witness_dir / WITNESS_FILE).open("a", encoding="utf-8") as fh:
            for cp in pending:
                fh.write(json.dumps(cp.__dict__, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def discard_pending(self, session: Session) -> None:
        session.info.pop(_PENDING, None)

    # -- reading --------------------------------------------------------------------------------------------
    def witness_checkpoints(self) -> list[Checkpoint]:
        if self.witness_dir is None:
            return []
        path = self.witness_dir / WITNESS_FILE
        if not path.exists():
            return []
        return [Checkpoint(**json.loads(line)) for line in path.read_text("utf-8").splitlines() if line]

    def checkpoints(self, engine: Engine) -> list[Checkpoint]:
        """Checkpoints from the database and the witness file, merged by seq (see ``conflicts``)."""
        merged, _ = self._merged_checkpoints(engine)
        return merged

    def _merged_checkpoints(self, engine: Engine) -> tuple[list[Checkpoint], list[int]]:
        """Checkpoints by seq, and the seqs for which two different heads were signed.

        Two signed heads for one seq mean the chain was cut back and regrown after a checkpoint: the
        witness remembers the first, the database holds the second.
        """
        by_seq: dict[int, Checkpoint] = {}
        conflicts: set[int] = set()
        with Session(read_only(engine)) as session:
            rows = [_as_checkpoint(r) for r in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))]
        for cp in [*self.witness_checkpoints(), *rows]:
            seen = by_seq.get(cp.seq)
            if seen is not None and seen.hash != cp.hash:
                conflicts.add(cp.seq)
            by_seq.setdefault(cp.seq, cp)
        return [by_seq[k] for k in sorted(by_seq)], sorted(conflicts)

    def max_seq(self, engine: Engine) -> int:
        with read_only(engine).connect() as conn:
            return int(conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM audit_events")).scalar_one())

    def iter_rows(self, engine: Engine, upto: int, batch: int = 20_000) -> Iterator[tuple[Any, ...]]:
        """Events with ``seq <= upto`` (and any above it that sit out of place), in ``seq`` order."""
        columns = ", ".join((*FIELDS, "hash"))
        with read_only(engine).connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(
                text(f"SELECT {columns} FROM audit_events WHERE seq <= :upto ORDER BY seq"),  # noqa: S608
                {"upto": upto},
            )
            for part in result.partitions(batch):
                yield from part

    def head(self, engine: Engine) -> tuple[int, str]:
        with Session(read_only(engine)) as session:
            head = session.get(AuditHead, HEAD_ID)
            if head is None:
                return (0, verifier.GENESIS)
            return (int(head.seq), head.hash)

    def public_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        if self.signer is not None:
            keys[self.signer.key_id] = self.signer.public_key
        keys.update(verifier.load_public_keys(p.read_bytes() for p in self.public_key_files if p.exists()))
        return keys

    def verify(self, engine: Engine, *, progress: Any = None, workers: int | None = None) -> VerifyReport:
        """Verify the chain in the database, its head, and every checkpoint (database and witness)."""
        from falaj.core.audit import scan

        # Checkpoints first, then the highest seq, then the head, then the events up to that head: writers
        # appending meanwhile cannot make a sound log look truncated or overgrown.
        checkpoints, conflicts = self._merged_checkpoints(engine)
        highest = self.max_seq(engine)
        head = self.head(engine)
        keys = self.public_keys()
        url = engine.url.render_as_string(hide_password=False)
        if scan.supported(url):
            segments = scan.scan(url, head[0], [cp.seq for cp in checkpoints], workers)
            if progress is not None:
                progress(head[0])
            report = verifier.verify_segments(segments, checkpoints, keys, head=head)
        else:
            rows: Iterator[tuple[Any, ...]] = self.iter_rows(engine, head[0])
            if progress is not None:
                rows = _counting(rows, progress)
            report = verifier.verify_rows(rows, checkpoints, keys, hasher=fast_event_hash, head=head)
        if conflicts and (report.ok or (report.first_bad_seq or 0) >= conflicts[0]):
            return verifier.VerifyReport(
                ok=False,
                first_bad_seq=conflicts[0],
                problem=f"two different chain heads were signed for seq {conflicts[0]}: the log was cut back and "
                "rewritten after that checkpoint",
            )
        if not report.ok:
            return report
        if highest > head[0]:
            return verifier.VerifyReport(
                ok=False,
                first_bad_seq=head[0] + 1,
                problem=f"events up to seq {highest} lie beyond the chain head ({head[0]}): the head was rewound",
            )
        return report

    def export(self, engine: Engine, folder: Path) -> dict[str, Any]:
        """Write events, checkpoints, the public key and a standalone verifier to ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        checkpoints, _ = self._merged_checkpoints(engine)
        head_seq, head_hash = self.head(engine)
        count = 0
        with (folder / "events.jsonl").open("wb") as fh:
            for row in self.iter_rows(engine, head_seq):
                fh.write(orjson.dumps(dict(zip((*FIELDS, "hash"), row, strict=True))) + b"\n")
                count += 1
        with (folder / WITNESS_FILE).open("w", encoding="utf-8") as fh:
            for cp in checkpoints:
                fh.write(json.dumps(cp.__dict__, sort_keys=True) + "\n")
        if self.signer is not None:
            (folder / "public_key.pem").write_bytes(self.signer.public_pem())
        shutil.copyfile(verifier.__file__, folder / "verify.py")
        manifest: dict[str, Any] = {
            "format": "falaj-audit-export/v1",
            "exported_at": rfc3339(datetime.now(UTC)),
            "events": count,
            "head_seq": head_seq,
            "head_hash": head_hash,
            "files": {
                name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                for name in ("events.jsonl", WITNESS_FILE, "public_key.pem", "verify.py")
                if (folder / name).exists()
            },
            "verify_with": "python verify.py . --public-key AUDIT_PUBLIC_KEY.pem",
        }
        if self.signer is not None:
            # Signing the manifest pins the head and every file, so even the events after the last
            # checkpoint cannot be cut from the export unnoticed.
            manifest["key_id"] = self.signer.key_id
            signature = self.signer.sign(verifier.manifest_message(manifest))
            manifest["signature"] = base64.b64encode(signature).decode("ascii")
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), "utf-8")
        return manifest


def _as_checkpoint(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(seq=row.seq, hash=row.hash, ts=row.ts, key_id=row.key_id, signature=row.signature)


def _counting(rows: Iterator[tuple[Any, ...]], progress: Any) -> Iterator[tuple[Any, ...]]:
    for n, row in enumerate(rows, 1):
        if n % 10_000 == 0:
            progress(10_000)
        yield row
