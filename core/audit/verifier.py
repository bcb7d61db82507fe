"""Offline verification of a Falaj audit chain.

This module is self-contained on purpose: it imports only the standard library and ``cryptography``,
and ``falaj audit export`` copies it into the export as ``verify.py`` so that an auditor can check the
log with nothing but the public key::

    python verify.py EXPORT_DIR

Each event's hash is SHA-256 over the canonical JSON (keys sorted, no whitespace, UTF-8, no ASCII
escaping) of its fields other than ``hash``; ``prev_hash`` links it to the event before, starting from
64 zeros. A checkpoint is an Ed25519 signature over ``falaj-audit-checkpoint:v1:<seq>:<hash>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
BROKEN = "the chain was broken by an insertion, deletion or reordering"
FIELDS = (
    "seq",
    "ts",
    "tenant",
    "principal",
    "action",
    "resource",
    "verdict",
    "outcome",
    "reasons",
    "bundle_digest",
    "payload_digest",
    "prev_hash",
)


def canonical_json(value: Any) -> bytes:
    """Canonical JSON as Falaj hashes it (stdlib reference implementation)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: fields[k] for k in FIELDS})).hexdigest()


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    return f"falaj-audit-checkpoint:v1:{seq}:{head_hash}".encode("ascii")


@dataclass
class Checkpoint:
    seq: int
    hash: str
    ts: str
    key_id: str
    signature: str


@dataclass
class VerifyReport:
    ok: bool
    events: int = 0
    last_seq: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints_verified: int = 0
    latest_checkpoint: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_seq": self.last_seq,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "checkpoints_verified": self.checkpoints_verified,
            "latest_checkpoint": self.latest_checkpoint,
        }


@dataclass
class Segment:
    """What one pass over a run of events ``start..`` found (events may be checked in segments)."""

    start: int
    first_prev: str | None = None  # prev_hash of the first event, to stitch with the segment before
    count: int = 0
    last_hash: str | None = None
    first_bad: int | None = None
    problem: str | None = None
    hashes_at: dict[int, str] = field(default_factory=dict)


def check_segment(
    rows: Iterable[Sequence[Any]],
    start: int,
    prev: str | None,
    wanted: set[int],
    hasher: Any = None,
) -> Segment:
    """Check events from seq ``start`` on: contiguous, linked, and each hash matching its content.

    ``prev`` is the hash the first event must link to, or None when it is checked later by stitching.
    """
    compute = hasher or event_hash
    seg = Segment(start=start)
    expected_seq = start
    for row in rows:
        seq = row[0]
        if seq != expected_seq:
            seg.first_bad = expected_seq
            seg.problem = f"event {expected_seq} is missing (found {seq} next): deleted"
            break
        if expected_seq == start:
            seg.first_prev = row[11]
        if prev is not None and row[11] != prev:
            seg.first_bad = seq
            seg.problem = f"event {seq} does not follow event {seq - 1}: {BROKEN}"
            break
        digest = compute(dict(zip(FIELDS, row, strict=False)))
        if digest != row[12]:
            seg.first_bad = seq
            seg.problem = f"event {seq} was altered: its hash does not match its content"
            break
        if seq in wanted:
            seg.hashes_at[seq] = digest
        prev = digest
        expected_seq += 1
    seg.count = expected_seq - start
    seg.last_hash = prev
    return seg


def stitch(segments: Sequence[Segment]) -> tuple[VerifyReport, str, dict[int, str]]:
    """Join consecutive segments into one report: links across boundaries, gaps, first bad event."""
    report = VerifyReport(ok=True)
    prev = GENESIS
    hashes_at: dict[int, str] = {}
    last_seq = 0
    for i, seg in enumerate(segments):
        if seg.count and seg.first_prev != prev:
            problem = f"event {seg.start} does not follow event {seg.start - 1}: {BROKEN}"
            return _bad(report, seg.start, problem), prev, hashes_at
        if seg.first_bad is not None:
            return _bad(report, seg.first_bad, seg.problem or "bad event"), prev, hashes_at
        hashes_at.update(seg.hashes_at)
        if seg.count:
            prev = seg.last_hash or prev
            last_seq = seg.start + seg.count - 1
        later = [s for s in segments[i + 1 :] if s.count]
        if later and (seg.count == 0 or seg.start + seg.count != later[0].start):
            missing = seg.start + seg.count
            return _bad(report, missing, f"event {missing} is missing: deleted"), prev, hashes_at
        if later and seg.count == 0:
            break
    report.events = report.last_seq = last_seq
    return report, prev, hashes_at


def verify_rows(
    rows: Iterable[Sequence[Any]],
    checkpoints: Sequence[Checkpoint],
    public_keys: dict[str, Any],
    *,
    hasher: Any = None,
    head: tuple[int, str] | None = None,
) -> VerifyReport:
    """Verify events given as tuples in ``FIELDS`` order followed by ``hash``, sorted by ``seq``.

    ``public_keys`` maps key ids to Ed25519 public keys (``cryptography`` objects). ``hasher`` may replace
    the stdlib canonical JSON with a faster, byte-identical one. ``head`` is the stored chain head, when
    the log comes from a database.
    """
    segment = check_segment(rows, 1, GENESIS, {cp.seq for cp in checkpoints}, hasher)
    return verify_segments([segment], checkpoints, public_keys, head=head)


