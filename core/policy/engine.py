"""The policy checks beyond RBAC: residency, consent, signed artifacts and approvals.

Every check is a pure function of the policy bundle and a ``Facts`` object, so a decision can be
explained, replayed and tested without a database (``falaj policy test`` feeds facts from case files).
The control plane gathers the facts from its database (``falaj.core.policy.facts``) and calls ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from falaj.core.decision import CheckOutcome, CheckResult
from falaj.core.policy.bundle import PolicyBundle
from falaj.core.policy.rbac import Authorizer

#: Action kinds that move data to a backend, and therefore have their target region checked.
RESIDENCY_KINDS = frozenset(
    {
        "dataset.register",
        "training.submit",
        "model_version.register",
        "deployment.request",
        "deployment.rollout",
        "deployment.promote",
        "feature_view.apply",
        "feature_view.materialize",
        "feature.retrieve",
        "feature_view.push",
    }
)
#: Action kinds that read personal data for a purpose.
#: (Pushes are checked row by row by their handler: a stream's subjects need not be in the source dataset.)
CONSENT_KINDS = frozenset({"training.submit", "feature.retrieve", "feature_view.materialize"})
#: Action kinds that need the model versions they name to be signed by a trusted, unrevoked key.
SIGNATURE_KINDS = frozenset({"deployment.request", "deployment.rollout", "deployment.promote", "approval.vote"})


@dataclass(frozen=True)
class SourceData:
    """One source dataset reached through lineage, with the transfer records that apply to it."""

    name: str
    classification: str  # or UNKNOWN_LINEAGE for a model version with no recorded training data
    residency: str
    bases: frozenset[tuple[str, str]] = frozenset()  # (country, basis) valid for this source
    exceptions: frozenset[str] = frozenset()  # countries with a health exception for this source


UNKNOWN_LINEAGE = "unknown-lineage"
HOME_COUNTRY = "AE"


@dataclass(frozen=True)
class DataProfile:
    """What an action's data is, through lineage: strictest classification, every residency, sources.

    ``items`` holds each source with its own records; residency is decided per source, so a record for
    one source (a health exception, say) never lets another source's data through.
    """

    classification: str
    residencies: frozenset[str]
    sources: tuple[str, ...] = ()
    legal_bases: frozenset[str] = frozenset()
    items: tuple[SourceData, ...] = ()


@dataclass(frozen=True)
class ConsentFacts:
    """Per source dataset that rests on consent: how many subjects it has and how many may be used."""

    purpose: str
    subjects: dict[str, int] = field(default_factory=dict)
    consented: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SignatureFacts:
    """The signatures of one model version: (key id, signature valid, key trusted, key revoked)."""

    model_version: str
    signatures: tuple[tuple[str, bool, bool, bool], ...] = ()


@dataclass(frozen=True)
class ApprovalFacts:
    """The approval state relevant to the action (a rollout's request, or the request being voted on)."""

    environment: str
    request_id: str | None = None
    status: str | None = None  # pending | approved | rejected | expired | None (no request yet)
    requester: str | None = None
    voter: str | None = None
    voter_roles: frozenset[str] = frozenset()
    already_voted: bool = False
    expires_at: datetime | None = None
    now: datetime | None = None


@dataclass(frozen=True)
class Facts:
    kind: str
    tenant: str
    ruleset: str
    roles: frozenset[str]
    principal: str = ""
    target_region: str | None = None
    data: DataProfile | None = None
    transfer_bases: frozenset[tuple[str, str]] = frozenset()  # (country, basis) recorded for the data
    exceptions: frozenset[str] = frozenset()  # countries with a recorded health-data exception
    consent: ConsentFacts | None = None
    signatures: tuple[SignatureFacts, ...] | None = None
    approval: ApprovalFacts | None = None
    unknown: tuple[tuple[str, str], ...] = ()  # (what, value) the loader could not resolve
    #: Further regions the data reaches besides ``target_region`` (a retrieval joining views whose stores sit in
    #: several regions): residency must hold for each.
    other_regions: tuple[str, ...] = ()


class PolicyEngine:
    """RBAC and the kernel's policy checks under one cached bundle."""

    def __init__(self, bundle: PolicyBundle, authorizer: Authorizer | None = None) -> None:
        self.bundle = bundle
        self.authorizer = authorizer or Authorizer(bundle)

    def evaluate(self, facts: Facts, resource_type: str, verb: str) -> list[CheckResult]:
        checks = [self.authorizer.check(facts.roles, facts.tenant, resource_type, verb)]
        if checks[0].outcome is CheckOutcome.FAIL:
            return checks
        checks.extend(self.checks(facts))
        return checks

    def checks(self, facts: Facts) -> list[CheckResult]:
        out: list[CheckResult] = []
        for what, value in facts.unknown:
            out.append(CheckResult.failed("facts", f"unknown {what} {value!r}", "deny-when-undecidable"))
        if facts.ruleset not in self.bundle.rulesets:
            out.append(CheckResult.failed("ruleset", f"unknown rule set {facts.ruleset!r}", "residency.toml"))
            return out
        if facts.kind in RESIDENCY_KINDS and (facts.target_region is not None or facts.data is not None):
            out.append(self.residency(facts))
            for region in facts.other_regions:
                if region != facts.target_region:
                    out.append(self.residency(replace(facts, target_region=region, other_regions=())))
        if facts.kind in CONSENT_KINDS and facts.consent is not None:
            out.append(self.consent(facts))
        if facts.signatures is not None:
            out.append(self.signature(facts))
        if facts.approval is not None:
            out.append(self.approval(facts))
        return out

    # -- residency -------------------------------------------------------------------------------------
    def residency(self, facts: Facts) -> CheckResult:
        bundle = self.bundle
        data = facts.data
        if data is not None and data.classification not in bundle.class_rules:
            return CheckResult.failed(
                "residency",
                f"unknown classification {data.classification!r}",
                "residency.toml [classifications]",
            )
        if facts.target_region is None:
            return CheckResult.not_applicable("residency", "no target backend")
        region = bundle.regions.get(facts.target_region)
        if region is None:
            return CheckResult.failed(
                "residency",
                f"unknown region {facts.target_region!r}: not in the region catalogue, so where the "
                "data would go cannot be known",
                "regions.toml",
            )
        where = f"{region.id} ({region.country})"
        if data is None:
            return CheckResult.passed("residency", f"no personal data involved; backend in {where}", "regions.toml")
        ruleset = bundle.rulesets[facts.ruleset]
        items = data.items or tuple(
            SourceData(
                ", ".join(data.sources) or "its inputs",
                data.classification,
                home,
                facts.transfer_bases,
                facts.exceptions,
            )
            for home in sorted(data.residencies)
        )
        for item in items:
            failure = self._source_residency(item, region, ruleset)
            if failure is not None:
                return failure
        rule = bundle.class_rules[data.classification]
        countries = "/".join(sorted(data.residencies)) or "-"
        return CheckResult.passed(
            "residency",
            f"{data.classification} data (residency {countries}) may be processed in {where} under {ruleset.name}",
            f"residency.toml: {data.classification} = {rule}; ruleset {ruleset.name}",
        )

    def _source_residency(self, item: SourceData, region: Any, ruleset: Any) -> CheckResult | None:
        where = f"{region.id} ({region.country})"
        if item.classification == UNKNOWN_LINEAGE:
            if region.country == HOME_COUNTRY:
                return None
            return CheckResult.failed(
                "residency",
                f"{item.name} has no recorded lineage, so nothing shows its training data may be processed in "
                f"{where}: register it with its training run",
                "residency: derived artifacts inherit through lineage",
            )
        rule = self.bundle.class_rules.get(item.classification)
        if rule is None:
            return CheckResult.failed(
                "residency", f"unknown classification {item.classification!r}", "residency.toml [classifications]"
            )
        if item.residency == region.country or rule == "free":
            return None
        label = f"{item.classification} data from {item.name} (residency {item.residency})"
        if rule == "exception":
            if region.country in item.exceptions:
                return None
            return CheckResult.failed(
                "residency",
                f"{label} may not be stored or processed in {where} without a recorded exception (Federal Law "
                "2/2019 Art. 13; MoHAP Resolution 51/2021): record one with residency_exception.record",
                "residency.toml: health = exception",
            )
        bases = {basis for country, basis in item.bases if country == region.country}
        valid = {
            b for b in bases if b in ruleset.bases and (b != "adequacy" or region.country in ruleset.adequate_countries)
        }
        if valid:
            return None
        extra = f" (recorded: {sorted(bases)}, not valid under {ruleset.name})" if bases else ""
        return CheckResult.failed(
            "residency",
            f"{label} may leave {item.residency} for {where} only with a recorded transfer basis{extra} (PDPL "
            "Art. 22 adequacy, Art. 23 contract or express consent): record one with transfer_basis.record",
            f"residency.toml: {item.classification} = transfer-basis; ruleset {ruleset.name}",
        )

    # -- consent -----------------------------------------------------------------------------------------
    def consent(self, facts: Facts) -> CheckResult:
        consent = facts.consent
        assert consent is not None
        if consent.purpose not in self.bundle.purposes:
            return CheckResult.failed(
                "consent",
                f"unknown purpose {consent.purpose!r}: known purposes are {sorted(self.bundle.purposes)}",
                "consent.toml [purposes]",
            )
        data = facts.data
        if data is not None:
            unknown = sorted(b for b in data.legal_bases if b not in self.bundle.legal_bases)
            if unknown:
                return CheckResult.failed(
                    "consent", f"unknown legal basis {unknown[0]!r}", "consent.toml [legal_bases]"
                )
        if not consent.subjects:
            return CheckResult.passed("consent", "no source rests on consent for this purpose", "consent.toml")
        total = sum(consent.subjects.values())
        allowed = sum(consent.consented.get(name, 0) for name in consent.subjects)
        if allowed == 0:
            return CheckResult.failed(
                "consent",
                f"no data subject has valid consent for {consent.purpose!r} in {sorted(consent.subjects)}",
                "consent.toml: legal basis consent = filter",
            )
        return CheckResult.passed(
            "consent",
            f"{allowed} of {total} data subjects have valid consent for {consent.purpose!r}; "
            f"{total - allowed} excluded (withdrawn or never given)",
            "consent.toml: legal basis consent = filter (PDPL Art. 6)",
            consent={"purpose": consent.purpose, "allowed": allowed, "excluded": total - allowed},
        )

    # -- signatures ------------------------------------------------------------------------------------
    def signature(self, facts: Facts) -> CheckResult:
        policy = self.bundle.signer_policy(facts.tenant)
        assert facts.signatures is not None
        for version in facts.signatures:
            good = [k for k, valid, trusted, revoked in version.signatures if valid and trusted and not revoked]
            if good:
                continue
            if not policy.require_signature:
                continue
            if not version.signatures:
                return CheckResult.failed(
                    "signature",
                    f"{version.model_version} is not signed: sign it (artifact.sign) first",
                    "signers.toml: require_signature",
                )
            reasons = []
            for key, valid, trusted, revoked in version.signatures:
                why = (
                    "invalid" if not valid else "revoked" if revoked else "not a trusted signer" if not trusted else ""
                )
                reasons.append(f"{key}: {why}")
            return CheckResult.failed(
                "signature",
                f"{version.model_version} has no valid signature by a trusted, unrevoked key ({'; '.join(reasons)})",
                f"signers.toml: trust = {policy.trust}",
            )
        names = ", ".join(v.model_version for v in facts.signatures)
        return CheckResult.passed(
            "signature",
            f"{names}: signed by a trusted key, verified",
            f"signers.toml: trust = {policy.trust}",
        )

    # -- approvals -----------------------------------------------------------------------------------------
    def approval(self, facts: Facts) -> CheckResult:
        a = facts.approval
        assert a is not None
        rule = self.bundle.approval_rule(facts.tenant, a.environment)
        if rule is None:
            return CheckResult.failed(
                "approval",
                f"unknown environment {a.environment!r}: known are {sorted(self.bundle.approvals)}",
                "approvals.toml",
            )
        where = f"approvals.toml: {a.environment} quorum {rule.quorum}"
        if facts.kind == "approval.vote":
            return self._vote(facts, a, rule.approver_role, where)
        if rule.quorum == 0:
            return CheckResult.passed("approval", f"{a.environment} needs no approval", where)
        if a.status == "approved":
            return CheckResult.passed("approval", f"approved by {rule.quorum} approver(s)", where)
        if a.status in ("rejected", "expired"):
            return CheckResult.failed(
                "approval", f"the approval request was {a.status}; request a new deployment", where
            )
        return CheckResult(
            "approval",
            CheckOutcome.PENDING,
            f"{a.environment} needs {rule.quorum} approval(s) by role {rule.approver_role!r} before rollout",
            where,
        )

    def _vote(self, facts: Facts, a: ApprovalFacts, approver_role: str, where: str) -> CheckResult:
        if a.request_id is None:
            return CheckResult.failed("approval", "no such approval request", where)
        if a.voter is not None and a.voter == a.requester:
            return CheckResult.failed(
                "approval", "the requester can never approve their own request", "separation of duties"
            )
        if approver_role not in a.voter_roles:
            return CheckResult.failed("approval", f"voting needs role {approver_role!r}", where)
        if a.already_voted:
            return CheckResult.failed("approval", "an approver votes once on a request", where)
        if a.status != "pending":
            return CheckResult.failed("approval", f"the request is already {a.status}", where)
        if a.expires_at is not None and a.now is not None and a.now >= a.expires_at:
            return CheckResult.failed("approval", f"the request expired at {a.expires_at.isoformat()}", where)
        return CheckResult.passed("approval", "vote accepted: not the requester, first vote, request open", where)


def strictest(bundle: PolicyBundle, classifications: Iterable[str]) -> str:
    known = [c for c in classifications if c in bundle.class_rules]
    return max(known, key=bundle.strictness) if known else "public"
