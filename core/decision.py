"""Decisions: the verdict of the pipeline with every check's outcome and reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class CheckOutcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - not a password
    FAIL = "fail"
    PENDING = "pending"  # the action may proceed once something happens (an approval quorum)
    NOT_APPLICABLE = "n/a"


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check, with the reason and the rule that decided it."""

    check: str
    outcome: CheckOutcome
    reason: str
    rule: str | None = None
    # Conditions the allowed action must honour (e.g. only these data subjects may be read).
    obligations: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def passed(cls, check: str, reason: str, rule: str | None = None, **obligations: Any) -> CheckResult:
        return cls(check, CheckOutcome.PASS, reason, rule, obligations)

    @classmethod
    def failed(cls, check: str, reason: str, rule: str | None = None) -> CheckResult:
        return cls(check, CheckOutcome.FAIL, reason, rule)

    @classmethod
    def not_applicable(cls, check: str, reason: str) -> CheckResult:
        return cls(check, CheckOutcome.NOT_APPLICABLE, reason)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "outcome": str(self.outcome), "reason": self.reason}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.obligations:
            out["obligations"] = self.obligations
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow only if every check passed (or did not apply) and at least one check passed.

    Deny by default: an empty list of checks denies.
    """

    verdict: Verdict
    checks: tuple[CheckResult, ...]
    bundle_digest: str

    @classmethod
    def from_checks(cls, checks: list[CheckResult], bundle_digest: str) -> Decision:
        outcomes = [c.outcome for c in checks]
        if not any(o is CheckOutcome.PASS for o in outcomes) or CheckOutcome.FAIL in outcomes:
            verdict = Verdict.DENY
        elif CheckOutcome.PENDING in outcomes:
            verdict = Verdict.PENDING
        else:
            verdict = Verdict.ALLOW
        return cls(verdict, tuple(checks), bundle_digest)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.outcome is CheckOutcome.FAIL]

    def obligations(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for check in self.checks:
            merged.update(check.obligations)
        return merged

    def summary(self) -> str:
        if self.verdict is Verdict.ALLOW:
            return "allowed"
        if self.verdict is Verdict.PENDING:
            pending = [c for c in self.checks if c.outcome is CheckOutcome.PENDING]
            return "pending: " + "; ".join(f"{c.check}: {c.reason}" for c in pending)
        failures = self.failures or [CheckResult.failed("default", "no check allowed this action")]
        return "denied: " + "; ".join(f"{c.check}: {c.reason}" for c in failures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "bundle_digest": self.bundle_digest,
            "checks": [c.as_dict() for c in self.checks],
        }
