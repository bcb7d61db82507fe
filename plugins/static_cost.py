"""Builtin cost model: a rate card per node class, overridable in the backend's settings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from falaj.core.plugin import BackendConfig, CostEstimate, CostModel, CostModelSpec, hookimpl

# AED per hour of a node. Indicative list prices; a tenant sets its own in the backend settings.
DEFAULT_RATES = {"cpu-smb": Decimal("1.50"), "gpu-cluster": Decimal("45.00")}


class RateCardCostModel(CostModel):
    def __init__(self, config: BackendConfig) -> None:
        rates = dict(DEFAULT_RATES)
        for node_class, value in (config.settings.get("rates_per_hour") or {}).items():
            try:
                rates[str(node_class)] = Decimal(str(value))
            except InvalidOperation as exc:
                raise ValueError(f"rates_per_hour[{node_class!r}] is not a number: {value!r}") from exc
        self.rates = rates
        self.currency = str(config.settings.get("currency", "AED"))

    def estimate(self, action_kind: str, backend: BackendConfig, payload: Mapping[str, Any]) -> CostEstimate:
        rate = self.rates.get(backend.node_class)
        if rate is None:
            raise ValueError(f"no rate for node class {backend.node_class!r}")
        hours = Decimal(str(payload.get("spec", {}).get("max_hours", 1))) if isinstance(payload, Mapping) else 1
        amount = (rate * Decimal(hours)).quantize(Decimal("0.01"))
        return CostEstimate(amount, self.currency, {"rate_per_hour": str(rate), "hours": str(hours)})


@hookimpl
def falaj_cost_models() -> Iterable[CostModelSpec]:
    yield CostModelSpec(
        name="rate-card",
        factory=RateCardCostModel,
        description="Price per node-hour by node class (AED by default)",
        capabilities=frozenset({"cpu", "gpu"}),
    )
