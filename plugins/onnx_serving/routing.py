"""Traffic split between a deployment's variants: weighted, sticky by a salted hash, shadows on the side.

Without a route key a request goes to a variant drawn by weight. With a key (``X-Falaj-Route-Key`` or
``parameters.route_key``) the point ``sha256(salt + key)`` (its first 8 bytes as a fraction of 2**64)
falls into the cumulative weights, so one key always reaches the same variant while the weights stay the
same, and keys spread over the variants in proportion to the weights. Shadow variants take no traffic of
their own: they get copies.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Routable(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def shadow(self) -> bool: ...


V = TypeVar("V", bound=Routable)

_SCALE = float(1 << 64)


def sticky_point(salt: str, key: str) -> float:
    """Where ``key`` falls in [0, 1): ``sha256(salt + key)``'s first 8 bytes over 2**64."""
    digest = hashlib.sha256((salt + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


class Router(Generic[V]):
    def __init__(self, variants: Sequence[V], salt: str, rng: random.Random | None = None) -> None:
        self.variants = list(variants)
        self.salt = salt
        self.primaries = [v for v in self.variants if not v.shadow and v.weight > 0]
        self.shadows = [v for v in self.variants if v.shadow]
        if not self.primaries:
            raise ValueError("no variant takes traffic")
        self.total = float(sum(v.weight for v in self.primaries))
        self._cumulative: list[float] = []
        running = 0.0
        for v in self.primaries:
            running += v.weight
            self._cumulative.append(running)
        self._by_label = {v.label: v for v in self.variants}
        self._random = (rng or random.Random()).random  # noqa: S311 - traffic split, not security

    def by_label(self, label: str) -> V | None:
        return self._by_label.get(label)

    def add_alias(self, alias: str, variant: V) -> None:
        self._by_label.setdefault(alias, variant)

    def choose(self, route_key: str | None = None) -> V:
        point = sticky_point(self.salt, route_key) if route_key is not None else self._random()
        index = bisect.bisect_right(self._cumulative, point * self.total)
        return self.primaries[min(index, len(self.primaries) - 1)]

    def shares(self) -> dict[str, float]:
        """The configured share of split traffic of each primary variant."""
        return {v.label: v.weight / self.total for v in self.primaries}
