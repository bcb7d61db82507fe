"""The public plugin API: hook markers, plugin specs, backend interfaces and the plugin manager.

Plugin authors import from here and nowhere else in Falaj::

    from falaj.core.plugin import hookimpl, StorageBackendSpec, ArtifactStore
"""

from falaj.core.plugin.interfaces import (
    ArtifactInfo,
    ArtifactStore,
    BackendConfig,
    ComputeBackend,
    CostEstimate,
    CostModel,
    FeatureStore,
    JobStatus,
    ServingRuntime,
)
from falaj.core.plugin.manager import PluginInfo, PluginRegistry, create_plugin_manager
from falaj.core.plugin.markers import HOOK_API_VERSION, PROJECT, hookimpl, hookspec
from falaj.core.plugin.specs import (
    BackendSpec,
    CheckContext,
    ComputeBackendSpec,
    CostModelSpec,
    FeatureStoreSpec,
    PolicyCheckSpec,
    ServingRuntimeSpec,
    StorageBackendSpec,
)

__all__ = [
    "HOOK_API_VERSION",
    "PROJECT",
    "ArtifactInfo",
    "ArtifactStore",
    "BackendConfig",
    "BackendSpec",
    "CheckContext",
    "ComputeBackend",
    "ComputeBackendSpec",
    "CostEstimate",
    "CostModel",
    "CostModelSpec",
    "FeatureStore",
    "FeatureStoreSpec",
    "JobStatus",
    "PluginInfo",
    "PluginRegistry",
    "PolicyCheckSpec",
    "ServingRuntime",
    "ServingRuntimeSpec",
    "StorageBackendSpec",
    "create_plugin_manager",
    "hookimpl",
    "hookspec",
]
