"""The governed pipeline: deny by default, bad input denied and audited, failures leave no partial state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from falaj.core import Action, PrincipalRef, TokenCredential
from falaj.core.domain import (
    ApiToken,
    AuditEvent,
    Backend,
    Base,
    Dataset,
    Operation,
    Principal,
    Tenant,
)
from falaj.core.plugin import PolicyCheckSpec, create_plugin_manager, hookimpl
from falaj.core.plugin.manager import module_from_object

DATASET = {
    "name": "customers",
    "classification": "personal",
    "residency": "AE",
    "subject_column": "cid",
    "legal_basis": "consent",
    "schema": {"cid": "string", "age": "int"},
}

STATE_TABLES = [
    t
    for t in Base.metadata.sorted_tables
    if t.name not in ("audit_events", "audit_head", "audit_checkpoints", "operations")
]


def counts(world) -> dict[str, int]:
    with world.plane.sessions() as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in STATE_TABLES}


def last_event(world) -> AuditEvent:
    with world.plane.sessions() as s:
        return s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()


def assert_denied_and_audited(world, result, check: str, fragment: str, before: dict[str, int]) -> None:
    assert result.outcome == "denied", result.message()
    assert not result.decision.allowed
    failing = [c for c in result.decision.checks if c.outcome == "fail"]
    assert failing and failing[0].check == check, result.decision.as_dict()
    assert fragment in failing[0].reason
    event = last_event(world)
    assert event.seq == result.audit_seq and event.verdict == "deny" and event.outcome == "denied"
    assert fragment in event.reasons
    # Nothing else is written: only the audit event and the operation record.
    assert counts(world) == before
    with world.plane.sessions() as s:
        op = s.get(Operation, result.operation_id)
        assert op is not None and op.outcome == "denied" and op.audit_seq == result.audit_seq


def test_allowed_action_changes_state_and_is_audited(world):
    world.principal("eng", ["ml-engineer"])
    result = world.act("dataset.register", DATASET, as_="eng")
    assert result.ok, result.message()
    assert result.data["version"] == 1
    names = [c.check for c in result.decision.checks]
    assert names[:3] == ["authenticate", "payload", "rbac"]
    assert all(c.outcome == "pass" for c in result.decision.checks)
    event = last_event(world)
    assert (event.action, event.resource, event.verdict, event.outcome) == (
        "dataset.register",
        "dataset/customers",
        "allow",
        "succeeded",
    )
    assert event.principal == "operator/eng"
    assert event.bundle_digest == world.plane.bundle.digest
    with world.plane.sessions() as s:
        assert s.scalar(select(Dataset.name)) == "customers"


def test_no_role_is_denied_by_default(world):
    world.principal("nobody", [])
    before = counts(world)
    result = world.act("dataset.register", DATASET, as_="nobody")
    assert_denied_and_audited(world, result, "rbac", "no role in tenant", before)


def test_role_without_permission_is_denied_with_reason(world):
    world.principal("approver1", ["approver"])
    before = counts(world)
    result = world.act("dataset.register", DATASET, as_="approver1")
    assert_denied_and_audited(world, result, "rbac", "may dataset.register", before)
    assert result.decision.checks[-1].rule == "deny-by-default"


def test_unknown_action_kind(world):
    before = counts(world)
    result = world.act("model.teleport", {})
    assert_denied_and_audited(world, result, "action", "unknown action kind 'model.teleport'", before)


def test_unknown_tenant(world):
    before = counts(world)
    result = world.act("dataset.register", DATASET, tenant="ghost")
    assert_denied_and_audited(world, result, "tenant", "unknown tenant 'ghost'", before)
    assert last_event(world).tenant == "ghost"


def test_malformed_payload_names_the_field(world):
    world.principal("eng", ["ml-engineer"])
    before = counts(world)
    bad = dict(DATASET, classification="secret-ish", residency="UAE")
    result = world.act("dataset.register", bad, as_="eng")
    assert_denied_and_audited(world, result, "payload", "classification", before)
    assert "residency" in result.decision.failures[0].reason
    assert "(got 'secret-ish')" in result.decision.failures[0].reason  # the unknown value is named
    result = world.act("dataset.register", dict(DATASET, surprise=1), as_="eng")
    assert "surprise" in result.decision.failures[0].reason


def test_unknown_disabled_revoked_and_expired_credentials(world):
    world.principal("eng", ["ml-engineer"])
    before = counts(world)
    bogus = world.plane.execute(
        Action("dataset.register", "operator", TokenCredential("flj_000000000000_nope"), DATASET)
    )
    assert_denied_and_audited(world, bogus, "authenticate", "unknown API token", before)
    assert last_event(world).principal == "token:000000000000"
    malformed = world.plane.execute(Action("dataset.register", "operator", TokenCredential("hunter2"), DATASET))
    assert_denied_and_audited(world, malformed, "authenticate", "malformed API token", before)
    assert "hunter2" not in last_event(world).principal

    prefix = world.tokens["eng"].split("_")[1]
    with world.plane.sessions() as s, s.begin():
        s.execute(
            update(ApiToken)
            .where(ApiToken.prefix == prefix)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    before = counts(world)
    assert_denied_and_audited(
        world, world.act("dataset.register", DATASET, as_="eng"), "authenticate", "has expired", before
    )

    assert world.act("token.revoke", {"prefix": prefix}).ok
    before = counts(world)
    assert_denied_and_audited(
        world, world.act("dataset.register", DATASET, as_="eng"), "authenticate", "was revoked", before
    )

    world.principal("eng2", ["ml-engineer"])
    assert world.act("principal.disable", {"name": "eng2"}).ok
    before = counts(world)
    assert_denied_and_audited(
        world, world.act("dataset.register", DATASET, as_="eng2"), "authenticate", "is disabled", before
    )


def test_principal_ref_for_in_process_services(world):
    world.principal("scheduler", ["service"], kind="service")
    with world.plane.sessions() as s:
        pid = s.scalar(select(Principal.id).where(Principal.name == "scheduler"))
    ok = world.plane.execute(
        Action("cost.record", "operator", PrincipalRef(pid), {"resource": "training/x", "amount": "1.25"})
    )
    assert ok.ok, ok.message()
    denied = world.plane.execute(
        Action("cost.record", "operator", PrincipalRef("0" * 32), {"resource": "training/x", "amount": "1"})
    )
    assert denied.outcome == "denied" and "unknown principal" in denied.message()


def test_another_tenant_is_always_denied(world):
    assert world.act("tenant.create", {"slug": "acme", "display_name": "Acme"}).ok
    # An admin of acme, created by the platform admin acting in acme's domain is not possible: the
    # operator admin has no role there.
    before = counts(world)
    result = world.act("principal.create", {"name": "x", "roles": ["admin"]}, tenant="acme")
    assert_denied_and_audited(world, result, "rbac", "belongs to another tenant", before)


def test_tenant_disabled_denies_everything(world):
    assert world.act("tenant.create", {"slug": "acme", "display_name": "Acme"}).ok
    with world.plane.sessions() as s, s.begin():
        s.execute(update(Tenant).where(Tenant.slug == "acme").values(disabled=True))
    before = counts(world)
    result = world.act("dataset.register", DATASET, tenant="acme")
    assert_denied_and_audited(world, result, "tenant", "is disabled", before)


def test_known_kind_without_handler_is_denied(world):
    world.principal("eng", ["ml-engineer"])
    before = counts(world)
    # Drift monitoring has no handler in this version.
    result = world.act("monitoring.report", {"deployment": "churn", "metrics": {"psi": 0.3}}, as_="eng")
    assert_denied_and_audited(world, result, "handler", "no handler for it is installed", before)


def test_conflict_fails_without_partial_state(world):
    world.principal("eng", ["ml-engineer"])
    assert world.act("model.register", {"name": "churn"}, as_="eng").ok
    before = counts(world)
    again = world.act("model.register", {"name": "churn"}, as_="eng")
    assert again.outcome == "failed" and again.error_type == "conflict"
    assert "already exists" in again.error
    assert counts(world) == before
    event = last_event(world)
    assert (event.verdict, event.outcome) == ("allow", "failed")
    assert "already exists" in event.reasons


def test_secret_never_reaches_audit_or_operation(world):
    token = world.principal("eng", ["ml-engineer"])
    secret = token.split("_", 2)[2]
    with world.plane.sessions() as s:
        texts = [e.reasons + e.resource + e.principal for e in s.scalars(select(AuditEvent))]
        ops = [str(o.result) + str(o.decision) for o in s.scalars(select(Operation))]
        stored = s.scalars(select(ApiToken.secret_hash)).all()
    assert not any(secret in t for t in texts + ops)
    assert all(secret not in h for h in stored)


def _plane_with(world, plugin):
    from falaj.core.pipeline import ControlPlane

    registry = create_plugin_manager(load_entrypoints=False, extra=[("house-rules", plugin)])
    return ControlPlane(world.settings, engine=world.plane.engine, registry=registry, signer=world.plane.signer)


def test_plugin_policy_check_runs_and_can_deny(world):
    world.principal("eng", ["ml-engineer"])

    def no_friday(ctx):
        from falaj.core.decision import CheckResult

        if ctx.payload.get("name") == "friday":
            return CheckResult.failed("no-friday", "no models named friday", "house rule 7")
        return CheckResult.passed("no-friday", "fine")

    plugin = module_from_object(
        "house",
        falaj_policy_checks=hookimpl(
            lambda: [PolicyCheckSpec(name="no-friday", check=no_friday, kinds=frozenset({"model.register"}))]
        ),
    )
    plane = _plane_with(world, plugin)
    tok = TokenCredential(world.tokens["eng"])
    ok = plane.execute(Action("model.register", "operator", tok, {"name": "monday"}))
    assert ok.ok and ok.decision.checks[-1].check == "no-friday"
    denied = plane.execute(Action("model.register", "operator", tok, {"name": "friday"}))
    assert denied.outcome == "denied" and denied.decision.failures[0].rule == "house rule 7"
    other_kind = plane.execute(Action("dataset.register", "operator", tok, DATASET))
    assert other_kind.ok and "no-friday" not in [c.check for c in other_kind.decision.checks]


def test_plugin_check_returning_garbage_or_raising_denies(world):
    world.principal("eng", ["ml-engineer"])
    plugin = module_from_object(
        "garbage",
        falaj_policy_checks=hookimpl(
            lambda: [
                PolicyCheckSpec(name="garbage", check=lambda ctx: {"allow": True}),
                PolicyCheckSpec(name="raises", check=lambda ctx: 1 / 0),
            ]
        ),
    )
    plane = _plane_with(world, plugin)
    before = counts(world)
    result = plane.execute(Action("model.register", "operator", TokenCredential(world.tokens["eng"]), {"name": "m"}))
    assert result.outcome == "denied"
    reasons = {c.check: c.reason for c in result.decision.failures}
    assert "returned dict, expected CheckResult" in reasons["garbage"]
    assert "ZeroDivisionError" in reasons["raises"]
    assert counts(world) == before


def test_backend_that_raises_leaves_failed_record_and_no_partial_state(world):
    before = counts(world)
    # The handler writes the backend row, then the plugin's factory refuses the settings and raises.
    result = world.act(
        "backend.register",
        {
            "name": "store",
            "kind": "storage",
            "plugin": "local",
            "region": "me-central-1",
            "settings": {"root": 5},
        },
    )
    assert result.outcome == "failed" and result.error_type == "backend"
    assert "could not start backend" in result.error
    assert counts(world) == before
    with world.plane.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Backend)) == 0
        op = s.get(Operation, result.operation_id)
        assert op.outcome == "failed" and "could not start" in op.error
    event = last_event(world)
    assert (event.verdict, event.outcome) == ("allow", "failed")
    assert world.plane.audit.verify(world.plane.engine).ok


def test_backend_plugin_returning_garbage_fails_cleanly(world):
    from falaj.core.plugin import StorageBackendSpec

    plugin = module_from_object(
        "junk",
        falaj_storage_backends=hookimpl(
            lambda: [StorageBackendSpec(name="junk", factory=lambda config: {"not": "a store"})]
        ),
    )
    plane = _plane_with(world, plugin)
    before = counts(world)
    result = plane.execute(
        Action(
            "backend.register",
            "operator",
            TokenCredential(world.admin_token),
            {"name": "j", "kind": "storage", "plugin": "junk", "region": "me-central-1"},
        )
    )
    assert result.outcome == "failed"
    assert "returned dict, not a ArtifactStore" in result.error
    assert counts(world) == before


def test_model_version_needs_the_artifact_in_the_store(world, tmp_path):
    import io

    world.principal("eng", ["ml-engineer"])
    assert world.act(
        "backend.register", {"name": "store", "kind": "storage", "plugin": "local", "region": "me-central-1"}
    ).ok
    assert world.act("model.register", {"name": "churn"}, as_="eng").ok
    missing = world.act(
        "model_version.register",
        {"model": "churn", "storage_backend": "store", "artifact_digest": "sha256:" + "ab" * 32},
        as_="eng",
    )
    assert missing.outcome == "failed" and "upload it first" in missing.error
    with world.plane.sessions() as s:
        row = s.scalar(select(Backend).where(Backend.name == "store"))
        store = world.plane.backend_instance("operator", row)
    info = store.put(io.BytesIO(b"onnx bytes"), tenant="operator")
    ok = world.act(
        "model_version.register",
        {
            "model": "churn",
            "storage_backend": "store",
            "artifact_digest": info.digest,
            "metrics": {"auc": 0.9},
        },
        as_="eng",
    )
    assert ok.ok and ok.data["version"] == 1
    alias = world.act("model_alias.set", {"model": "churn", "alias": "champion", "version": 1}, as_="eng")
    assert alias.ok


def test_explain_writes_nothing(world):
    world.principal("eng", ["ml-engineer"])
    head = world.plane.audit.head(world.plane.engine)
    before = counts(world)
    decision = world.plane.explain(
        Action("dataset.register", "operator", TokenCredential(world.tokens["eng"]), DATASET)
    )
    assert decision.allowed
    denied = world.plane.explain(
        Action(
            "tenant.create",
            "operator",
            TokenCredential(world.tokens["eng"]),
            {"slug": "x", "display_name": "X"},
        )
    )
    assert not denied.allowed and denied.failures[0].check == "rbac"
    assert counts(world) == before and world.plane.audit.head(world.plane.engine) == head


def test_observers_are_called_and_cannot_break_the_pipeline(world):
    seen = []

    def after(kind, outcome, audit_seq):
        seen.append((kind, outcome, audit_seq))
        raise RuntimeError("observer bug")

    plugin = module_from_object(
        "obs",
        falaj_after_action=hookimpl(after),
        falaj_before_action=hookimpl(lambda kind, verdict: seen.append((kind, verdict))),
    )
    plane = _plane_with(world, plugin)
    result = plane.execute(
        Action(
            "budget.set",
            "operator",
            TokenCredential(world.admin_token),
            {"period": "2026-12", "limit_amount": "5000"},
        )
    )
    assert result.ok
    assert seen == [("budget.set", "allow"), ("budget.set", "succeeded", result.audit_seq)]


def test_a_new_tenant_gets_its_first_admin_and_stays_separate(world):
    created = world.act("tenant.create", {"slug": "acme", "display_name": "Acme", "admin": "root"})
    assert created.ok and created.secret.startswith("flj_")
    world.tokens["acme-root"] = created.secret
    # The new admin works in its own tenant...
    assert world.act("principal.create", {"name": "eng", "roles": ["ml-engineer"]}, as_="acme-root", tenant="acme").ok
    # ...and has no role in the operator tenant, nor may grant platform roles.
    denied = world.act("principal.create", {"name": "x", "roles": []}, as_="acme-root")
    assert denied.outcome == "denied" and "another tenant" in denied.message()
    grab = world.act("role.assign", {"principal": "eng", "role": "platform-admin"}, as_="acme-root", tenant="acme")
    assert grab.outcome == "failed" and "operator tenant" in grab.error
