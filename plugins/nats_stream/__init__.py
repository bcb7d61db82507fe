"""The ``nats-jetstream`` stream source: feature rows consumed from NATS JetStream, at least once.

A durable pull consumer with explicit acknowledgements: a message is acknowledged (and the server told so
synchronously) only after the handler said its effect is written, or after it was published to the dead
letter subject and JetStream confirmed it. A consumer killed mid-batch loses nothing: what it had not
acknowledged is delivered again. nats-py (the ``nats`` extra) is imported when a source is built, not when
Falaj starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from falaj.core.plugin import BackendConfig, StreamSourceSpec, hookimpl


def _source(config: BackendConfig) -> Any:
    from falaj.plugins.nats_stream.source import JetStreamSource

    return JetStreamSource(config)


@hookimpl
def falaj_stream_sources() -> Iterable[StreamSourceSpec]:
    yield StreamSourceSpec(
        name="nats-jetstream",
        factory=_source,
        description="NATS JetStream: a durable pull consumer, explicit acks, dead letters, at-least-once",
        capabilities=frozenset({"streaming"}),
    )
