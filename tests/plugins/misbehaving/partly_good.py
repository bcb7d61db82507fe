"""Registers one good backend, then a garbage one: the plugin fails whole, the good one is withdrawn."""

from falaj.core.plugin import FeatureStoreSpec, hookimpl


@hookimpl
def falaj_feature_stores():
    yield FeatureStoreSpec(name="half-good", factory=lambda config: None)
    yield 42
