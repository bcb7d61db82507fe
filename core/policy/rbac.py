"""RBAC with tenants as casbin domains, deny overriding allow, decisions cached per bundle."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import casbin

from falaj.core.decision import CheckResult
from falaj.core.policy.bundle import PolicyBundle, RbacRule


@dataclass(frozen=True, slots=True)
class RoleDecision:
    effect: str | None  # allow | deny | None (no line matched)
    rule: RbacRule | None


class Authorizer:
    """Answers (roles, tenant, resource type, verb) with the rule that decided.

    casbin decides. Each tenant (casbin domain) gets its own enforcer holding only the lines that can
    match it — its own and the shared ``*`` lines — built on first use, so a decision never scans the
    other tenants' rules. Each (role, tenant, resource, verb) answer is then cached for the life of the
    bundle, since it depends on nothing else. A principal's roles in the tenant come from the database on
    every action, so granting or revoking a role takes effect at once.
    """

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        self._index: dict[tuple[str, str, str], list[RbacRule]] = {}
        self._by_tenant: dict[str, list[RbacRule]] = {}
        for rule in bundle.rules:
            self._index.setdefault((rule.role, rule.tenant, rule.resource), []).append(rule)
            self._by_tenant.setdefault(rule.tenant, []).append(rule)
        self._enforcers: dict[str, casbin.Enforcer] = {}
        self._role_decision = lru_cache(maxsize=262_144)(self._evaluate_role)

    def enforcer(self, tenant: str) -> casbin.Enforcer:
        """The casbin enforcer for one tenant domain (tenants without lines of their own share one)."""
        scope = tenant if tenant in self._by_tenant and tenant != "*" else "*"
        enforcer = self._enforcers.get(scope)
        if enforcer is None:
            model = casbin.Model()
            model.load_model_from_text(self.bundle.model_text)
            enforcer = casbin.Enforcer(model)
            enforcer.enable_auto_save(False)
            rules = self._by_tenant.get("*", []) + (self._by_tenant.get(scope, []) if scope != "*" else [])
            if rules:
                enforcer.add_policies([[r.role, r.tenant, r.resource, r.verb, r.effect] for r in rules])
            self._enforcers[scope] = enforcer
        return enforcer

    def _evaluate_role(self, role: str, tenant: str, resource: str, verb: str) -> RoleDecision:
        # casbin decides; the bundle's lines (same matcher) say which rule it was, for explanations.
        allowed = bool(self.enforcer(tenant).enforce(role, tenant, resource, verb))
        wanted = "allow" if allowed else "deny"
        for scope in (tenant, "*"):
            for rule in self._index.get((role, scope, resource), ()):
                if rule.effect == wanted and rule.verb in ("*", verb):
                    return RoleDecision(wanted, rule)
        if allowed:
            return RoleDecision("allow", None)
        return RoleDecision(None, None)

    def check(self, roles: Iterable[str], tenant: str, resource: str, verb: str) -> CheckResult:
        roles = sorted(roles)
        if not roles:
            return CheckResult.failed("rbac", f"the principal has no role in tenant {tenant!r}", "deny-by-default")
        unknown = [r for r in roles if r not in self.bundle.known_roles]
        allowing: list[tuple[str, RoleDecision]] = []
        for role in roles:
            if role in unknown:
                continue
            decision = self._role_decision(role, tenant, resource, verb)
            if decision.effect == "deny":
                rule = decision.rule.text if decision.rule else None
                return CheckResult.failed(
                    "rbac", f"role {role!r} is denied {resource}.{verb} in tenant {tenant!r}", rule
                )
            if decision.effect == "allow":
                allowing.append((role, decision))
        if allowing:
            role, decision = allowing[0]
            rule = decision.rule.text if decision.rule else None
            return CheckResult.passed("rbac", f"role {role!r} may {resource}.{verb}", rule)
        reason = f"none of the roles {roles} may {resource}.{verb} in tenant {tenant!r}"
        if unknown:
            reason += f" (unknown roles ignored: {unknown})"
        return CheckResult.failed("rbac", reason, "deny-by-default")
