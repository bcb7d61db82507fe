"""The role x action-kind matrix of a policy bundle, as docs/policies.md shows it.

python -m falaj.core.policy.matrix        # prints the Markdown tables (actions, then reads) for the shipped bundle
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


def read_resources() -> list[str]:
    """Every RBAC resource type that a governed read (GET) checks, sorted."""
    from falaj.core.queries import SPECS

    return sorted({spec.rbac for spec in SPECS.values()} | {"report", "webhook"})


def read_matrix(bundle: PolicyBundle, tenant: str = "any-tenant") -> dict[str, dict[str, bool]]:
    """For each readable resource type, whether each role alone may read it in ``tenant``."""
    authorizer = Authorizer(bundle)
    return {
        resource: {
            role: authorizer.check([role], tenant, resource, "read").outcome is CheckOutcome.PASS for role in ROLES
        }
        for resource in read_resources()
    }


def markdown(bundle: PolicyBundle) -> str:
    rows = ["| action kind | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for kind, by_role in matrix(bundle).items():
        rows.append(f"| `{kind}` | " + " | ".join("✅" if by_role[r] else "·" for r in ROLES) + " |")
    return "\n".join(rows)


def read_markdown(bundle: PolicyBundle) -> str:
    rows = ["| read | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for resource, by_role in read_matrix(bundle).items():
        rows.append(f"| read `{resource}` | " + " | ".join("✅" if by_role[r] else "·" for r in ROLES) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown(load_bundle()))
    print()
    print(read_markdown(load_bundle()))
