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

    casbin evaluates each (role, tenant, resource, verb) once; the answer is cached for the life of the
    bundle, since it depends on nothing else. A principal's roles in the tenant come from the database
    on every action, so granting or revoking a role takes effect at once.
    """

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        model = casbin.Model()
        model.load_model_from_text(bundle.model_text)
        self.enforcer = casbin.Enforcer(model)
        self.enforcer.enable_auto_save(False)
        self._index: dict[tuple[str, str, str], list[RbacRule]] = {}
        for rule in bundle.rules:
            self._index.setdefault((rule.role, rule.tenant, rule.resource), []).append(rule)
        self.enforcer.add_policies([[r.role, r.tenant, r.resource, r.verb, r.effect] for r in bundle.rules])
        self._role_decision = lru_cache(maxsize=65_536)(self._evaluate_role)

    def _evaluate_role(self, role: str, tenant: str, resource: str, verb: str) -> RoleDecision:
        # casbin decides; the bundle's lines (same matcher) say which rule it was, for explanations.
        allowed = bool(self.enforcer.enforce(role, tenant, resource, verb))
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