def verify_segments(
    segments: Sequence[Segment],
    checkpoints: Sequence[Checkpoint],
    public_keys: dict[str, Any],
    *,
    head: tuple[int, str] | None = None,
) -> VerifyReport:
    """Stitch checked segments, then check the chain head and every signed checkpoint."""
    report, prev, hashes_at = stitch(segments)
    if not report.ok:
        return report

    if head is not None and (head[0] != report.last_seq or head[1] != prev):
        if head[0] > report.last_seq:
            return _bad(
                report,
                report.last_seq + 1,
                f"truncated tail: the chain head says seq {head[0]} but the log ends at {report.last_seq}",
            )
        return _bad(report, head[0] + 1, "the chain head does not match the last event")

    for cp in sorted(checkpoints, key=lambda c: c.seq):
        key = public_keys.get(cp.key_id)
        if key is None:
            return _bad(report, cp.seq, f"checkpoint at seq {cp.seq} is signed by unknown key {cp.key_id}")
        try:
            key.verify(base64.b64decode(cp.signature), checkpoint_message(cp.seq, cp.hash))
        except Exception:
            return _bad(report, cp.seq, f"checkpoint at seq {cp.seq} has an invalid signature")
        if cp.seq > report.last_seq:
            return _bad(
                report,
                report.last_seq + 1,
                f"truncated tail: a signed checkpoint covers seq {cp.seq} but the log ends at {report.last_seq}",
            )
        if hashes_at.get(cp.seq) != cp.hash:
            return _bad(report, cp.seq, f"event {cp.seq} differs from the signed checkpoint at that seq")
        report.checkpoints_verified += 1
        report.latest_checkpoint = cp.seq
    return report


def _bad(report: VerifyReport, seq: int, problem: str) -> VerifyReport:
    report.ok = False
    report.first_bad_seq = seq
    report.problem = problem
    return report


def load_public_keys(pem_blobs: Iterable[bytes]) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    keys: dict[str, Any] = {}
    for blob in pem_blobs:
        key = serialization.load_pem_public_key(blob)
        keys[key_id_of(key)] = key
    return keys


def key_id_of(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def manifest_message(manifest: dict[str, Any]) -> bytes:
    """What the export's manifest signature covers: the manifest without its signature, canonical."""
    body = {k: v for k, v in manifest.items() if k not in ("signature", "key_id")}
    return b"falaj-audit-export:v1:" + canonical_json(body)


def verify_export(folder: Path, trusted_public_key: bytes) -> VerifyReport:
    """Verify an export folder written by ``falaj audit export`` with the audit public key you trust.

    The key must come from the operator by another channel: a key shipped inside the export proves nothing,
    since whoever could edit the export could replace it too.
    """
    keys = load_public_keys([trusted_public_key])
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        return _bad(VerifyReport(ok=False), 1, "manifest.json is missing")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    key = keys.get(manifest.get("key_id", ""))
    if key is None:
        return _bad(VerifyReport(ok=False), 1, "the export is not signed by the trusted key")
    try:
        key.verify(base64.b64decode(manifest.get("signature", "")), manifest_message(manifest))
    except Exception:
        return _bad(VerifyReport(ok=False), 1, "the export manifest's signature is invalid: it was edited")
    for name, digest in manifest.get("files", {}).items():
        if name == "verify.py":
            continue
        path = folder / name
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            report = VerifyReport(ok=False)
            if name == "events.jsonl":
                break  # find the first bad event below instead of reporting the whole file
            return _bad(report, 1, f"{name} differs from the signed manifest")
    checkpoints = [
        Checkpoint(**json.loads(line))
        for line in (folder / "checkpoints.jsonl").read_text("utf-8").splitlines()
        if line.strip()
    ]

    def rows() -> Iterable[tuple[Any, ...]]:
        with (folder / "events.jsonl").open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    event = json.loads(line)
                    yield (*(event[k] for k in FIELDS), event["hash"])

    # The signed manifest names the head the export was taken at: a tail cut after the last checkpoint shows.
    return verify_rows(rows(), checkpoints, keys, head=(manifest["head_seq"], manifest["head_hash"]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[1] != "--public-key":
        print(
            "usage: python verify.py EXPORT_DIR --public-key AUDIT_PUBLIC_KEY.pem\n"
            "  use the audit public key the operator gave you, not one found inside the export",
            file=sys.stderr,
        )
        return 2
    report = verify_export(Path(args[0]), Path(args[2]).read_bytes())
    if report.ok:
        print(
            f"OK: {report.events} events, {report.checkpoints_verified} signed checkpoints verified "
            f"(latest at seq {report.latest_checkpoint})"
        )
        return 0
    print(f"TAMPERED: first bad seq {report.first_bad_seq}: {report.problem}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
