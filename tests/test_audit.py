"""The audit log: hash chain, signed checkpoints, tamper detection, offline export, concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text, update

from falaj.core.audit.chain import canonical_bytes
from falaj.core.audit.verifier import canonical_json, verify_export
from falaj.core.domain import AuditCheckpoint, AuditEvent, AuditHead


def fill(world, n: int) -> None:
    for i in range(n):
        assert world.act(
            "budget.set", {"period": f"20{30 + i // 12:02d}-{i % 12 + 1:02d}", "limit_amount": str(100 + i)}
        ).ok


def verify(world):
    return world.plane.audit.verify(world.plane.engine)


def sql(world, statement, **params) -> None:
    with world.plane.engine.begin() as conn:
        conn.execute(statement if not isinstance(statement, str) else text(statement), params)


def test_clean_chain_verifies_with_checkpoints(world):
    fill(world, 20)
    report = verify(world)
    assert report.ok, report.problem
    assert report.events == 23  # 3 bootstrap events + 20 actions
    # checkpoint_every=8 in the fixture, plus the bootstrap's own checkpoint at seq 3.
    assert report.checkpoints_verified == 3 and report.latest_checkpoint == 16  # seqs 3, 8, 16


def test_edited_event_is_named(world):
    fill(world, 12)
    sql(world, update(AuditEvent).where(AuditEvent.seq == 7).values(outcome="denied"))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 7 and "altered" in report.problem


def test_edited_event_with_recomputed_hash_breaks_the_next_link(world):
    from falaj.core.audit.chain import fast_event_hash
    from falaj.core.audit.verifier import FIELDS

    fill(world, 12)
    with world.plane.engine.begin() as conn:
        row = conn.execute(select(*[getattr(AuditEvent, f) for f in FIELDS]).where(AuditEvent.seq == 5)).one()
        fields = dict(zip(FIELDS, row, strict=True))
        fields["principal"] = "operator/someone-else"
        conn.execute(
            update(AuditEvent)
            .where(AuditEvent.seq == 5)
            .values(principal=fields["principal"], hash=fast_event_hash(fields))
        )
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 6 and "does not follow" in report.problem


def test_deleted_event_is_named(world):
    fill(world, 12)
    sql(world, delete(AuditEvent).where(AuditEvent.seq == 9))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 9 and "missing" in report.problem


def test_inserted_event_is_detected(world):
    fill(world, 6)
    # Shift events 5.. up by one and insert a forged event at 5 that links to event 4.
    with world.plane.engine.begin() as conn:
        rows = conn.execute(select(AuditEvent).where(AuditEvent.seq >= 5).order_by(AuditEvent.seq.desc())).all()
        for r in rows:
            conn.execute(update(AuditEvent).where(AuditEvent.seq == r.seq).values(seq=r.seq + 1))
        prev = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 4)).scalar_one()
        forged = dict(
            seq=5,
            ts="2026-01-01T00:00:00.000000Z",
            tenant="operator",
            principal="operator/admin",
            action="budget.set",
            resource="budget/x",
            verdict="allow",
            outcome="succeeded",
            reasons="[]",
            bundle_digest="sha256:x",
            payload_digest="sha256:y",
            prev_hash="f" * 64,
            hash="e" * 64,
        )
        conn.execute(AuditEvent.__table__.insert().values(**forged))
        del prev
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 5


def test_reordered_events_are_detected(world):
    fill(world, 10)
    with world.plane.engine.begin() as conn:
        a = conn.execute(select(AuditEvent).where(AuditEvent.seq == 6)).one()._asdict()
        b = conn.execute(select(AuditEvent).where(AuditEvent.seq == 7)).one()._asdict()
        conn.execute(delete(AuditEvent).where(AuditEvent.seq.in_([6, 7])))
        conn.execute(AuditEvent.__table__.insert().values(**dict(b, seq=6)))
        conn.execute(AuditEvent.__table__.insert().values(**dict(a, seq=7)))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 6


def test_truncated_tail_is_detected_even_when_the_head_is_rewritten(world):
    fill(world, 20)  # events 1..23, checkpoints at 3, 8, 16
    with world.plane.engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > 12))
        new_head = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 12)).scalar_one()
        conn.execute(update(AuditHead).values(seq=12, hash=new_head))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 13 and "truncated" in report.problem


def test_truncation_with_checkpoints_deleted_is_caught_by_the_witness(world):
    fill(world, 20)
    with world.plane.engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > 10))
        conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq > 10))
        new_head = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 10)).scalar_one()
        conn.execute(update(AuditHead).values(seq=10, hash=new_head))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 11 and "truncated" in report.problem


def test_truncated_tail_without_head_rewrite(world):
    fill(world, 5)
    sql(world, delete(AuditEvent).where(AuditEvent.seq == 8))
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 8 and "truncated" in report.problem


def test_forged_checkpoint_signature_is_detected(world):
    fill(world, 10)
    sql(world, update(AuditCheckpoint).where(AuditCheckpoint.seq == 8).values(signature="AAAA"))
    # The witness file still has the genuine one; verify must prefer neither silently: remove it too.
    (world.settings.home / "audit" / "checkpoints.jsonl").unlink()
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 8 and "invalid signature" in report.problem


def export(world, name="export"):
    world.principal("platform-auditor-1", ["platform-auditor"]) if "platform-auditor-1" not in world.tokens else None
    result = world.act("audit.export", {"destination": name}, as_="platform-auditor-1")
    assert result.ok, result.message()
    return Path(result.data["destination"])


def run_verify(out, key, *extra):
    args = [
        sys.executable,
        "-I",
        str(out / "verify.py"),
        str(out),
        *(["--public-key", str(key)] if key else []),
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True)


def test_export_verifies_offline_with_only_the_trusted_public_key(world, tmp_path):
    fill(world, 10)
    out = export(world)
    assert out.parent == world.settings.exports_dir / "operator"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints.jsonl",
        "events.jsonl",
        "manifest.json",
        "public_key.pem",
        "verify.py",
    ]
    key = world.settings.keys_dir / "audit-ed25519.pub.pem"
    # The shipped verifier runs standalone, outside the falaj package, with the key obtained separately.
    proc = run_verify(out, key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK: 15 events")  # 3 bootstrap, 10 budgets, the auditor and its token
    assert run_verify(out, None).returncode == 2  # no key, no verdict

    lines = (out / "events.jsonl").read_text().splitlines()
    event = json.loads(lines[4])
    event["resource"] = "budget/forged"
    lines[4] = json.dumps(event)
    (out / "events.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_verify(out, key)
    assert proc.returncode == 1 and "first bad seq 5" in proc.stdout
    assert verify_export(out, key.read_bytes()).first_bad_seq == 5


def test_a_rewritten_export_signed_with_another_key_is_refused(world, tmp_path):
    """Recomputing the chain and re-signing with a new key and shipping that key in the export fails."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from falaj.core.audit.chain import fast_event_hash
    from falaj.core.audit.verifier import FIELDS, GENESIS, checkpoint_message, manifest_message
    from falaj.core.keys import AuditSigner

    fill(world, 5)
    out = export(world)
    forger = AuditSigner(Ed25519PrivateKey.generate())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    events[2]["resource"] = "budget/forged"
    prev = GENESIS
    for e in events:
        e["prev_hash"] = prev
        e["hash"] = prev = fast_event_hash({k: e[k] for k in FIELDS})
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    cps = [
        {
            "seq": e["seq"],
            "hash": e["hash"],
            "ts": e["ts"],
            "key_id": forger.key_id,
            "signature": base64.b64encode(forger.sign(checkpoint_message(e["seq"], e["hash"]))).decode(),
        }
        for e in events[-1:]
    ]
    (out / "checkpoints.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cps))
    (out / "public_key.pem").write_bytes(forger.public_pem())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(head_seq=events[-1]["seq"], head_hash=prev, key_id=forger.key_id)
    import hashlib

    manifest["files"] = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in manifest["files"]}
    manifest["signature"] = base64.b64encode(forger.sign(manifest_message(manifest))).decode()
    (out / "manifest.json").write_text(json.dumps(manifest))
    # Trusting the key that came with the export would be fooled; the operator's key is not.
    assert verify_export(out, forger.public_pem()).ok
    trusted = (world.settings.keys_dir / "audit-ed25519.pub.pem").read_bytes()
    report = verify_export(out, trusted)
    assert not report.ok and "not signed by the trusted key" in report.problem


