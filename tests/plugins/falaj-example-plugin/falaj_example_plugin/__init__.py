"""An example third-party plugin: a memory artifact store, a policy check and an action observer."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import BinaryIO

from falaj.core.decision import CheckResult
from falaj.core.errors import BackendError
from falaj.core.plugin import (
    ArtifactInfo,
    ArtifactStore,
    BackendConfig,
    CheckContext,
    PolicyCheckSpec,
    StorageBackendSpec,
    hookimpl,
)

__version__ = "0.3.0"

OBSERVED: list[tuple[str, str]] = []


class MemoryStore(ArtifactStore):
    """Keeps artifacts in a dict; ``fail_on_put`` in settings makes every put raise (for tests)."""

    def __init__(self, config: BackendConfig) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.fail_on_put = bool(config.settings.get("fail_on_put", False))

    def put(self, stream: BinaryIO, *, tenant: str, expected_digest: str | None = None) -> ArtifactInfo:
        if self.fail_on_put:
            raise BackendError("memory store is configured to fail")
        data = stream.read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected_digest and expected_digest != digest:
            raise BackendError("digest mismatch")
        self.blobs[(tenant, digest)] = data
        return ArtifactInfo(digest=digest, size=len(data), uri=f"memory://{tenant}/{digest}")

    def open(self, digest: str, *, tenant: str) -> BinaryIO:
        return io.BytesIO(self.blobs[(tenant, digest)])

    def exists(self, digest: str, *, tenant: str) -> bool:
        return (tenant, digest) in self.blobs

    def delete(self, digest: str, *, tenant: str) -> None:
        self.blobs.pop((tenant, digest), None)

    def list(self, *, tenant: str) -> Iterable[ArtifactInfo]:
        return [ArtifactInfo(d, len(b), f"memory://{t}/{d}") for (t, d), b in self.blobs.items() if t == tenant]


def no_test_names_in_production(ctx: CheckContext) -> CheckResult:
    """Refuses models whose name starts with ``tmp-`` (a house rule of the example company)."""
    name = str(ctx.payload.get("name", ""))
    if name.startswith("tmp-"):
        return CheckResult.failed(
            "example-naming",
            f"model name {name!r} uses the reserved prefix 'tmp-'",
            "example-plugin: naming rule 1",
        )
    return CheckResult.passed("example-naming", "model name is acceptable", "example-plugin: naming rule 1")


@hookimpl
def falaj_storage_backends() -> Iterable[StorageBackendSpec]:
    yield StorageBackendSpec(
        name="memory",
        factory=MemoryStore,
        description="in-memory store (example)",
        capabilities=frozenset({"cpu"}),
    )


@hookimpl
def falaj_policy_checks() -> Iterable[PolicyCheckSpec]:
    yield PolicyCheckSpec(name="example-naming", check=no_test_names_in_production, kinds=frozenset({"model.register"}))


@hookimpl
def falaj_after_action(kind: str, outcome: str) -> None:
    OBSERVED.append((kind, outcome))
