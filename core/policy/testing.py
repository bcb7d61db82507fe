"""`falaj policy test`: run the policy case files (``policies/tests/*.toml``) against a bundle.

A case gives the facts of a decision and what is expected::

    [[case]]
    name = "health data may not go to Bahrain"
    kind = "training.submit"
    roles = ["ml-engineer"]
    target_region = "me-south-1"
    data = { classification = "health", residencies = ["AE"] }
    expect = { verdict = "deny", check = "residency", reason = "Federal Law 2/2019" }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from falaj.core.actions import ActionKind, parse_kind
from falaj.core.decision import CheckOutcome, Decision
from falaj.core.policy.bundle import PolicyBundle, PolicyError
from falaj.core.policy.engine import (
    ApprovalFacts,
    ConsentFacts,
    DataProfile,
    Facts,
    PolicyEngine,
    SignatureFacts,
)

CASE_KEYS = {
    "name",
    "kind",
    "tenant",
    "ruleset",
    "roles",
    "target_region",
    "data",
    "transfer_bases",
    "exceptions",
    "consent",
    "signatures",
    "approval",
    "expect",
}


@dataclass
class CaseResult:
    file: str
    name: str
    passed: bool
    detail: str


def _facts(case: dict[str, Any], where: str) -> Facts:
    unknown_keys = sorted(set(case) - CASE_KEYS)
    if unknown_keys:
        raise PolicyError(where, None, f"unknown keys {unknown_keys}")
    data = None
    if "data" in case:
        d = case["data"]
        data = DataProfile(
            d["classification"],
            frozenset(d.get("residencies", ["AE"])),
            tuple(d.get("sources", ())),
            frozenset(d.get("legal_bases", ())),
        )
    consent = None
    if "consent" in case:
        c = case["consent"]
        consent = ConsentFacts(c["purpose"], dict(c.get("subjects", {})), dict(c.get("consented", {})))
    signatures = None
    if "signatures" in case:
        signatures = tuple(
            SignatureFacts(
                s["model_version"],
                tuple(
                    (k["key"], k.get("valid", True), k.get("trusted", True), k.get("revoked", False))
                    for k in s.get("keys", [])
                ),
            )
            for s in case["signatures"]
        )
    approval = None
    if "approval" in case:
        a = case["approval"]
        now = datetime(2026, 1, 1, tzinfo=UTC)
        approval = ApprovalFacts(
            environment=a["environment"],
            request_id=a.get("request_id", "r1" if "status" in a else None),
            status=a.get("status"),
            requester=a.get("requester"),
            voter=a.get("voter"),
            voter_roles=frozenset(a.get("voter_roles", [])),
            already_voted=a.get("already_voted", False),
            expires_at=now - timedelta(hours=1) if a.get("expired") else now + timedelta(hours=1),
            now=now,
        )
    return Facts(
        kind=case["kind"],
        tenant=case.get("tenant", "acme"),
        ruleset=case.get("ruleset", "uae-federal"),
        roles=frozenset(case.get("roles", [])),
        target_region=case.get("target_region"),
        data=data,
        transfer_bases=frozenset((c, b) for c, b in case.get("transfer_bases", [])),
        exceptions=frozenset(case.get("exceptions", [])),
        consent=consent,
        signatures=signatures,
        approval=approval,
    )


def decide(engine: PolicyEngine, facts: Facts) -> Decision:
    kind = parse_kind(facts.kind)
    if kind is None:
        raise ValueError(f"unknown action kind {facts.kind!r}")
    return Decision.from_checks(engine.evaluate(facts, kind.resource_type, kind.verb), engine.bundle.digest)


def run_case(engine: PolicyEngine, case: dict[str, Any], file: str) -> CaseResult:
    name = str(case.get("name", "?"))
    try:
        facts = _facts(case, f"{file}: case {name!r}")
        decision = decide(engine, facts)
    except (KeyError, ValueError, TypeError, PolicyError) as exc:
        return CaseResult(file, name, False, f"malformed case: {exc}")
    expect = case.get("expect", {})
    problems = []
    if str(decision.verdict) != expect.get("verdict"):
        problems.append(f"verdict {decision.verdict}, expected {expect.get('verdict')}")
    deciding = [c for c in decision.checks if c.outcome in (CheckOutcome.FAIL, CheckOutcome.PENDING)]
    if "check" in expect:
        named = [c for c in decision.checks if c.check == expect["check"]]
        if not named:
            problems.append(f"no {expect['check']!r} check in the decision")
        elif "reason" in expect and expect["reason"] not in named[0].reason:
            problems.append(f"{expect['check']} reason {named[0].reason!r} lacks {expect['reason']!r}")
    elif "reason" in expect and not any(expect["reason"] in c.reason for c in deciding or decision.checks):
        problems.append(f"no reason contains {expect['reason']!r}")
    summary = "; ".join(f"{c.check}={c.outcome}" for c in decision.checks)
    return CaseResult(file, name, not problems, "; ".join(problems) or summary)


def load_cases(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(folder.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"tests/{path.name}", None, f"not valid TOML: {exc}") from exc
        cases.extend((path.name, case) for case in data.get("case", []))
    return cases


def run_all(bundle: PolicyBundle, folder: Path) -> list[CaseResult]:
    engine = PolicyEngine(bundle)
    return [run_case(engine, case, file) for file, case in load_cases(folder)]


def kinds_covered(folder: Path) -> set[ActionKind]:
    return {k for _, c in load_cases(folder) if (k := parse_kind(str(c.get("kind")))) is not None}