def test_cutting_the_unsigned_tail_of_an_export_is_detected(world, tmp_path):
    fill(world, 12)  # 16 events; the last checkpoint is at 8
    out = export(world)
    lines = (out / "events.jsonl").read_text().splitlines()
    (out / "events.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["head_seq"] -= 3
    (out / "manifest.json").write_text(json.dumps(manifest))
    key = (world.settings.keys_dir / "audit-ed25519.pub.pem").read_bytes()
    report = verify_export(out, key)
    assert not report.ok and "edited" in report.problem


def test_export_names_are_names_not_paths(world, tmp_path):
    world.principal("pa", ["platform-auditor"])
    for bad in ("../escape", "/tmp/x", "a/b"):
        result = world.act("audit.export", {"destination": bad}, as_="pa")
        assert result.outcome == "denied" and "destination" in result.message()
    assert export(world, "first").exists()
    again = world.act("audit.export", {"destination": "first"}, as_="platform-auditor-1")
    assert again.outcome == "failed" and "already exists" in again.error


def test_truncate_and_regrow_is_detected(world):
    """Cut the chain back behind a checkpoint, then let it grow again: the witness still knows."""
    fill(world, 10)  # checkpoints at 3 and 8
    with world.plane.engine.begin() as conn:
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > 5))
        conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq > 5))
        head = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == 5)).scalar_one()
        conn.execute(update(AuditHead).values(seq=5, hash=head))
    fill(world, 6)  # regrows past 8: a new checkpoint at 8 with a different hash
    report = verify(world)
    assert not report.ok and report.first_bad_seq == 8 and "two different chain heads" in report.problem


