"""Packaging: core/, api/, plugins/ install as one import package `falaj`, editable and as a wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for prefix, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    assert found == listed


def test_top_level_layout_is_the_design_cards():
    for name in (
        "pyproject.toml",
        "core",
        "plugins",
        "policies",
        "migrations",
        "api",
        "tests",
        "docs",
        "README.md",
    ):
        assert (ROOT / name).exists(), name


def test_wheel_contains_the_falaj_package_with_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("falaj-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "falaj/core/pipeline.py",
        "falaj/api/cli/main.py",
        "falaj/plugins/local_storage.py",
        "falaj/policies/rbac_model.conf",
        "falaj/policies/rbac_policy.csv",
        "falaj/migrations/env.py",
        "falaj/migrations/script.py.mako",
    ):
        assert expected in names, expected
    assert any(n.startswith("falaj/migrations/versions/") for n in names)
    assert not any(n.startswith(("core/", "api/", "plugins/", "tests/")) for n in names)

    # Installed from the wheel alone (no source tree on the path), it initialises an installation.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import falaj.core, falaj.core.bootstrap as b, pathlib\n"
        "assert falaj.core.__file__.startswith(sys.argv[1]), falaj.core.__file__\n"
        "from falaj.core import Settings\n"
        "s = Settings(home=pathlib.Path(sys.argv[2]), database_url='sqlite:///' + sys.argv[2] + '/x.db')\n"
        "print(b.initialise(s, tenant='op', display_name='Op', admin='a').tenant)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, str(target), str(tmp_path / "home")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "op"
