"""Handlers: what each allowed action does. Importing this package registers them all."""

from falaj.core.handlers import governance, identity, resources
from falaj.core.handlers.base import (
    HANDLERS,
    Handler,
    HandlerContext,
    Outcome,
    PrincipalView,
    TenantView,
    handles,
)

__all__ = [
    "HANDLERS",
    "Handler",
    "HandlerContext",
    "Outcome",
    "PrincipalView",
    "TenantView",
    "governance",
    "handles",
    "identity",
    "resources",
]
