"""Handlers: what each allowed action does. Importing this package registers them all."""

from falaj.core.handlers import features, governance, identity, integration, lifecycle, privacy, resources
from falaj.core.handlers.base import (
    HANDLERS,
    PENDING_HANDLERS,
    Handler,
    HandlerContext,
    Outcome,
    PrincipalView,
    TenantView,
    handles,
)

__all__ = [
    "HANDLERS",
    "PENDING_HANDLERS",
    "Handler",
    "HandlerContext",
    "Outcome",
    "PrincipalView",
    "TenantView",
    "features",
    "governance",
    "handles",
    "identity",
    "integration",
    "lifecycle",
    "privacy",
    "resources",
]
