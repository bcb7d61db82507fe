"""One small interface per backend kind. Backends receive only what a decision allowed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """A configured backend instance as the control plane hands it to a plugin factory.

    ``region`` is known to the control plane before it delegates, so residency is checked first.
    ``home`` is a folder the backend may use for its own state.
    """

    name: str
    plugin: str
    kind: str
    region: str
    node_class: str
    tenant: str
    home: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: The tenant's data keys (``current() -> (key_id, key)``, ``get(key_id) -> key``) for encryption at rest;
    #: bound to ``tenant``: a backend never holds another tenant's keys.
    data_keys: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    digest: str  # "sha256:<hex>"
    size: int
    uri: str
    stored_at: datetime | None = None  # when it was stored, where the store knows (garbage collection's grace)


class ArtifactStore(ABC):
    """Stores model artifacts and bundles by content address (SHA-256)."""

    @abstractmethod
    def put(self, stream: BinaryIO, *, tenant: str, expected_digest: str | None = None) -> ArtifactInfo:
        """Store the bytes read from ``stream``; refuse them if ``expected_digest`` does not match.

        Must not hold the whole artifact in memory and must leave nothing behind on failure.
        """

    @abstractmethod
    def open(self, digest: str, *, tenant: str) -> BinaryIO:
        """Open an artifact for reading; raise ``BackendError`` if its bytes no longer match ``digest``."""

    @abstractmethod
    def exists(self, digest: str, *, tenant: str) -> bool:
        """Whether the artifact is stored for ``tenant``."""

    @abstractmethod
    def delete(self, digest: str, *, tenant: str) -> None:
        """Delete an artifact. Called only by the governed ``artifact.delete`` action."""

    @abstractmethod
    def list(self, *, tenant: str) -> Iterable[ArtifactInfo]:
        """Every artifact stored for ``tenant``."""


class FeatureStore(ABC):
    """Offline and online feature storage for feature views."""

    @abstractmethod
    def apply(self, view: Mapping[str, Any]) -> None:
        """Create or update the storage for a feature view definition."""

    @abstractmethod
    def materialize(self, view: Mapping[str, Any], *, allowed_subjects: Iterable[str] | None) -> int:
        """Copy features to the online store; only ``allowed_subjects`` when given. Returns rows written."""

    @abstractmethod
    def read_online(self, view: Mapping[str, Any], keys: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Latest features for each key, in order; unknown keys answer nulls with a status."""

    @abstractmethod
    def delete_subjects(self, subject_ids: Iterable[str]) -> int:
        """Erase data subjects from every store; returns the number of rows deleted."""


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: str  # queued | running | succeeded | failed | cancelled
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""
    #: What a finished job produced, e.g. ``artifact_path`` (a folder, complete or absent), ``lineage``
    #: (seed, code digest, package versions, dataset digests), ``log_path``, ``started_at``, ``finished_at``.
    outputs: Mapping[str, Any] = field(default_factory=dict)


class ComputeBackend(ABC):
    """Runs training jobs away from the control plane process."""

    @abstractmethod
    def submit(self, job: Mapping[str, Any]) -> str:
        """Start a job (spec, allowed inputs, limits); return a handle for status and cancel."""

    @abstractmethod
    def status(self, handle: str) -> JobStatus:
        """Current state of a job."""

    @abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop a job; it ends as cancelled and leaves no partial model."""


class ServingRuntime(ABC):
    """Serves verified model artifacts over the Open Inference Protocol."""

    @abstractmethod
    def deploy(self, deployment: Mapping[str, Any]) -> str:
        """Start serving a deployment (verified artifacts, traffic split); return its endpoint URL."""

    @abstractmethod
    def undeploy(self, name: str) -> None:
        """Stop serving a deployment."""

    @abstractmethod
    def status(self, name: str) -> str:
        """``ready``, ``starting``, ``stopped`` or ``failed``."""


@dataclass(frozen=True, slots=True)
class CostEstimate:
    amount: Decimal
    currency: str = "AED"
    details: Mapping[str, Any] = field(default_factory=dict)


class CostModel(ABC):
    """Prices actions on a backend, for budgets and reports."""

    @abstractmethod
    def estimate(self, action_kind: str, backend: BackendConfig, payload: Mapping[str, Any]) -> CostEstimate:
        """The expected cost of running ``action_kind`` with ``payload`` on ``backend``."""
