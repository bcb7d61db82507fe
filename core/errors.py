"""Errors raised by the kernel. Each says what was wrong and what to do."""

from __future__ import annotations


class FalajError(Exception):
    """Base of all Falaj errors."""


class ConfigurationError(FalajError):
    """The installation is not set up as needed (missing keys, bad settings)."""


class ValidationError(FalajError):
    """Input was malformed; the message names the field."""


class NotFoundError(FalajError):
    """A named resource does not exist in the tenant."""


class ConflictError(FalajError):
    """The action conflicts with the current state (a duplicate name, a finished request)."""


class CheckDenied(FalajError):
    """A handler found the action may not go on (data that fails its expectations, say): the action is
    recorded as *denied*, with one failed ``check`` per reason, and nothing it wrote survives."""

    def __init__(self, check: str, reasons: list[str], rule: str | None = None) -> None:
        super().__init__(f"{check}: " + "; ".join(reasons))
        self.check = check
        self.reasons = reasons
        self.rule = rule


class BackendError(FalajError):
    """A backend plugin failed or answered something the kernel cannot use."""


class PluginError(FalajError):
    """A plugin could not be loaded or registered; it is isolated, the kernel carries on."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class ReadDenied(FalajError):
    """A read was refused: ``check`` names the failing check (tenant, authenticate, rbac); it was audited."""

    def __init__(self, check: str, reason: str, audit_seq: int | None = None) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason
        self.audit_seq = audit_seq
