"""The role x action-kind matrix of a policy bundle, as docs/policies.md shows it.

python -m falaj.core.policy.matrix        # prints the Markdown table for the shipped bundle
"""

from __future__ import annotations

from falaj.core.actions import ActionKind
from falaj.core.decision import CheckOutcome
from falaj.core.policy.bundle import PolicyBundle, load_bundle
from falaj.core.policy.rbac import Authorizer

ROLES = ("platform-admin", "platform-auditor", "admin", "ml-engineer", "data-steward", "approver", "auditor", "service")


def matrix(bundle: PolicyBundle, tenant: str = "any-tenant") -> dict[str, dict[str, bool]]:
    """For each action kind, whether each role alone is allowed it in ``tenant``."""
    authorizer = Authorizer(bundle)
    return {
        kind.value: {
            role: authorizer.check([role], tenant, kind.resource_type, kind.verb).outcome is CheckOutcome.PASS
            for role in ROLES
        }
        for kind in ActionKind
    }


def markdown(bundle: PolicyBundle) -> str:
    rows = ["| action kind | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for kind, by_role in matrix(bundle).items():
        rows.append(f"| `{kind}` | " + " | ".join("✅" if by_role[r] else "·" for r in ROLES) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown(load_bundle()))
