"""Kernel overhead per governed action vs the same state change written directly with SQLAlchemy.

Both sides insert one ``CostRecord`` row and commit, on the same database, interleaved in rounds so that
machine noise hits both alike. The governed side goes through ``ControlPlane.execute``: token
authentication, payload validation, RBAC, decision, handler, operation record, audit append (with its
periodic signed checkpoint) and commit.

    python bench/kernel_overhead.py [--actions 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import database, median, pg_available, quantile

from falaj.core import Action, ControlPlane, Settings, TokenCredential
from falaj.core.bootstrap import initialise
from falaj.core.domain import CostRecord, Tenant
from falaj.core.keys import AuditSigner
from falaj.core.plugin import create_plugin_manager


def run(kind: str, actions: int, rounds: int) -> dict[str, float | str | int]:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        settings = Settings(home=Path(tmp) / "home", database_url=url)
        boot = initialise(settings, tenant="bench", display_name="Bench", admin="admin")
        plane = ControlPlane(
            settings,
            signer=AuditSigner.load(settings),
            registry=create_plugin_manager(load_entrypoints=False),
        )
        token = TokenCredential(boot.token)
        with plane.sessions() as s:
            tenant_id = s.query(Tenant.id).scalar()
        governed: list[float] = []
        direct: list[float] = []
        per_round = max(1, actions // rounds)
        # Warm up both paths (connections, caches, first-statement compilation).
        for i in range(50):
            plane.execute(Action("cost.record", "bench", token, {"resource": f"warm/{i}", "amount": "1"}))
            with plane.sessions() as s, s.begin():
                s.add(CostRecord(tenant_id=tenant_id, resource=f"warm/{i}", amount=Decimal("1")))
        for r in range(rounds):
            for i in range(per_round):
                t0 = time.perf_counter_ns()
                result = plane.execute(
                    Action("cost.record", "bench", token, {"resource": f"g/{r}/{i}", "amount": "1.5"})
                )
                governed.append((time.perf_counter_ns() - t0) / 1e6)
                assert result.ok, result.message()
            for i in range(per_round):
                t0 = time.perf_counter_ns()
                with plane.sessions() as s, s.begin():
                    s.add(CostRecord(tenant_id=tenant_id, resource=f"d/{r}/{i}", amount=Decimal("1.5")))
                direct.append((time.perf_counter_ns() - t0) / 1e6)
        verified = plane.audit.verify(plane.engine)
        assert verified.ok, verified.problem
        plane.close()
    g, d = median(governed), median(direct)
    return {
        "database": kind,
        "actions": len(governed),
        "governed_median_ms": round(g, 3),
        "governed_p99_ms": round(quantile(governed, 0.99), 3),
        "direct_median_ms": round(d, 3),
        "direct_p99_ms": round(quantile(direct, 0.99), 3),
        "overhead_median_ms": round(g - d, 3),
        "ratio": round(g / d, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgres"] if pg_available() else [])
    results = [run(k, args.actions, args.rounds) for k in kinds]
    print("| database | governed p50 (ms) | governed p99 | direct p50 (ms) | direct p99 | overhead p50 (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['database']} | {r['governed_median_ms']} | {r['governed_p99_ms']} | {r['direct_median_ms']} "
            f"| {r['direct_p99_ms']} | {r['overhead_median_ms']} | {r['ratio']}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
