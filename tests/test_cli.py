"""The `falaj` command line, run as a real process against a real installation."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from falaj.api.cli import cli


def run(args, home: Path, *, token: str | None = None, check: bool = False, url: str | None = None):
    env = dict(os.environ, FALAJ_HOME=str(home))
    env.pop("FALAJ_DATABASE_URL", None)
    if url:
        env["FALAJ_DATABASE_URL"] = url
    if token:
        env["FALAJ_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [(), *all_commands(cli)], ids=lambda p: " ".join(p) or "falaj")
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


@pytest.fixture
def installed(tmp_path):
    home = tmp_path / "home"
    proc = run(["init", "--tenant", "acme", "--admin", "root", "--json"], home, check=True)
    info = json.loads(proc.stdout)
    assert info["token"].startswith("flj_")
    return home, info["token"]


def test_init_creates_everything_and_prints_the_token_once(installed):
    home, token = installed
    assert (home / "falaj.db").exists()
    assert oct((home / "keys" / "master.key").stat().st_mode & 0o777) == "0o600"
    key_pem = (home / "keys" / "audit-ed25519.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem  # encrypted at rest
    db = sqlite3.connect(home / "falaj.db")
    stored = [r[0] for r in db.execute("select secret_hash from api_tokens")]
    assert token.split("_", 2)[2] not in "".join(stored)
    assert not any(token in line for line in db.iterdump())
    again = run(["init", "--tenant", "acme"], home)
    assert again.returncode == 1 and "already initialised" in again.stderr


def test_init_refuses_a_bad_tenant_slug(tmp_path):
    proc = run(["init", "--tenant", "Not A Slug"], tmp_path / "h")
    assert proc.returncode == 1 and "invalid tenant" in proc.stderr


def test_do_and_audit_verify_and_tamper(installed):
    home, token = installed
    ok = run(
        [
            "do",
            "principal.create",
            "--tenant",
            "acme",
            "--payload",
            '{"name": "eng", "roles": ["ml-engineer"]}',
        ],
        home,
        token=token,
    )
    assert ok.returncode == 0 and "succeeded" in ok.stdout
    denied = run(["do", "tenant.create", "--tenant", "acme", "--payload", '{"slug": "x"}'], home, token=token)
    assert denied.returncode == 1 and "display_name" in denied.stdout
    missing = run(["do", "budget.set", "--tenant", "acme"], home)
    assert missing.returncode == 2 and "API token is needed" in missing.stderr
    not_json = run(["do", "budget.set", "--tenant", "acme", "--payload", "{nope"], home, token=token)
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr

    verified = run(["audit", "verify", "--json"], home)
    assert verified.returncode == 0
    assert json.loads(verified.stdout.splitlines()[-1])["events"] == 5

    db = sqlite3.connect(home / "falaj.db")
    db.execute("update audit_events set resource = 'principal/mallory' where seq = 4")
    db.commit()
    db.close()
    tampered = run(["audit", "verify"], home)
    assert tampered.returncode == 1 and "first bad seq 4" in tampered.stdout


def test_audit_export_is_governed_and_verifiable(installed, tmp_path):
    home, token = installed
    out = tmp_path / "evidence"
    refused = run(["audit", "export", "--tenant", "acme", "--out", str(out), "--token", "flj_000000000000_x"], home)
    assert refused.returncode == 1 and "unknown API token" in refused.stdout
    assert not out.exists()
    exported = run(["audit", "export", "--tenant", "acme", "--out", str(out)], home, token=token)
    assert exported.returncode == 0, exported.stdout
    offline = run(["audit", "verify", "--export", str(out)], home)
    assert offline.returncode == 0 and "OK" in offline.stdout


def test_policy_explain_prints_every_check(installed):
    home, token = installed
    proc = run(
        [
            "policy",
            "explain",
            "tenant.create",
            "--tenant",
            "acme",
            "--payload",
            '{"slug": "b", "display_name": "B"}',
        ],
        home,
        token=token,
    )
    assert proc.returncode == 0
    for word in ("authenticate", "payload", "rbac", "platform-admin"):
        assert word in proc.stdout


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_cli_on_postgres(tmp_path, database_url):
    home = tmp_path / "pg"
    info = json.loads(run(["init", "--json"], home, url=database_url, check=True).stdout)
    ok = run(
        [
            "do",
            "budget.set",
            "--tenant",
            "operator",
            "--payload",
            '{"period": "2027-02", "limit_amount": "3"}',
        ],
        home,
        token=info["token"],
        url=database_url,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert run(["audit", "verify"], home, url=database_url).returncode == 0


@pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("torch", "onnxruntime", "onnxscript", "sklearn")),
    reason="the demo's model journey needs the ml extra: pip install -e '.[ml]'",
)
def test_demo_runs_the_whole_journey(tmp_path):
    """The README's main job, as a user runs it: exit 0, and every step of the journey in its summary."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FALAJ_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("FALAJ_DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", "demo"], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = " ".join(run.stdout.split())
    for fragment in (
        "withdrawn patients excluded",
        "the requester can never approve their own request",
        "live on ONNX Runtime in me-central-1 after 2 approvals",
        "deploy to Ireland (eu-west-1)",
        "the runtime refuses to load them",
        "signatures verified",
        "detected: first bad seq",
    ):
        assert fragment in out, fragment
    assert "skipped" not in out