def test_a_rewound_head_is_detected(world):
    fill(world, 4)
    sql(world, update(AuditHead).values(seq=0, hash="0" * 64))
    (world.settings.home / "audit" / "checkpoints.jsonl").unlink()
    with world.plane.engine.begin() as conn:
        conn.execute(delete(AuditCheckpoint))
    report = verify(world)
    assert not report.ok and "beyond the chain head" in report.problem


def test_concurrent_writers_never_fork_the_chain(world):
    """Threads with their own connections (on PostgreSQL, real concurrent transactions) append at once."""
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(15):
                r = world.act("cost.record", {"resource": f"w{k}/{i}", "amount": "1"})
                assert r.ok, r.message()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    report = verify(world)
    assert report.ok, report.problem
    assert report.events == 3 + 6 * 15
    with world.plane.sessions() as s:
        seqs = s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert seqs == list(range(1, 3 + 6 * 15 + 1))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_processes_on_postgres_never_fork_the_chain(world, tmp_path):
    """Two OS processes (as two API workers would be) append to one PostgreSQL chain concurrently."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys\n"
        "from falaj.core import Action, ControlPlane, Settings, TokenCredential\n"
        "from falaj.core.keys import AuditSigner\n"
        "from pathlib import Path\n"
        "settings = Settings(home=Path(sys.argv[1]), database_url=sys.argv[2], checkpoint_every=8)\n"
        "plane = ControlPlane(settings, signer=AuditSigner.load(settings))\n"
        "for i in range(40):\n"
        "    r = plane.execute(Action('cost.record', 'operator', TokenCredential(sys.argv[3]),\n"
        "                             {'resource': f'p{sys.argv[4]}/{i}', 'amount': '1'}))\n"
        "    assert r.ok, r.message()\n"
    )
    url = world.settings.database_url
    procs = [
        subprocess.Popen([sys.executable, str(script), str(world.settings.home), url, world.admin_token, str(k)])
        for k in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    report = verify(world)
    assert report.ok, report.problem
    assert report.events == 3 + 80


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_canonical_json_matches_the_reference(value):
    assert canonical_bytes(value) == canonical_json(value)
