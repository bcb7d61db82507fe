"""The public plugin API: hook markers, plugin specs, backend interfaces and the plugin manager.

Plugin authors import from here and nowhere else in Falaj::

    from falaj.core.plugin import hookimpl, StorageBackendSpec, ArtifactStore
"""

from falaj.core.plugin.interfaces import (
    FEATURE_DTYPES,
    RESERVED_COLUMNS,
    ArtifactInfo,
    ArtifactStore,
    BackendConfig,
    ComputeBackend,
    CostEstimate,
    CostModel,
    FeatureStore,
    FeatureViewDef,
    JobStatus,
    OfflineFeatureStore,
    OnlineFeatureStore,
    OnlineRow,
    PushResult,
    ServingRuntime,
    StreamHandler,
    StreamMessage,
    StreamSource,
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
    StreamSourceSpec,
)

__all__ = [
    "FEATURE_DTYPES",
    "HOOK_API_VERSION",
    "PROJECT",
    "RESERVED_COLUMNS",
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
    "FeatureViewDef",
    "JobStatus",
    "OfflineFeatureStore",
    "OnlineFeatureStore",
    "OnlineRow",
    "PluginInfo",
    "PluginRegistry",
    "PolicyCheckSpec",
    "PushResult",
    "ServingRuntime",
    "ServingRuntimeSpec",
    "StorageBackendSpec",
    "StreamHandler",
    "StreamMessage",
    "StreamSource",
    "StreamSourceSpec",
    "create_plugin_manager",
    "hookimpl",
    "hookspec",
]
