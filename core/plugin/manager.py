"""The plugin manager: built by a factory, never global; plugins that break are isolated and reported."""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from falaj.core.errors import PluginError
from falaj.core.plugin import hookspecs
from falaj.core.plugin.markers import HOOK_API_VERSION, PROJECT
from falaj.core.plugin.specs import BACKEND_SPEC_TYPES, BackendSpec, PolicyCheckSpec

log = logging.getLogger(__name__)

#: The builtin plugins, registered through the same path as entry-point plugins.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "falaj.plugins.local_storage",
    "falaj.plugins.static_cost",
    "falaj.plugins.local_compute",
    "falaj.plugins.onnx_serving",
    "falaj.plugins.feature_store",
    "falaj.plugins.redis_online",
    "falaj.plugins.nats_stream",
)


@dataclass
class PluginInfo:
    """What ``falaj plugins`` shows for one plugin."""

    name: str
    source: str  # builtin | entry-point | explicit
    version: str
    hooks: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)  # "storage:local", "policy-check:office-hours"
    state: str = "active"  # active | failed
    error: str | None = None


class PluginRegistry:
    """The plugins of one control plane and the backend specs and policy checks they registered."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.backends: dict[str, dict[str, BackendSpec]] = {t.kind: {} for t in BACKEND_SPEC_TYPES}
        self.backend_owner: dict[tuple[str, str], str] = {}
        self.policy_checks: list[PolicyCheckSpec] = []

    # -- registration ----------------------------------------------------------------------------------
    def register(self, module: Any, name: str, source: str, version: str) -> PluginInfo:
        info = PluginInfo(name=name, source=source, version=version)
        self.plugins[name] = info
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy raises ValueError / PluginValidationError
            self._fail(info, PluginError(name, f"registration failed: {exc}"))
            return info
        callers = self.pm.get_hookcallers(module) or []
        info.hooks = sorted(caller.name for caller in callers)
        unknown = [caller.name for caller in callers if caller.spec is None]
        if unknown:
            self._fail(info, PluginError(name, f"implements unknown hooks: {', '.join(sorted(unknown))}"))
            return info
        try:
            self._collect(module, info)
        except PluginError as exc:
            self._fail(info, exc)
        return info

    def _fail(self, info: PluginInfo, exc: PluginError) -> None:
        log.warning("%s", exc)
        info.state = "failed"
        info.error = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        # Undo whatever the plugin registered so far: a failed plugin contributes nothing.
        for kind, specs in self.backends.items():
            for spec_name in [n for n, _ in specs.items() if self.backend_owner.get((kind, n)) == info.name]:
                del specs[spec_name]
                del self.backend_owner[(kind, spec_name)]
        self.policy_checks = [c for c in self.policy_checks if getattr(c, "_owner", None) != info.name]
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)

    def _collect(self, module: Any, info: PluginInfo) -> None:
        staged_backends: list[BackendSpec] = []
        staged_checks: list[PolicyCheckSpec] = []
        for spec_type in BACKEND_SPEC_TYPES:
            for item in self._call(module, info.name, spec_type.hook):
                if not isinstance(item, spec_type):
                    raise PluginError(
                        info.name,
                        f"{spec_type.hook} returned {type(item).__name__}, expected {spec_type.__name__}",
                    )
                staged_backends.append(item)
        for item in self._call(module, info.name, "falaj_policy_checks"):
            if not isinstance(item, PolicyCheckSpec):
                raise PluginError(
                    info.name, f"falaj_policy_checks returned {type(item).__name__}, expected PolicyCheckSpec"
                )
            staged_checks.append(item)
        staged: list[BackendSpec | PolicyCheckSpec] = [*staged_backends, *staged_checks]
        for spec in staged:
            if spec.api_version > HOOK_API_VERSION:
                raise PluginError(
                    info.name,
                    f"{spec.name!r} needs hook API version {spec.api_version}; this Falaj has "
                    f"{HOOK_API_VERSION}: upgrade Falaj or use an older plugin release",
                )
        seen: set[tuple[str, str]] = set()
        for spec in staged_backends:
            key = (spec.kind, spec.name)
            if key in self.backend_owner or key in seen:
                owner = self.backend_owner.get(key, info.name)
                raise PluginError(info.name, f"{spec.kind} backend {spec.name!r} is already registered by {owner!r}")
            seen.add(key)
        existing_checks = {c.name for c in self.policy_checks}
        for check in staged_checks:
            if check.name in existing_checks:
                raise PluginError(info.name, f"policy check {check.name!r} is already registered")
            existing_checks.add(check.name)
        for spec in staged_backends:
            self.backends[spec.kind][spec.name] = spec
            self.backend_owner[(spec.kind, spec.name)] = info.name
            info.provides.append(f"{spec.kind}:{spec.name}")
        for check in staged_checks:
            object.__setattr__(check, "_owner", info.name)
            self.policy_checks.append(check)
            info.provides.append(f"policy-check:{check.name}")

    def _call(self, module: Any, plugin: str, hook_name: str) -> list[Any]:
        """Call one plugin's implementation of a registration hook, isolating its failure."""
        impl = getattr(module, hook_name, None)
        if impl is None:
            return []
        try:
            returned = impl()
        except Exception as exc:
            raise PluginError(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}") from exc
        if returned is None:
            return []
        if not isinstance(returned, Iterable) or isinstance(returned, str | bytes | dict):
            raise PluginError(plugin, f"{hook_name} returned {type(returned).__name__}, expected an iterable")
        try:
            return list(returned)
        except Exception as exc:
            raise PluginError(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}") from exc

    # -- use ---------------------------------------------------------------------------------------------
    def backend_spec(self, kind: str, plugin: str) -> BackendSpec | None:
        return self.backends.get(kind, {}).get(plugin.lower().replace("_", "-"))

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin; an observer that raises is logged and skipped."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %r failed in %s; ignored", impl.plugin_name, hook_name)


def _version_of(module: Any, dist: Any = None) -> str:
    if dist is not None:
        return str(dist.version)
    return str(getattr(module, "__version__", None) or _falaj_version())


def _falaj_version() -> str:
    from falaj.core import __version__

    return __version__


def create_plugin_manager(
    *,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    load_entrypoints: bool = True,
    extra: Iterable[tuple[str, Any]] = (),
    entry_point_loader: Callable[[], Iterable[EntryPoint]] | None = None,
) -> PluginRegistry:
    """Build a fresh plugin manager and registry.

    Builtins are imported from ``builtins`` (module names); third-party plugins come from the ``falaj``
    entry-point group; ``extra`` registers (name, module-or-object) pairs directly (tests, embedding).
    A plugin that fails to import or register is reported in the registry, never raised.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry(pm)

    for module_name in builtins:
        short = module_name.rsplit(".", 1)[-1].replace("_", "-")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            info = PluginInfo(name=short, source="builtin", version=_falaj_version())
            registry.plugins[short] = info
            registry._fail(info, PluginError(short, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        registry.register(module, short, "builtin", _falaj_version())

    if load_entrypoints:
        eps = entry_point_loader() if entry_point_loader else entry_points(group=PROJECT)
        for ep in eps:
            name = ep.name.replace("_", "-")
            if name in registry.plugins:
                info = PluginInfo(name=f"{name}@{ep.value}", source="entry-point", version="?")
                registry.plugins[info.name] = info
                registry._fail(info, PluginError(info.name, f"plugin name {name!r} is already taken"))
                continue
            try:
                module = ep.load()
            except Exception as exc:
                info = PluginInfo(name=name, source="entry-point", version=_ep_version(ep))
                registry.plugins[name] = info
                registry._fail(info, PluginError(name, f"import failed: {type(exc).__name__}: {exc}"))
                continue
            registry.register(module, name, "entry-point", _ep_version(ep))

    for name, obj in extra:
        registry.register(obj, name, "explicit", _version_of(obj))

    pm.check_pending()  # every plugin with an unknown hook was already failed and unregistered
    return registry


def _ep_version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.version) if dist is not None else "?"


def module_from_object(name: str, **hooks: Any) -> types.SimpleNamespace:
    """Make a plugin object from hook functions (handy for embedding and tests)."""
    return types.SimpleNamespace(__name__=name, **hooks)
