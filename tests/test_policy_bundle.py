"""The policy bundle: parsing errors with file and line, reload across workers, RBAC matrix, policy test."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import casbin
import pytest

from falaj.core import Action, ControlPlane, Settings, TokenCredential
from falaj.core.actions import ActionKind
from falaj.core.decision import CheckOutcome
from falaj.core.keys import AuditSigner
from falaj.core.plugin import create_plugin_manager
from falaj.core.policy import Authorizer, PolicyError, load_bundle
from falaj.core.policy.bundle import default_policy_dir
from falaj.core.policy.matrix import ROLES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target


@pytest.mark.parametrize(
    ("file", "old", "new", "line", "problem"),
    [
        # (file, text, replacement, line reported: the edited line, or the header of the table it is in)
        ("rbac_policy.csv", "p, admin, *, token, *, allow", "p, admin, *, token, *, maybe", 12, "effect must be"),
        ("rbac_policy.csv", "p, admin, *, token, *, allow", "p, wizard, *, token, *, allow", 12, "unknown role"),
        ("rbac_policy.csv", "p, admin, *, token, *, allow", "p, admin, *, token", 12, "expected 6 fields"),
        ("rbac_policy.csv", "p, admin, *, token, *, allow", "p, admin, *, principal, *, allow", 12, "repeats"),
        ("regions.toml", 'country = "BH"', 'country = "Bahrain"', 47, "ISO 3166"),
        ("residency.toml", 'health = "exception"', 'health = "maybe"', 18, "needs a rule"),
        (
            "residency.toml",
            'bases = ["adequacy", "contract", "express-consent"]   # DIFC',
            'bases = ["adequacy", "handshake"]   # DIFC',
            27,
            "unknown transfer basis 'handshake'",
        ),
        ("approvals.toml", "quorum = 2", "quorum = -1", 3, "quorum must be"),
        ("approvals.toml", 'approver_role = "approver"', 'approver_role = "boss"', 3, "unknown approver role"),
        ("consent.toml", 'consent = "filter"', 'consent = "sometimes"', 14, "must be 'filter' or 'no-filter'"),
        ("signers.toml", 'trust = "registered"', 'trust = "everyone"', 5, "trust must be"),
        ("bundle.toml", 'name = "falaj-default"', 'name = "falaj-default', 5, "not valid TOML"),
    ],
)
def test_malformed_policy_files_name_file_line_and_problem(tmp_path, file, old, new, line, problem):
    folder = bundle_copy(tmp_path)
    text = (folder / file).read_text()
    assert old in text, f"fixture drift: {old!r} not in {file}"
    (folder / file).write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyError) as err:
        load_bundle(folder)
    assert err.value.file == file
    assert err.value.line == line
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{file}:{line}: ")


def test_missing_file_is_refused(tmp_path):
    folder = bundle_copy(tmp_path)
    (folder / "regions.toml").unlink()
    with pytest.raises(PolicyError, match=re.escape("regions.toml: missing")):
        load_bundle(folder)


def test_reload_is_audited_followed_by_every_worker_and_a_bad_bundle_changes_nothing(tmp_path, database_url):
    from tests.conftest import make_world

    folder = bundle_copy(tmp_path)
    w = make_world(tmp_path, database_url, registry=create_plugin_manager(load_entrypoints=False))
    settings = Settings(home=w.settings.home, database_url=database_url, policy_dir=folder)
    first = ControlPlane(settings, signer=AuditSigner.load(settings), registry=w.plane.registry)
    second = ControlPlane(settings, signer=AuditSigner.load(settings), registry=w.plane.registry)
    try:
        w.principal("eng", ["ml-engineer"])
        tok = TokenCredential(w.tokens["eng"])
        old = first.bundle.digest
        allowed = second.execute(Action("model.register", "operator", tok, {"name": "m1"}))
        assert allowed.ok and allowed.decision.bundle_digest == old

        policy = folder / "rbac_policy.csv"
        policy.write_text(policy.read_text() + "p, ml-engineer, operator, model, register, deny\n")
        reload = first.execute(Action("policy.reload", "operator", TokenCredential(w.admin_token), {}))
        assert reload.ok, reload.message()
        new = reload.data["digest"]
        assert new != old and first.bundle.digest == new
        # The other worker follows the activated bundle (checked at most once a second).
        second.sync_bundle(force=True)
        denied = second.execute(Action("model.register", "operator", tok, {"name": "m2"}))
        assert denied.outcome == "denied" and denied.decision.bundle_digest == new
        assert "rbac_policy.csv" in denied.decision.failures[0].rule

        policy.write_text(policy.read_text() + "p, ml-engineer, *, model\n")
        bad = first.execute(Action("policy.reload", "operator", TokenCredential(w.admin_token), {}))
        assert bad.outcome == "failed" and "rbac_policy.csv:" in bad.error and "the bundle in force stays" in bad.error
        assert first.bundle.digest == new
        second.sync_bundle(force=True)
        assert second.bundle.digest == new
    finally:
        first.close()
        second.close()
        w.plane.close()


def _documented_matrix() -> dict[str, dict[str, bool]]:
    text = (DOCS / "policies.md").read_text()
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([a-z_.]+)` \| (.*) \|$", line)
        if match:
            cells = [c.strip() for c in match.group(2).split("|")]
            if len(cells) != len(ROLES):
                continue  # another table of the page
            rows[match.group(1)] = dict(zip(ROLES, [c == "✅" for c in cells], strict=True))
    return rows


def test_rbac_matrix_is_exhaustive_and_documented():
    """Every role x every action kind, in its own tenant as documented, and denied in any other tenant."""
    authorizer = Authorizer(load_bundle())
    documented = _documented_matrix()
    assert set(documented) == {k.value for k in ActionKind}
    allowed_somewhere = 0
    for kind in ActionKind:
        for role in ROLES:
            own = authorizer.check([role], "acme", kind.resource_type, kind.verb).outcome is CheckOutcome.PASS
            assert own == documented[kind.value][role], (kind.value, role)
            allowed_somewhere += own
            # In another tenant the principal has no role at all: denied, whatever it holds at home.
            other = authorizer.check([], "other-tenant", kind.resource_type, kind.verb)
            assert other.outcome is CheckOutcome.FAIL and "no role" in other.reason
    assert 40 < allowed_somewhere < len(ActionKind) * len(ROLES) / 2


def test_rbac_decisions_equal_the_plain_casbin_enforcer(tmp_path):
    """The authorizer (per-tenant enforcers, cached) gives the answer of one plain casbin enforcer holding
    every line, for random requests, tenant-specific lines included."""
    folder = bundle_copy(tmp_path)
    with (folder / "rbac_policy.csv").open("a") as fh:
        fh.write("p, ml-engineer, difc-bank, deployment, rollout, deny\np, auditor, difc-bank, budget, set, allow\n")
    bundle = load_bundle(folder)
    authorizer = Authorizer(bundle)
    enforcer = casbin.Enforcer(str(default_policy_dir() / "rbac_model.conf"))
    for r in bundle.rules:
        enforcer.add_policy(r.role, r.tenant, r.resource, r.verb, r.effect)
    rng = random.Random(7)
    kinds = list(ActionKind)
    for _ in range(2000):
        role, kind = rng.choice(ROLES), rng.choice(kinds)
        tenant = rng.choice(["acme", "difc-bank"])
        expected = enforcer.enforce(role, tenant, kind.resource_type, kind.verb)
        got = authorizer.check([role], tenant, kind.resource_type, kind.verb).outcome is CheckOutcome.PASS
        assert got == expected, (role, tenant, kind.value)
    assert not enforcer.enforce("ml-engineer", "difc-bank", "deployment", "rollout")
    assert authorizer.check(["auditor"], "difc-bank", "budget", "set").outcome is CheckOutcome.PASS
    assert authorizer.check(["auditor"], "acme", "budget", "set").outcome is CheckOutcome.FAIL


def test_policy_test_command_runs_the_shipped_cases():
    proc = subprocess.run([sys.executable, "-m", "falaj.api.cli", "policy", "test"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    passed, failed = map(int, re.match(r"^(\d+) passed, (\d+) failed$", last).groups())
    assert passed >= 60 and failed == 0


def test_policy_test_command_reports_a_failing_case(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "wrong.toml").write_text(
        '[[case]]\nname = "wrong on purpose"\nkind = "tenant.create"\nroles = ["admin"]\n'
        'expect = { verdict = "allow" }\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", "policy", "test", "--cases", str(cases)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "wrong on purpose" in proc.stdout and proc.stdout.strip().endswith("0 passed, 1 failed")


def test_every_rule_kind_is_covered_by_a_case():
    from falaj.core.policy.testing import load_cases

    cases = load_cases(default_policy_dir() / "tests")
    checks = {c.get("expect", {}).get("check") for _, c in cases}
    assert {"rbac", "residency", "consent", "signature", "approval", "ruleset"} <= checks
    verdicts = {c.get("expect", {}).get("verdict") for _, c in cases}
    assert verdicts == {"allow", "deny", "pending"}
