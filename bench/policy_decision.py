"""Policy decision latency: 10,000 role-policy rules across 100 tenants, Falaj vs pycasbin's plain Enforcer.

Same rules, same requests, one run. The plain enforcer is pycasbin's `Enforcer` on an RBAC-with-domains
model (users mapped to roles per tenant with `g`), asked `enforce(user, tenant, resource, verb)`. Falaj's
figure is a *full* decision under a cached bundle: RBAC plus the residency, consent, signature and approval
checks, from facts already gathered (the database reads that gather them are measured by
bench/kernel_overhead.py, not here).

    python bench/policy_decision.py [--requests 20000] [--casbin-requests 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import casbin
from _support import quantile

from falaj.core.actions import ActionKind
from falaj.core.policy import load_bundle
from falaj.core.policy.bundle import default_policy_dir
from falaj.core.policy.engine import (
    ApprovalFacts,
    ConsentFacts,
    DataProfile,
    Facts,
    PolicyEngine,
    SignatureFacts,
)

TENANTS = 100
ROLES = [f"role-{i}" for i in range(20)]
USERS_PER_TENANT = 10
PLAIN_MODEL = """
[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = sub, dom, obj, act, eft
[role_definition]
g = _, _, _
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = g(r.sub, p.sub, r.dom) && (p.dom == "*" || p.dom == r.dom) && r.obj == p.obj && (p.act == "*" || p.act == r.act)
"""


def build_rules(rng: random.Random) -> list[tuple[str, str, str, str, str]]:
    kinds = list(ActionKind)
    rules: dict[tuple[str, str, str, str], str] = {}
    for t in range(TENANTS):
        tenant = f"tenant-{t:03d}"
        count = 0
        while count < 100:
            kind = rng.choice(kinds)
            key = (rng.choice(ROLES), tenant, kind.resource_type, kind.verb)
            if key not in rules:
                rules[key] = "deny" if rng.random() < 0.05 else "allow"
                count += 1
    return sorted((*k, v) for k, v in rules.items())


def write_bundle(folder: Path, rules: list[tuple[str, str, str, str, str]]) -> None:
    shutil.copytree(default_policy_dir(), folder, ignore=shutil.ignore_patterns("__pycache__", "*.py", "tests"))
    manifest = (folder / "bundle.toml").read_text()
    roles = ", ".join(f'"{r}"' for r in ROLES)
    manifest = manifest.replace('known = ["platform-admin"', f'known = [{roles}, "platform-admin"')
    (folder / "bundle.toml").write_text(manifest)
    (folder / "rbac_policy.csv").write_text("\n".join("p, " + ", ".join(r) for r in rules) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--casbin-requests", type=int, default=1_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(42)
    rules = build_rules(rng)
    assert len(rules) == TENANTS * 100

    # Users and their roles per tenant (casbin's g; Falaj reads them from role_assignments).
    membership = {
        (f"user-{t:03d}-{u}", f"tenant-{t:03d}"): rng.sample(ROLES, 2)
        for t in range(TENANTS)
        for u in range(USERS_PER_TENANT)
    }
    kinds = list(ActionKind)
    requests = [(*rng.choice(list(membership)), rng.choice(kinds)) for _ in range(args.requests)]

    # --- pycasbin, plain ---
    t0 = time.perf_counter()
    model = casbin.Model()
    model.load_model_from_text(PLAIN_MODEL)
    enforcer = casbin.Enforcer(model)
    enforcer.add_policies([list(r) for r in rules])
    enforcer.add_grouping_policies(
        [[user, role, tenant] for (user, tenant), roles in membership.items() for role in roles]
    )
    casbin_load = time.perf_counter() - t0
    plain: list[float] = []
    plain_answers = []
    for user, tenant, kind in requests[: args.casbin_requests]:
        t1 = time.perf_counter_ns()
        plain_answers.append(enforcer.enforce(user, tenant, kind.resource_type, kind.verb))
        plain.append((time.perf_counter_ns() - t1) / 1000)

    # --- Falaj, full decision ---
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policies"
        write_bundle(folder, rules)
        t0 = time.perf_counter()
        bundle = load_bundle(folder)
        engine = PolicyEngine(bundle)
        falaj_load = time.perf_counter() - t0

    data = DataProfile("personal", frozenset({"AE"}), ("customers v3",), frozenset({"consent"}))
    consent = ConsentFacts("training", {"customers v3": 400}, {"customers v3": 382})
    signatures = (SignatureFacts("churn v1", (("ecdsa:aa", True, True, False),)),)
    approval = ApprovalFacts(environment="production", request_id="r1", status="approved")

    def facts_for(user: str, tenant: str, kind: ActionKind) -> Facts:
        return Facts(
            kind=kind.value,
            tenant=tenant,
            ruleset="uae-federal",
            roles=frozenset(membership[(user, tenant)]),
            principal=user,
            target_region="me-central-1",
            data=data,
            consent=consent,
            signatures=signatures,
            approval=approval,
        )

    facts = [facts_for(*r) for r in requests]
    cold: list[float] = []
    warm: list[float] = []
    agree = 0
    for i, ((_user, _tenant, kind), f) in enumerate(zip(requests, facts, strict=True)):
        t1 = time.perf_counter_ns()
        checks = engine.evaluate(f, kind.resource_type, kind.verb)
        elapsed = (time.perf_counter_ns() - t1) / 1000
        (cold if i < args.casbin_requests else warm).append(elapsed)
        if i < args.casbin_requests:
            agree += (checks[0].outcome.value == "pass") == plain_answers[i]
    # A second pass over the same requests: the cached bundle, as a long-running server sees it.
    again: list[float] = []
    for (_user, _tenant, kind), f in zip(requests, facts, strict=True):
        t1 = time.perf_counter_ns()
        engine.evaluate(f, kind.resource_type, kind.verb)
        again.append((time.perf_counter_ns() - t1) / 1000)

    result = {
        "rules": len(rules),
        "tenants": TENANTS,
        "casbin_plain_median_us": round(statistics.median(plain), 1),
        "casbin_plain_p99_us": round(quantile(plain, 0.99), 1),
        "falaj_full_decision_median_us": round(statistics.median(again), 2),
        "falaj_full_decision_p99_us": round(quantile(again, 0.99), 2),
        "falaj_first_pass_median_us": round(statistics.median(cold + warm), 2),
        "speedup_median": round(statistics.median(plain) / statistics.median(again), 1),
        "rbac_agreement": f"{agree}/{args.casbin_requests}",
        "casbin_load_s": round(casbin_load, 2),
        "falaj_bundle_load_s": round(falaj_load, 2),
    }
    print(
        "| rules | tenants | pycasbin Enforcer p50 (µs) | p99 | Falaj full decision p50 (µs) | p99 | first pass p50 | speed-up | RBAC answers equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {result['rules']:,} | {TENANTS} | {result['casbin_plain_median_us']:,} | {result['casbin_plain_p99_us']:,} "
        f"| {result['falaj_full_decision_median_us']} | {result['falaj_full_decision_p99_us']} "
        f"| {result['falaj_first_pass_median_us']} | {result['speedup_median']}x | {result['rbac_agreement']} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
