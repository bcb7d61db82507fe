"""`falaj audit verify` throughput, in events per second, on SQLite and PostgreSQL.

A chain of N real events (the same fields and hashing as the pipeline writes, with a signed checkpoint
every 256 events) is bulk-loaded, then verified three ways: the CLI command end to end (process start
included), the in-process verifier, and the offline verifier of an export (stdlib JSON, as an auditor
runs it). Target: >= 200,000 events/s.

    python bench/audit_verify.py [--events 500000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import database, pg_available
from sqlalchemy import insert, update

from falaj.core import ControlPlane, Settings
from falaj.core.audit.chain import fast_event_hash, rfc3339
from falaj.core.audit.verifier import GENESIS, checkpoint_message, verify_export
from falaj.core.bootstrap import migrate
from falaj.core.domain import AuditCheckpoint, AuditEvent, AuditHead
from falaj.core.keys import AuditSigner
from falaj.core.plugin import create_plugin_manager

KINDS = [
    "dataset.register",
    "consent.record",
    "model_version.register",
    "deployment.request",
    "approval.vote",
]


def load_chain(plane: ControlPlane, n: int, signer: AuditSigner) -> None:
    prev = GENESIS
    batch: list[dict[str, object]] = []
    checkpoints: list[dict[str, object]] = []
    reasons = json.dumps(
        [
            {"check": "authenticate", "outcome": "pass", "reason": "authenticated as acme/layla"},
            {"check": "payload", "outcome": "pass", "reason": "valid"},
            {
                "check": "rbac",
                "outcome": "pass",
                "reason": "role 'ml-engineer' may",
                "rule": "rbac_policy.csv:24",
            },
        ],
        separators=(",", ":"),
        sort_keys=True,
    )
    ts = rfc3339(datetime.now(UTC))
    with plane.engine.begin() as conn:
        for seq in range(1, n + 1):
            fields = {
                "seq": seq,
                "ts": ts,
                "tenant": "acme",
                "principal": "acme/layla",
                "action": KINDS[seq % 5],
                "resource": f"dataset/customers-{seq}",
                "verdict": "allow",
                "outcome": "succeeded",
                "reasons": reasons,
                "bundle_digest": "sha256:" + "b" * 64,
                "payload_digest": "sha256:" + format(seq, "064x"),
                "prev_hash": prev,
            }
            prev = fast_event_hash(fields)
            fields["hash"] = prev
            batch.append(fields)
            if seq % 256 == 0:
                sig = base64.b64encode(signer.sign(checkpoint_message(seq, prev))).decode()
                checkpoints.append({"seq": seq, "hash": prev, "ts": ts, "key_id": signer.key_id, "signature": sig})
            if len(batch) == 20_000:
                conn.execute(insert(AuditEvent), batch)
                batch = []
        if batch:
            conn.execute(insert(AuditEvent), batch)
        conn.execute(insert(AuditCheckpoint), checkpoints)
        conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=n, hash=prev))


def run(kind: str, n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        settings = Settings(home=Path(tmp) / "home", database_url=url)
        signer = AuditSigner.load(settings, create=True)
        migrate(settings)
        plane = ControlPlane(settings, signer=signer, registry=create_plugin_manager(load_entrypoints=False))
        load_chain(plane, n, signer)

        t0 = time.perf_counter()
        report = plane.audit.verify(plane.engine)
        in_process = time.perf_counter() - t0
        assert report.ok and report.events == n, report.problem

        env = dict(os.environ, FALAJ_HOME=str(settings.home), FALAJ_DATABASE_URL=url)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "falaj.api.cli", "audit", "verify", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        cli = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stdout + proc.stderr

        export = Path(tmp) / "export"
        plane.audit.export(plane.engine, export)
        t0 = time.perf_counter()
        offline_report = verify_export(export, signer.public_pem())
        offline = time.perf_counter() - t0
        assert offline_report.ok
        plane.close()
    return {
        "database": kind,
        "events": n,
        "cli_events_per_s": round(n / cli),
        "in_process_events_per_s": round(n / in_process),
        "offline_stdlib_events_per_s": round(n / offline),
        "cli_seconds": round(cli, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgres"] if pg_available() else [])
    results = [run(k, args.events) for k in kinds]
    print(
        "| database | events | `falaj audit verify` (CLI, events/s) | in-process (events/s) | offline export, stdlib (events/s) |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['database']} | {r['events']:,} | {r['cli_events_per_s']:,} | {r['in_process_events_per_s']:,} "
            f"| {r['offline_stdlib_events_per_s']:,} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
