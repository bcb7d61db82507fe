"""Hook specifications. Every hook is documented in docs/plugins.md (a test checks it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falaj.core.plugin.markers import hookspec
from falaj.core.plugin.specs import (
    ComputeBackendSpec,
    CostModelSpec,
    FeatureStoreSpec,
    PolicyCheckSpec,
    ServingRuntimeSpec,
    StorageBackendSpec,
    StreamSourceSpec,
)


@hookspec
def falaj_storage_backends() -> Iterable[StorageBackendSpec]:  # type: ignore[empty-body]
    """Register artifact storage backends.

    :return: an iterable of :class:`StorageBackendSpec`, each with a unique name.

    Example::

        @hookimpl
        def falaj_storage_backends():
            yield StorageBackendSpec(name="s3", factory=S3Store, capabilities={"s3"})

    Added in hook API version 1.
    """


@hookspec
def falaj_feature_stores() -> Iterable[FeatureStoreSpec]:  # type: ignore[empty-body]
    """Register feature store backends (offline and online stores).

    :return: an iterable of :class:`FeatureStoreSpec`.

    Example::

        @hookimpl
        def falaj_feature_stores():
            yield FeatureStoreSpec(name="redis-online", factory=RedisStore, capabilities={"online"})

    Added in hook API version 1.
    """


@hookspec
def falaj_stream_sources() -> Iterable[StreamSourceSpec]:  # type: ignore[empty-body]
    """Register streaming sources that feed feature views (message brokers, change streams).

    :return: an iterable of :class:`StreamSourceSpec`.

    Example::

        @hookimpl
        def falaj_stream_sources():
            yield StreamSourceSpec(name="nats-jetstream", factory=JetStreamSource, capabilities={"streaming"})

    Added in hook API version 1.
    """


@hookspec
def falaj_compute_backends() -> Iterable[ComputeBackendSpec]:  # type: ignore[empty-body]
    """Register training compute backends (local processes, Ray clusters, GPU nodes).

    :return: an iterable of :class:`ComputeBackendSpec`.

    Example::

        @hookimpl
        def falaj_compute_backends():
            yield ComputeBackendSpec(name="ray", factory=RayCompute, capabilities={"gpu"})

    Added in hook API version 1.
    """


@hookspec
def falaj_serving_runtimes() -> Iterable[ServingRuntimeSpec]:  # type: ignore[empty-body]
    """Register model serving runtimes.

    :return: an iterable of :class:`ServingRuntimeSpec`.

    Example::

        @hookimpl
        def falaj_serving_runtimes():
            yield ServingRuntimeSpec(name="onnxruntime", factory=OrtRuntime, capabilities={"cpu"})

    Added in hook API version 1.
    """


@hookspec
def falaj_cost_models() -> Iterable[CostModelSpec]:  # type: ignore[empty-body]
    """Register cost models that price actions on backends.

    :return: an iterable of :class:`CostModelSpec`.

    Example::

        @hookimpl
        def falaj_cost_models():
            yield CostModelSpec(name="rate-card", factory=RateCard)

    Added in hook API version 1.
    """


@hookspec
def falaj_policy_checks() -> Iterable[PolicyCheckSpec]:  # type: ignore[empty-body]
    """Add policy checks to the pipeline; they run after authorization on every action they apply to.

    :return: an iterable of :class:`PolicyCheckSpec`.

    Example::

        @hookimpl
        def falaj_policy_checks():
            yield PolicyCheckSpec(name="office-hours", check=only_in_office_hours,
                                  kinds={"deployment.rollout"})

    Added in hook API version 1.
    """


@hookspec
def falaj_before_action(kind: str, tenant: str, principal: str, resource: str, verdict: str) -> None:
    """Observe a decided action before it is delegated to a backend (denials included).

    :param kind: the action kind, e.g. ``"dataset.register"``.
    :param tenant: the tenant slug.
    :param principal: the principal name (never a token).
    :param resource: the resource the action targets, e.g. ``"dataset/customers"``.
    :param verdict: ``allow``, ``deny`` or ``pending``.

    Observers cannot change the decision and their exceptions are logged, not raised.

    Example::

        @hookimpl
        def falaj_before_action(kind, verdict):
            metrics.decisions.labels(kind, verdict).inc()

    Added in hook API version 1.
    """


@hookspec
def falaj_after_action(
    kind: str,
    tenant: str,
    principal: str,
    resource: str,
    outcome: str,
    audit_seq: int | None,
    result: dict[str, Any],
) -> None:
    """Observe an action after its transaction committed.

    :param outcome: ``succeeded``, ``failed``, ``denied`` or ``pending``.
    :param audit_seq: the sequence number of its audit event.
    :param result: what the handler returned (identifiers, never secrets).

    Example::

        @hookimpl
        def falaj_after_action(kind, outcome, audit_seq):
            siem.send({"kind": kind, "outcome": outcome, "audit_seq": audit_seq})

    Added in hook API version 1.
    """