def test_features_commands_apply_materialize_push_and_read(installed, tmp_path):
    """`falaj features`: a TOML definitions file applied (then re-applied: unchanged), materialized, pushed to,
    read online and historically; a bad definition stops with its reason."""
    pytest.importorskip("duckdb", reason="the feature store needs the 'features' extra")
    home, token = installed
    for name, plugin in (("offline", "parquet-offline"), ("online", "sqlite-online")):
        body = json.dumps({"name": name, "kind": "feature_store", "plugin": plugin, "region": "me-central-1"})
        run(["do", "backend.register", "--tenant", "acme", "--payload", body], home, token=token, check=True)
    run(
        ["do", "principal.create", "--tenant", "acme", "--payload", '{"name": "eng", "roles": ["ml-engineer"]}'],
        home,
        token=token,
        check=True,
    )
    issued = run(["do", "token.issue", "--tenant", "acme", "--payload", '{"principal": "eng"}'], home, token=token)
    eng = issued.stdout.strip().splitlines()[-1]
    data = home / "data" / "acme"
    data.mkdir(parents=True)
    (data / "rates.csv").write_text("pair,event_timestamp,rate\nAEDUSD,2026-11-01T00:00:00Z,0.2723\n")
    body = json.dumps(
        {"name": "rates", "classification": "public", "residency": "AE", "uri": (data / "rates.csv").as_uri()}
    )
    run(["do", "dataset.register", "--tenant", "acme", "--payload", body], home, token=eng, check=True)
    defs = tmp_path / "defs.toml"
    defs.write_text(
        """
[[entities]]
name = "pair"
join_keys = [{ name = "pair", dtype = "string" }]

[[feature_views]]
name = "fx"
entities = ["pair"]
features = [{ name = "rate", dtype = "float64" }]
source_dataset = "rates"
offline_store = "offline"
online_store = "online"

[[feature_services]]
name = "pricing"
features = ["fx:rate"]
"""
    )
    first = run(["features", "apply", str(defs), "--tenant", "acme"], home, token=eng, check=True)
    assert "fx v1 (changed)" in first.stdout and "pricing v1 (changed)" in first.stdout
    again = run(["features", "apply", str(defs), "--tenant", "acme"], home, token=eng, check=True)
    assert "fx v1 (unchanged)" in again.stdout
    out = run(["features", "materialize", "fx", "--tenant", "acme", "--json"], home, token=eng, check=True)
    assert json.loads(out.stdout)["data"]["entities_written"] == 1
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"event_id": "q1", "pair": "AEDUSD", "event_ts": "2026-11-02T00:00:00Z", "rate": 0.2724}) + "\n"
    )
    pushed = run(["features", "push", "fx", str(rows), "--tenant", "acme", "--json"], home, token=eng, check=True)
    assert json.loads(pushed.stdout)["data"]["written"] == 1
    online = run(
        ["features", "online", "--tenant", "acme", "--service", "pricing", "--entities", '[{"pair": "AEDUSD"}]'],
        home,
        token=eng,
        check=True,
    )
    assert '"rate": 0.2724' in online.stdout
    hist = run(
        [
            "features", "historical", "--tenant", "acme", "--service", "pricing", "--purpose", "analytics",
            "--entities", '[{"pair": "AEDUSD", "event_timestamp": "2026-11-01T12:00:00Z"}]', "--json",
        ],
        home,
        token=eng,
        check=True,
    )  # fmt: skip
    assert json.loads(hist.stdout)["data"]["data"][0]["rate"] == 0.2723
    bad = tmp_path / "bad.toml"
    bad.write_text('[[feature_views]]\nname = "broken"\nentities = ["pair"]\nfeatures = []\nsource_dataset = "rates"\n')
    refused = run(["features", "apply", str(bad), "--tenant", "acme"], home, token=eng)
    assert refused.returncode == 1 and "broken" in refused.stdout
