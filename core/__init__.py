"""Falaj kernel: actions, the governed pipeline, domain model, policy engine, audit log and plugin API.

The kernel imports no web framework and no ML framework; backends arrive through the plugin manager.
"""

from falaj.core.actions import Action, ActionKind, PrincipalRef, TokenCredential
from falaj.core.config import Settings
from falaj.core.decision import CheckOutcome, CheckResult, Decision, Verdict
from falaj.core.pipeline import ControlPlane, Result

__version__ = "0.1.0"

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
