"""Falaj kernel: actions, the governed pipeline, domain model, policy engine, audit log and plugin API.

The kernel imports no web framework and no ML framework; backends arrive through the plugin manager.
Names are imported on first use, so a command that needs only the audit log starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Action": "falaj.core.actions",
    "ActionKind": "falaj.core.actions",
    "PrincipalRef": "falaj.core.actions",
    "TokenCredential": "falaj.core.actions",
    "Settings": "falaj.core.config",
    "CheckOutcome": "falaj.core.decision",
    "CheckResult": "falaj.core.decision",
    "Decision": "falaj.core.decision",
    "Verdict": "falaj.core.decision",
    "ControlPlane": "falaj.core.pipeline",
    "Result": "falaj.core.pipeline",
}

if TYPE_CHECKING:
    from falaj.core.actions import Action, ActionKind, PrincipalRef, TokenCredential
    from falaj.core.config import Settings
    from falaj.core.decision import CheckOutcome, CheckResult, Decision, Verdict
    from falaj.core.pipeline import ControlPlane, Result


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'falaj.core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Action",
    "ActionKind",
    "CheckOutcome",
    "CheckResult",
    "ControlPlane",
    "Decision",
    "PrincipalRef",
    "Result",
    "Settings",
    "TokenCredential",
    "Verdict",
    "__version__",
]
