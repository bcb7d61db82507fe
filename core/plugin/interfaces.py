"""One small interface per backend kind. Backends receive only what a decision allowed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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


#: Column types a feature view may declare, and the Arrow types stores keep them as.
FEATURE_DTYPES: tuple[str, ...] = ("int64", "float64", "string", "bool", "timestamp")
#: Columns every store keeps beside a view's join keys and features (names are reserved in views):
#: ``event_ts`` (when the values were true, UTC), ``created_ts`` (when they were written; breaks ties,
#: may be null), ``event_id`` (a unique id per row: writes are idempotent by it) and ``subject_id``
#: (the data subject the row is about, or null: erasure and consent act on it).
RESERVED_COLUMNS: tuple[str, ...] = ("event_ts", "created_ts", "event_id", "subject_id")


@dataclass(frozen=True, slots=True)
class FeatureViewDef:
    """One version of a feature view, as a store sees it: names and types only, no governance.

    Tables handed to and returned by stores are ``pyarrow.Table`` objects whose columns are the join keys,
    the features and the reserved columns, with the types of :data:`FEATURE_DTYPES` (timestamps as
    ``timestamp("us", tz="UTC")``).
    """

    tenant: str
    name: str
    version: int
    join_keys: tuple[tuple[str, str], ...]  # (column, dtype), in entity order
    features: tuple[tuple[str, str], ...]  # (column, dtype)
    ttl_seconds: int | None = None

    @property
    def table_id(self) -> str:
        """A name for this version's storage, unique within the tenant: ``<name>__v<version>``."""
        return f"{self.name}__v{self.version}"

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.features)


@dataclass(frozen=True, slots=True)
class PushResult:
    written: int  # rows whose event id was new
    duplicates: int  # rows whose event id was already stored (nothing changed)


@dataclass(frozen=True, slots=True)
class OnlineRow:
    """One entity key's answer from an online store: ``values`` is None when the key is unknown."""

    values: Mapping[str, Any] | None
    event_ts: datetime | None = None
    created_ts: datetime | None = None
    subject_id: str | None = None  # the row's data subject: reads are withheld without consent


class FeatureStore(ABC):
    """What every feature store backend does, offline or online. Its spec's capabilities say which."""

    @abstractmethod
    def apply(self, view: FeatureViewDef) -> None:
        """Create (or keep) the storage for one version of a feature view. Idempotent."""

    @abstractmethod
    def delete_subjects(self, tenant: str, subject_ids: Iterable[str]) -> int:
        """Erase every row whose ``subject_id`` is one of ``subject_ids`` from every view of ``tenant``.

        Durable when it returns; returns the number of rows deleted (0 is an answer, not an error).
        """

    @abstractmethod
    def count_subject(self, tenant: str, subject_id: str) -> int:
        """How many rows of ``tenant`` still hold ``subject_id`` (an erasure is verified with this)."""


class OfflineFeatureStore(FeatureStore):
    """History of feature values, for point-in-time-correct training data (capability ``offline``)."""

    @abstractmethod
    def write_source(self, view: FeatureViewDef, table: Any, *, source_digest: str) -> int:
        """Replace the rows that came from the view's source dataset with ``table``, atomically.

        Writing the same ``source_digest`` again changes nothing. Pushed rows are kept. Returns row count.
        """

    @abstractmethod
    def push(self, view: FeatureViewDef, table: Any) -> PushResult:
        """Append pushed rows (``event_id`` set on each). Durable when it returns; a row whose event id is
        already stored is skipped, so a redelivered batch changes nothing."""

    @abstractmethod
    def scan(self, view: FeatureViewDef) -> Any:
        """Every effective row (source and pushed) of the view, one per event id."""

    @abstractmethod
    def latest(
        self,
        view: FeatureViewDef,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        allowed_subjects: Collection[str] | None = None,
    ) -> Any:
        """Per join key, the row with the greatest (``event_ts``, ``created_ts``) among rows with
        ``start <= event_ts < end`` (open bounds when None); rows of subjects not in ``allowed_subjects``
        (when given) are left out first. For materialization."""

    @abstractmethod
    def historical(
        self,
        requests: Sequence[tuple[FeatureViewDef, Sequence[str]]],
        entity_rows: Any,
        *,
        timestamp_column: str = "event_timestamp",
        allowed_subjects: Collection[str] | None = None,
        full_feature_names: bool = False,
    ) -> Any:
        """Point-in-time-correct join: for each entity row and each (view, features) request, the latest
        row with the same join keys and ``event_ts <= row[timestamp_column]`` and, when the view has a TTL,
        ``event_ts >= row[timestamp_column] - ttl``; ties on ``event_ts`` go to the latest ``created_ts``.
        Every entity row is returned, in order (no match: nulls; duplicates: all kept); naive timestamps
        are UTC. Feature rows of subjects not in ``allowed_subjects`` (when given) never match. Output
        columns: the entity columns, then each feature as ``feature`` (or ``<view>__<feature>`` when
        ``full_feature_names``)."""


class OnlineFeatureStore(FeatureStore):
    """Latest feature values per entity key, for serving (capability ``online``)."""

    @abstractmethod
    def write(self, view: FeatureViewDef, table: Any) -> int:
        """Upsert rows: a key's stored row is replaced only by a row with a greater (``event_ts``,
        ``created_ts``), so writing a batch twice, or an older batch after a newer one, changes nothing.
        Durable when it returns. Returns the number of keys whose row changed."""

    @abstractmethod
    def read(
        self, view: FeatureViewDef, keys: Sequence[tuple[Any, ...]], features: Sequence[str] | None = None
    ) -> list[OnlineRow]:
        """One answer per key, in order (a key is a tuple of join key values in entity order)."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One message from a stream, as a stream source hands it to the control plane."""

    data: bytes
    subject: str
    message_id: str  # the transport's id (stream sequence), for logs and dead letters
    delivery: int = 1  # 1 on first delivery, more on redelivery


#: What the control plane answers for each message of a batch: None when the message's effect is durably
#: written (acknowledge it), or the reason it can never be written (dead-letter it with that reason, then
#: acknowledge). Raising instead means "try again later": acknowledge nothing of the batch.
StreamHandler = Callable[[Sequence[StreamMessage]], Sequence[str | None]]


class StreamSource(ABC):
    """Consumes a stream of feature rows (capability ``streaming``), at least once, for one feature view."""

    @abstractmethod
    def consume(self, subscription: Mapping[str, Any], handler: StreamHandler, stop: Any) -> None:
        """Run until ``stop`` (a ``threading.Event``) is set: fetch batches of messages for
        ``subscription`` (``name``: a durable consumer name, ``subject``: what to consume, ``batch``,
        ``dead_letter_subject``), hand each batch to ``handler``, acknowledge a message only after the
        handler said it is written or dead-lettered it. A message whose handler raised is redelivered."""


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
