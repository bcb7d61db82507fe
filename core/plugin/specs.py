"""Typed plugin descriptions returned by the registration hooks."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from falaj.core.decision import CheckResult
from falaj.core.plugin.interfaces import (
    ArtifactStore,
    BackendConfig,
    ComputeBackend,
    CostModel,
    FeatureStore,
    ServingRuntime,
    StreamSource,
)
from falaj.core.plugin.markers import HOOK_API_VERSION

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def normalise_name(name: str) -> str:
    """Plugin names are lower case with ``-``; ``Local_Storage`` and ``local-storage`` are one name."""
    normalised = name.strip().lower().replace("_", "-")
    if not _NAME.match(normalised):
        raise ValueError(f"invalid plugin name {name!r}: use letters, digits, '-' (max 63 characters)")
    return normalised


@dataclass(frozen=True)
class BackendSpec:
    """What a backend plugin provides: a name, a factory and its capabilities.

    ``factory(config)`` returns an object implementing the kind's interface. ``capabilities`` tells the
    control plane where the backend may be scheduled (``cpu``, ``gpu``, ``streaming``, ``s3`` ...).
    """

    name: str
    factory: Callable[[BackendConfig], Any]
    description: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)
    api_version: int = HOOK_API_VERSION

    kind: ClassVar[str] = ""
    interface: ClassVar[type]
    hook: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalise_name(self.name))
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        if not callable(self.factory):
            raise TypeError(f"{type(self).__name__} {self.name!r}: factory must be callable")
        if not isinstance(self.api_version, int) or self.api_version < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: api_version must be a positive int")


@dataclass(frozen=True)
class StorageBackendSpec(BackendSpec):
    kind: ClassVar[str] = "storage"
    interface: ClassVar[type] = ArtifactStore
    hook: ClassVar[str] = "falaj_storage_backends"


@dataclass(frozen=True)
class FeatureStoreSpec(BackendSpec):
    kind: ClassVar[str] = "feature_store"
    interface: ClassVar[type] = FeatureStore
    hook: ClassVar[str] = "falaj_feature_stores"


@dataclass(frozen=True)
class ComputeBackendSpec(BackendSpec):
    kind: ClassVar[str] = "compute"
    interface: ClassVar[type] = ComputeBackend
    hook: ClassVar[str] = "falaj_compute_backends"


@dataclass(frozen=True)
class ServingRuntimeSpec(BackendSpec):
    kind: ClassVar[str] = "serving"
    interface: ClassVar[type] = ServingRuntime
    hook: ClassVar[str] = "falaj_serving_runtimes"


@dataclass(frozen=True)
class CostModelSpec(BackendSpec):
    kind: ClassVar[str] = "cost"
    interface: ClassVar[type] = CostModel
    hook: ClassVar[str] = "falaj_cost_models"


@dataclass(frozen=True)
class StreamSourceSpec(BackendSpec):
    kind: ClassVar[str] = "stream_source"
    interface: ClassVar[type] = StreamSource
    hook: ClassVar[str] = "falaj_stream_sources"


BACKEND_SPEC_TYPES: tuple[type[BackendSpec], ...] = (
    StorageBackendSpec,
    FeatureStoreSpec,
    ComputeBackendSpec,
    ServingRuntimeSpec,
    CostModelSpec,
    StreamSourceSpec,
)


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a policy check sees of an action that has been authenticated and validated.

    ``session`` is the action's database session, for reading only: a check that writes is a bug.
    ``backend`` is the target backend, when the action delegates to one, already resolved.
    """

    kind: str
    tenant: str
    ruleset: str
    principal: str
    principal_kind: str
    roles: frozenset[str]
    resource: str
    payload: Mapping[str, Any]
    bundle: Any
    backend: BackendConfig | None = None
    session: Any = None


@dataclass(frozen=True)
class PolicyCheckSpec:
    """A policy check a plugin adds to every decision (or to the action kinds it names).

    ``check(ctx)`` returns a ``CheckResult``; anything else, or an exception, counts as a failed check:
    a check that cannot decide denies.
    """

    name: str
    check: Callable[[CheckContext], CheckResult]
    kinds: frozenset[str] | None = None
    description: str = ""
    api_version: int = HOOK_API_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalise_name(self.name))
        if self.kinds is not None:
            object.__setattr__(self, "kinds", frozenset(self.kinds))
        if not callable(self.check):
            raise TypeError(f"policy check {self.name!r}: check must be callable")

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds
