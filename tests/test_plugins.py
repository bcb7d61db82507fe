"""The plugin contract: builtins and third-party plugins through one path; misbehaving plugins isolated."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from falaj.core import Action, ControlPlane, TokenCredential
from falaj.core.plugin import (
    HOOK_API_VERSION,
    ArtifactStore,
    StorageBackendSpec,
    create_plugin_manager,
    hookimpl,
)
from falaj.core.plugin.manager import BUILTIN_PLUGINS, module_from_object

HERE = Path(__file__).parent
EXAMPLE = HERE / "plugins" / "falaj-example-plugin"


def test_builtins_are_registered_as_plugins():
    registry = create_plugin_manager(load_entrypoints=False)
    names = {
        "local-storage",
        "static-cost",
        "local-compute",
        "onnx-serving",
        "feature-store",
        "redis-online",
        "nats-stream",
    }
    assert {p.name for p in registry.plugins.values()} == names
    assert all(p.state == "active" and p.source == "builtin" for p in registry.plugins.values())
    assert registry.backend_spec("storage", "local") is not None
    assert registry.backend_spec("cost", "rate-card") is not None
    assert registry.backend_spec("compute", "local") is not None
    assert registry.backend_spec("serving", "onnxruntime") is not None
    assert registry.backend_spec("feature_store", "parquet-offline") is not None
    assert registry.backend_spec("feature_store", "sqlite-online") is not None
    assert registry.backend_spec("feature_store", "redis-online") is not None
    assert registry.backend_spec("stream_source", "nats-jetstream") is not None
    assert len(BUILTIN_PLUGINS) == len(names)
    sources = [spec for specs in registry.pm.hook.falaj_stream_sources() for spec in specs]
    assert [s.name for s in sources] == ["nats-jetstream"] and "streaming" in sources[0].capabilities
    # Heavy frameworks are imported by the jobs and servers that need them, never by registering a plugin.
    import subprocess
    import sys

    probe = (
        "import sys; from falaj.core.plugin import create_plugin_manager; "
        "create_plugin_manager(load_entrypoints=False); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'numpy', 'pyarrow', 'duckdb', 'redis', 'nats') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_each_manager_is_fresh():
    a = create_plugin_manager(load_entrypoints=False)
    b = create_plugin_manager(load_entrypoints=False)
    assert a.pm is not b.pm and a.backends is not b.backends


def _eps(*pairs: tuple[str, str]):
    return lambda: [EntryPoint(name=n, value=v, group="falaj") for n, v in pairs]


@pytest.fixture
def misbehaving(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "plugins" / "misbehaving"))
    for name in (
        "fails_to_import",
        "hook_raises",
        "returns_garbage",
        "unknown_hook",
        "duplicate_name",
        "future_api",
        "partly_good",
    ):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("module", "fragment"),
    [
        ("fails_to_import", "import failed: ModuleNotFoundError"),
        ("hook_raises", "falaj_storage_backends raised RuntimeError: cannot reach the licence server"),
        ("returns_garbage", "falaj_compute_backends returned str, expected ComputeBackendSpec"),
        ("unknown_hook", "implements unknown hooks: falaj_teleport_models"),
        ("duplicate_name", "storage backend 'local' is already registered by 'local-storage'"),
        ("future_api", f"needs hook API version 99; this Falaj has {HOOK_API_VERSION}"),
        ("partly_good", "falaj_feature_stores returned int, expected FeatureStoreSpec"),
    ],
)
def test_a_misbehaving_plugin_is_isolated_and_reported(misbehaving, module, fragment):
    registry = create_plugin_manager(entry_point_loader=_eps((module, module)))
    info = registry.plugins[module.replace("_", "-")]
    assert info.state == "failed"
    assert fragment in info.error
    # It contributes nothing, and everything else still works.
    assert registry.backend_spec("feature_store", "half-good") is None
    assert registry.backend_spec("storage", "local") is not None
    assert registry.plugins["local-storage"].state == "active"
    assert registry.pm.get_plugin(info.name) is None


def test_all_misbehaving_plugins_at_once_leave_a_working_control_plane(misbehaving, tmp_path):
    from tests.conftest import make_world

    registry = create_plugin_manager(
        entry_point_loader=_eps(
            *[
                (m, m)
                for m in (
                    "fails_to_import",
                    "hook_raises",
                    "returns_garbage",
                    "unknown_hook",
                    "duplicate_name",
                    "future_api",
                    "partly_good",
                )
            ]
        )
    )
    failed = [p for p in registry.plugins.values() if p.state == "failed"]
    assert len(failed) == 7
    world = make_world(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", registry=registry)
    try:
        assert world.act("budget.set", {"period": "2026-12", "limit_amount": "10"}).ok
    finally:
        world.plane.close()


def test_spec_names_are_normalised_and_validated():
    spec = StorageBackendSpec(name="My_Store", factory=dict)
    assert spec.name == "my-store"
    with pytest.raises(ValueError, match="invalid plugin name"):
        StorageBackendSpec(name="no spaces please", factory=dict)
    with pytest.raises(TypeError, match="factory must be callable"):
        StorageBackendSpec(name="x", factory="not callable")


def test_duplicate_names_within_one_plugin_are_an_error():
    plugin = module_from_object(
        "twice",
        falaj_storage_backends=hookimpl(
            lambda: [StorageBackendSpec(name="s3", factory=dict), StorageBackendSpec(name="S3", factory=dict)]
        ),
    )
    registry = create_plugin_manager(load_entrypoints=False, extra=[("twice", plugin)])
    assert registry.plugins["twice"].state == "failed"
    assert "already registered" in registry.plugins["twice"].error


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """Install the example plugin distribution for real (pip, from its source folder) into a target dir."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "falaj_example_plugin").is_dir()
    assert list(target.glob("falaj_example_plugin-0.3.0.dist-info/entry_points.txt"))
    return target


def test_third_party_distribution_is_discovered_through_its_entry_point(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    registry = create_plugin_manager()
    info = registry.plugins["example"]
    assert (info.state, info.source, info.version) == ("active", "entry-point", "0.3.0")
    assert sorted(info.provides) == ["policy-check:example-naming", "storage:memory"]
    assert "falaj_after_action" in info.hooks


def test_third_party_plugin_serves_as_a_backend(installed_example, monkeypatch, tmp_path):
    from tests.conftest import make_world

    monkeypatch.syspath_prepend(str(installed_example))
    registry = create_plugin_manager()
    world = make_world(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", registry=registry)
    try:
        world.principal("eng", ["ml-engineer"])
        registered = world.act(
            "backend.register",
            {"name": "mem", "kind": "storage", "plugin": "memory", "region": "me-central-1"},
        )
        assert registered.ok, registered.message()
        from sqlalchemy import select

        from falaj.core.domain import Backend

        with world.plane.sessions() as s:
            row = s.scalar(select(Backend).where(Backend.name == "mem"))
        store = world.plane.backend_instance("operator", row)
        assert isinstance(store, ArtifactStore) and type(store).__name__ == "MemoryStore"
        info = store.put(io.BytesIO(b"weights"), tenant="operator")

        assert world.act("model.register", {"name": "churn"}, as_="eng").ok
        version = world.act(
            "model_version.register",
            {"model": "churn", "storage_backend": "mem", "artifact_digest": info.digest},
            as_="eng",
        )
        assert version.ok, version.message()
        # Its policy check takes part in decisions.
        denied = world.act("model.register", {"name": "tmp-experiment"}, as_="eng")
        assert denied.outcome == "denied"
        assert denied.decision.failures[0].rule == "example-plugin: naming rule 1"
        import falaj_example_plugin

        assert ("model_version.register", "succeeded") in falaj_example_plugin.OBSERVED
    finally:
        world.plane.close()


def test_plugins_command_lists_third_party_and_failed_plugins(installed_example, misbehaving, tmp_path):
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_example)]))
    proc = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    import json

    rows = {p["name"]: p for p in json.loads(proc.stdout)}
    assert rows["example"]["version"] == "0.3.0" and rows["example"]["state"] == "active"
    assert rows["local-storage"]["source"] == "builtin"


def test_control_plane_never_imports_a_builtin_by_name():
    import ast

    core = HERE.parent / "core"
    offenders = []
    for path in core.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("falaj.plugins", "falaj.api"))]
    assert offenders == []


def test_kernel_imports_no_web_or_ml_framework():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, falaj.core, falaj.core.pipeline, falaj.core.bootstrap\n"
                "mods = ('torch', 'onnxruntime', 'ray', 'duckdb', 'litestar', 'uvicorn')\n"
                "heavy = [m for m in mods if m in sys.modules]\n"
                "print(heavy)"
            ),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "[]", proc.stderr


def test_control_plane_is_usable_with_the_default_manager(tmp_path):
    # ControlPlane builds its own registry when none is given (entry points included).
    from falaj.core import Settings
    from falaj.core.bootstrap import initialise
    from falaj.core.keys import AuditSigner

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'd.db'}")
    boot = initialise(settings, tenant="op", display_name="Op", admin="root")
    plane = ControlPlane(settings, signer=AuditSigner.load(settings))
    try:
        r = plane.execute(
            Action("budget.set", "op", TokenCredential(boot.token), {"period": "2027-01", "limit_amount": "1"})
        )
        assert r.ok
    finally:
        plane.close()


def _impl(interface):
    methods = {name: (lambda self, *a, **k: None) for name in interface.__abstractmethods__}
    return type(f"Test{interface.__name__}", (interface,), {"__init__": lambda self, config: None, **methods})


@pytest.mark.parametrize(
    ("hook", "spec_name", "kind"),
    [
        ("falaj_storage_backends", "StorageBackendSpec", "storage"),
        ("falaj_feature_stores", "FeatureStoreSpec", "feature_store"),
        ("falaj_compute_backends", "ComputeBackendSpec", "compute"),
        ("falaj_serving_runtimes", "ServingRuntimeSpec", "serving"),
        ("falaj_cost_models", "CostModelSpec", "cost"),
    ],
)
def test_every_backend_hook_reaches_a_configured_backend(tmp_path, hook, spec_name, kind):
    import falaj.core.plugin as api
    from tests.conftest import make_world

    spec_type = getattr(api, spec_name)
    factory = _impl(spec_type.interface)
    plugin = module_from_object("kinds", **{hook: hookimpl(lambda: [spec_type(name="test-impl", factory=factory)])})
    registry = create_plugin_manager(load_entrypoints=False, extra=[("kinds", plugin)])
    assert registry.plugins["kinds"].provides == [f"{kind}:test-impl"]
    world = make_world(tmp_path, f"sqlite:///{tmp_path / 'k.db'}", registry=registry)
    try:
        result = world.act(
            "backend.register",
            {
                "name": "b1",
                "kind": kind,
                "plugin": "test-impl",
                "region": "me-central-1",
                "node_class": "gpu-cluster",
            },
        )
        assert result.ok, result.message()
        wrong_kind = "storage" if kind != "storage" else "cost"
        mismatch = world.act(
            "backend.register",
            {"name": "b2", "kind": wrong_kind, "plugin": "test-impl", "region": "me-central-1"},
        )
        assert mismatch.outcome == "failed" and f"no {wrong_kind} plugin named 'test-impl'" in mismatch.error
    finally:
        world.plane.close()
