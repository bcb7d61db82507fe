"""The docs grow with the code: every hook has a section, the RBAC matrix matches the bundle."""

from __future__ import annotations

import inspect
from pathlib import Path

from falaj.core.actions import ActionKind
from falaj.core.plugin import hookspecs
from falaj.core.policy import load_bundle
from falaj.core.policy.matrix import markdown, read_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("falaj_")]


def test_every_hook_has_a_section_in_the_plugin_guide():
    guide = (DOCS / "plugins.md").read_text()
    missing = [h for h in hook_names() if f"### `{h}`" not in guide]
    assert missing == []
    assert len(hook_names()) == 9


def test_every_hook_is_exercised_by_a_test():
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
    assert [h for h in hook_names() if h not in tests.replace("test_docs", "")] == []


def test_every_hookspec_is_documented_in_code():
    for name in hook_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Example::" in doc and "Added in hook API version" in doc, name


def test_policy_matrix_in_docs_matches_the_bundle():
    text = (DOCS / "policies.md").read_text()
    assert markdown(load_bundle()) in text
    assert read_markdown(load_bundle()) in text


def test_api_guide_lists_every_action_kind():
    guide = (DOCS / "api.md").read_text()
    assert [k.value for k in ActionKind if f"`{k.value}`" not in guide] == []


def test_the_docs_the_guide_promises_exist():
    for name in ("architecture.md", "plugins.md", "policies.md", "api.md", "compliance.md", "benchmarks.md"):
        assert (DOCS / name).is_file(), name
