"""Policy: the bundle (policy as data), RBAC with tenants, and the kernel's own checks."""

from falaj.core.policy.bundle import PolicyBundle, PolicyError, load_bundle
from falaj.core.policy.rbac import Authorizer

__all__ = ["Authorizer", "PolicyBundle", "PolicyError", "load_bundle"]
