from falaj.core.plugin import StorageBackendSpec, hookimpl
from falaj.plugins.local_storage import LocalArtifactStore


@hookimpl
def falaj_storage_backends():
    yield StorageBackendSpec(name="local", factory=LocalArtifactStore)
