"""The one governed channel: ``ControlPlane.execute(action)``.

authenticate -> authorize -> policy checks -> decide -> delegate -> record -> audit, in one transaction.
The audit event is appended last, just before the commit, so the chain head is locked only briefly;
it is still in the same transaction as the state change, so either both land or neither does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from falaj.core.actions import (
    PAYLOADS,
    Action,
    ActionKind,
    Payload,
    PrincipalRef,
    TokenCredential,
    parse_kind,
)
from falaj.core.audit import AuditEntry, AuditLog, sha256_digest
from falaj.core.config import Settings
from falaj.core.datakeys import DataKeyring
from falaj.core.db import BACKGROUND_CHECKPOINTS, create_db_engine, is_sqlite, read_only, session_factory
from falaj.core.decision import CheckOutcome, CheckResult, Decision, Verdict
from falaj.core.domain import (
    ApiToken,
    Backend,
    IdempotencyRecord,
    ModelVersion,
    Operation,
    PolicyBundleRecord,
    Principal,
    RoleAssignment,
    Tenant,
    new_id,
)
from falaj.core.errors import (
    BackendError,
    CheckDenied,
    ConflictError,
    FalajError,
    NotFoundError,
    ReadDenied,
    ValidationError,
)
from falaj.core.features.lineage import LineageEmitter
from falaj.core.features.online import OnlineReader
from falaj.core.handlers import HANDLERS, PENDING_HANDLERS, HandlerContext, Outcome, PrincipalView, TenantView
from falaj.core.handlers.base import AFTER_COMMIT
from falaj.core.keys import AuditSigner, master_key
from falaj.core.plugin import BackendConfig, CheckContext, PluginRegistry, create_plugin_manager
from falaj.core.policy import Authorizer, PolicyBundle, load_bundle
from falaj.core.policy.bundle import parse_bundle
from falaj.core.policy.engine import PolicyEngine
from falaj.core.policy.facts import FactLoader
from falaj.core.tokens import secret_matches, split_token

_T = TypeVar("_T")
IDEMPOTENCY_TTL = timedelta(hours=24)
_FINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})
WAL_RESTART_PAGES = 20_000  # about 80 MB of write-ahead log
log = logging.getLogger(__name__)
#: Actions after which remembered read grants are forgotten at once.
_IDENTITY_CHANGES = frozenset(
    {"token.revoke", "role.revoke", "role.assign", "principal.disable", "tenant.update", "policy.reload"}
)
NO_ROLES: frozenset[str] = frozenset()
#: Payload fields that plugins never see (they are secrets for the handler alone).
_SECRET_FIELDS = {"identity_token"}

#: Payload fields that name the resource an action targets, in order of preference.
_RESOURCE_FIELDS = (
    "slug",
    "name",
    "prefix",
    "key_id",
    "request_id",
    "run_id",
    "deployment",
    "model",
    "feature_view",
    "principal",
    "resource",
    "digest",
    "period",
)


@dataclass
class Result:
    """What ``execute`` answers: the decision, the outcome and, on success, the handler's data."""

    operation_id: str
    kind: str
    tenant: str
    principal: str
    resource: str
    decision: Decision
    outcome: str  # succeeded | failed | denied | pending
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None  # validation | not_found | conflict | backend | internal
    audit_seq: int | None = None
    secret: str | None = field(default=None, repr=False)
    replayed: bool = False  # the stored answer to an earlier request with the same Idempotency-Key

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"

    def message(self) -> str:
        if self.outcome == "succeeded":
            return "done"
        if self.outcome == "failed":
            return f"failed: {self.error}"
        return self.decision.summary()


@dataclass
class _Evaluation:
    kind: ActionKind | None
    tenant: TenantView | None
    principal: PrincipalView | None
    principal_label: str
    payload: Payload | None
    resource: str
    checks: list[CheckResult]


class ControlPlane:
    """The control plane of one installation: database, policy bundle, audit log and plugins."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        registry: PluginRegistry | None = None,
        bundle: PolicyBundle | None = None,
        signer: AuditSigner | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or create_db_engine(settings.database_url, echo=settings.echo_sql)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self._write_lock = threading.RLock() if is_sqlite(str(self.engine.url)) else None
        self._checkpointer: tuple[threading.Event, threading.Thread] | None = None
        self._keyrings: dict[str, DataKeyring] = {}
        self.registry = registry or create_plugin_manager()
        # An explicit bundle pins it; otherwise the bundle activated last in the database is in force
        # (falaj init stores the first one), so every worker follows an audited policy.reload.
        self._pinned = bundle is not None
        self._bundle = bundle or load_bundle(settings.policy_dir)
        self.authorizer = Authorizer(self._bundle)
        self.policy = PolicyEngine(self._bundle, self.authorizer)
        self.facts = FactLoader(self)
        self._bundle_checked = 0.0
        self._signature_cache: dict[tuple[str, str, str], str | None] = {}
        self.signer = signer
        self.audit = AuditLog(
            signer,
            settings.home / "audit",
            settings.checkpoint_every,
            sorted(settings.keys_dir.glob("*.pub.pem")),
        )
        self._backend_cache: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        #: OpenLineage run events of materializations and retrievals.
        self.lineage = LineageEmitter(settings.home)
        #: Online feature reads (``feature.retrieve`` as a governed read).
        self.features = OnlineReader(self)

    @classmethod
    def open(cls, settings: Settings | None = None, **kwargs: Any) -> ControlPlane:
        """Open an initialised installation (``falaj init`` made its keys and database)."""
        settings = settings or Settings.from_env()
        signer = kwargs.pop("signer", None) or AuditSigner.load(settings)
        return cls(settings, signer=signer, **kwargs)

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    def use_bundle(self, bundle: PolicyBundle) -> None:
        """Swap the policy bundle in force; decisions already running keep the one they started with."""
        with self._lock:
            authorizer = Authorizer(bundle)
            self._bundle, self.authorizer, self.policy = bundle, authorizer, PolicyEngine(bundle, authorizer)

    def sync_bundle(self, *, force: bool = False) -> None:
        """Follow the bundle activated last in the database (checked at most once a second)."""
        now = time.monotonic()
        if self._pinned or (not force and now - self._bundle_checked < 1.0):
            return
        self._bundle_checked = now
        with read_only(self.engine).connect() as conn:
            row = conn.execute(_ACTIVE_BUNDLE).first()
        if row is None or row.digest == self._bundle.digest:
            return
        files = {name: text.encode("utf-8") for name, text in row.files.items()}
        self.use_bundle(parse_bundle(files, f"database ({row.digest[:19]})"))

    def verify_keyless(
        self,
        session: Session,
        tenant: str,
        version: ModelVersion,
        bundle: dict[str, Any],
        identities: frozenset[tuple[str, str]],
    ) -> str | None:
        """Check a Sigstore keyless bundle for any trusted identity, on the artifact copied out of the store."""
        import tempfile
        from pathlib import Path

        from falaj.core import signing
        from falaj.core.artifacts import materialize

        if not identities:
            return "no keyless identity is trusted for this tenant"
        backend = session.get(Backend, version.storage_backend_id)
        if backend is None:
            return "the artifact's storage backend is gone"
        try:
            store = self.backend_instance(tenant, backend)
            with tempfile.TemporaryDirectory() as tmp:
                folder = materialize(store, tenant, version.artifact_digest, Path(tmp) / "model")
                problems = [signing.verify_folder_keyless(folder, bundle, i, iss) for i, iss in sorted(identities)]
        except FalajError as exc:
            return str(exc)
        except Exception as exc:
            return f"the artifact could not be read: {type(exc).__name__}: {exc}"
        return None if None in problems else "; ".join(p for p in problems if p)

    def verify_signature(
        self, session: Session, tenant: str, version: ModelVersion, bundle: dict[str, Any], public_pem: str
    ) -> str | None:
        """Check a signature against a model version's stored artifact; None if it verifies.

        Two parts: the bundle's signature and file digests against the artifact manifest (a pure function,
        cached), and the stored files against the manifest (re-hashed every time, so a file changed in the
        store after signing is caught at approval and rollout).
        """
        from falaj.core import signing
        from falaj.core.artifacts import check_files, read_manifest

        try:
            backend = session.get(Backend, version.storage_backend_id)
            if backend is None:
                return "the artifact's storage backend is gone"
            store = self.backend_instance(tenant, backend)
            manifest = read_manifest(store, tenant, version.artifact_digest)
            check_files(store, tenant, manifest)
        except FalajError as exc:
            return str(exc)
        except Exception as exc:  # a plugin store failing in its own way: the signature cannot be shown valid
            return f"the artifact could not be read: {type(exc).__name__}: {exc}"
        key = (version.artifact_digest, sha256_digest(bundle), public_pem)
        if key not in self._signature_cache:
            self._signature_cache[key] = signing.verify_against_manifest(bundle, public_pem.encode("utf-8"), manifest)
        return self._signature_cache[key]

    def training_status(self, session: Session, tenant_slug: str, run: Any) -> Any:
        """Ask the run's compute backend how it is doing and record it on the run row (``session``'s
        transaction); returns the backend's ``JobStatus``. Bookkeeping, not an action: it changes no
        decision, and the actions that rely on it (registration, cancellation) are governed and audited."""
        from falaj.core.plugin import JobStatus

        handle = (run.spec or {}).get("handle")
        backend = session.get(Backend, run.backend_id) if run.backend_id else None
        if not handle or backend is None:
            return JobStatus(state=run.status if run.status in _FINAL_RUN_STATES else "failed", message="no job")
        status = self.backend_instance(tenant_slug, backend).status(handle)
        if not isinstance(status, JobStatus):
            raise BackendError(f"compute backend {backend.name!r} answered {type(status).__name__}, not JobStatus")
        if status.state != run.status:
            run.status = status.state
        run.metrics = {k: v for k, v in status.metrics.items() if isinstance(v, int | float | str)}
        for field_name in ("started_at", "finished_at"):
            value = status.outputs.get(field_name)
            if isinstance(value, str):
                with suppress(ValueError):
                    setattr(run, field_name, datetime.fromisoformat(value))
        log_path = status.outputs.get("log_path")
        if isinstance(log_path, str):
            run.log_uri = log_path
        return status

    def start_checkpointer(self, interval: float = 0.05) -> None:
        """On SQLite, move WAL checkpoints off the request path (a long-running server calls this).

        SQLite checkpoints its write-ahead log when it passes 1000 pages, inside whichever commit crosses
        the line, and that commit waits for the copy: an action writes about 14 pages, so one action in
        70 paid about 5 ms more. Here connections stop checkpointing on commit and a background thread
        runs a PASSIVE checkpoint (it never blocks writers) every ``interval`` seconds instead.
        """
        if self._write_lock is None or self._checkpointer is not None:
            return
        # New connections stop checkpointing on commit; the pool is emptied so that every one is new.
        BACKGROUND_CHECKPOINTS.add(self.engine)
        self.engine.dispose()
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    raw = self.engine.raw_connection()  # outside any transaction (autocommit driver mode)
                    try:
                        db: Any = raw.driver_connection
                        _, pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if pages > WAL_RESTART_PAGES:
                            # Readers kept the log from being reset: make it start over (waits for the
                            # writer of the moment, never for more).
                            with self._writing():
                                db.execute("PRAGMA wal_checkpoint(RESTART)")
                    finally:
                        raw.close()
                except Exception:  # the database is busy or closing: try again at the next tick
                    log.debug("background checkpoint failed", exc_info=True)

        thread = threading.Thread(target=loop, name="falaj-sqlite-checkpoint", daemon=True)
        thread.start()
        self._checkpointer = (stop, thread)

    def close(self) -> None:
        if self._checkpointer is not None:
            stop, thread = self._checkpointer
            stop.set()
            thread.join(timeout=5)
            self._checkpointer = None
        self.lineage.close()
        self.engine.dispose()

    # -- the pipeline --------------------------------------------------------------------------------------
    def execute(self, action: Action) -> Result:
        """Run one action through the governed pipeline and return its result. Never raises for bad input."""
        self.sync_bundle()
        bundle, authorizer = self._bundle, self.authorizer
        operation_id = new_id()
        try:
            payload_digest = payload_sha256(action.kind, action.payload)
        except Exception:  # e.g. a lone surrogate that no encoding accepts: still decided and audited
            payload_digest = (
                "sha256:"
                + hashlib.sha256(repr((action.kind, action.payload)).encode("utf-8", "backslashreplace")).hexdigest()
            )
        # One writer at a time per process on SQLite (see _writing); PostgreSQL runs them side by side.
        with self._writing():
            session = self.sessions()
            key = action.idempotency_key
            try:
                ev = self._evaluate(session, action, bundle, authorizer)
                if key is not None and ev.principal is not None:
                    replay = self._idempotency_check(session, ev, action, key, payload_digest, bundle.digest)
                    if replay is not None:
                        session.rollback()
                        session.close()
                        return replay
                decision = Decision.from_checks(ev.checks, bundle.digest)
                self.registry.notify(
                    "falaj_before_action",
                    kind=action.kind,
                    tenant=action.tenant,
                    principal=ev.principal_label,
                    resource=ev.resource,
                    verdict=str(decision.verdict),
                )
                result = Result(
                    operation_id=operation_id,
                    kind=action.kind,
                    tenant=action.tenant,
                    principal=ev.principal_label,
                    resource=ev.resource,
                    decision=decision,
                    outcome="denied" if decision.verdict is Verdict.DENY else "pending",
                )
                if decision.allowed:
                    self._delegate(session, ev, decision, operation_id, result)
                elif decision.verdict is Verdict.PENDING and ev.kind in PENDING_HANDLERS:
                    self._delegate(session, ev, decision, operation_id, result, pending=True)
                if key is not None and ev.principal is not None and result.outcome in ("succeeded", "pending"):
                    self._store_idempotent(session, ev, action, key, payload_digest, result)
                self._record(session, action, ev, result.decision, result, payload_digest)
                if key is not None and ev.principal is not None and result.outcome in ("succeeded", "pending"):
                    session.execute(
                        update(IdempotencyRecord)
                        .where(IdempotencyRecord.principal_id == ev.principal.id, IdempotencyRecord.key == key)
                        .values(audit_seq=result.audit_seq)
                    )
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                self.audit.discard_pending(session)
                session.close()
                if key is None or "idempotency" not in str(exc.orig).lower():
                    raise
                # A concurrent request with the same key committed first: give its answer.
                with self.sessions() as again:
                    assert ev.principal is not None
                    replay = self._idempotency_check(again, ev, action, key, payload_digest, bundle.digest)
                if replay is None:
                    raise
                return replay
            except Exception:
                session.rollback()
                self.audit.discard_pending(session)
                session.close()
                raise
            callbacks = session.info.pop(AFTER_COMMIT, [])
            try:
                self.audit.after_commit(session)
            finally:
                session.close()
        if result.outcome == "succeeded" and action.kind in _IDENTITY_CHANGES:
            self.features.invalidate()  # remembered online-read grants end now in this process (others: 1 s)
        for callback in callbacks:
            # The action is committed; what it triggers (a rollout after a quorum) is its own action, audited
            # on its own. Its failure must not turn this one into an exception.
            try:
                callback()
            except Exception:
                log.exception("follow-up of %s failed", action.kind)
        self.registry.notify(
            "falaj_after_action",
            kind=action.kind,
            tenant=action.tenant,
            principal=result.principal,
            resource=result.resource,
            outcome=result.outcome,
            audit_seq=result.audit_seq,
            result=result.data,
        )
        return result

    def _idempotency_check(
        self, session: Session, ev: _Evaluation, action: Action, key: str, payload_digest: str, bundle_digest: str
    ) -> Result | None:
        """The stored answer for ``key``, or None; a key reused for another request adds a failing check."""
        assert ev.principal is not None
        if not isinstance(key, str) or not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
            ev.checks.append(
                CheckResult.failed("idempotency", "Idempotency-Key must be 1 to 255 printable ASCII characters")
            )
            return None
        now = datetime.now(UTC)
        stored = session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.principal_id == ev.principal.id, IdempotencyRecord.key == key
            )
        )
        if stored is None:
            return None
        if stored.expires_at <= now:
            session.delete(stored)
            session.flush()
            return None
        if stored.kind != action.kind or stored.tenant != action.tenant or stored.payload_digest != payload_digest:
            ev.checks.append(
                CheckResult.failed(
                    "idempotency",
                    f"Idempotency-Key {key[:64]!r} was first used for another request ({stored.kind} in "
                    f"{stored.tenant!r}, operation {stored.operation_id}); send a new key for a new request",
                )
            )
            return None
        decision = Decision.from_checks(
            [CheckResult.passed("idempotency", f"the answer of operation {stored.operation_id}, given again")],
            bundle_digest,
        )
        return Result(
            operation_id=stored.operation_id,
            kind=stored.kind,
            tenant=stored.tenant,
            principal=ev.principal.label,
            resource=ev.resource,
            decision=decision,
            outcome=stored.outcome,
            data=dict(stored.result),
            audit_seq=stored.audit_seq,
            replayed=True,
        )

    def _store_idempotent(
        self, session: Session, ev: _Evaluation, action: Action, key: str, payload_digest: str, result: Result
    ) -> None:
        assert ev.principal is not None
        now = datetime.now(UTC)
        session.execute(
            insert(IdempotencyRecord).values(
                id=new_id(),
                created_at=now,
                principal_id=ev.principal.id,
                key=key,
                tenant=str(action.tenant)[:63],
                kind=str(action.kind)[:63],
                payload_digest=payload_digest,
                operation_id=result.operation_id,
                outcome=result.outcome,
                result=result.data,
                audit_seq=None,
                expires_at=now + IDEMPOTENCY_TTL,
            )
        )

    def whoami(self, credential: TokenCredential | PrincipalRef) -> tuple[str, str] | None:
        """The (home tenant slug, principal name) of a valid credential, or None. Reads only."""
        with Session(read_only(self.engine)) as session:
            principal, _, check = self._authenticate(session.connection(), credential, "", touch=False)
            session.rollback()
        if principal is None or check.outcome is not CheckOutcome.PASS:
            return None
        home, _, name = principal.label.partition("/")
        return home, name

    def ping(self) -> bool:
        """Whether the database answers (readiness)."""
        try:
            with read_only(self.engine).connect() as conn:
                conn.execute(_TENANT_BY_SLUG, {"slug": ""}).first()
            return True
        except Exception:
            return False

    def explain(self, action: Action) -> Decision:
        """Decide an action without doing it: nothing is delegated, written or audited."""
        bundle = self._bundle
        with Session(read_only(self.engine)) as session:
            ev = self._evaluate(session, action, bundle, self.authorizer, dry_run=True)
            session.rollback()
        return Decision.from_checks(ev.checks, bundle.digest)

    def _writing(self) -> AbstractContextManager[Any]:
        """Serialise this process's write transactions on SQLite.

        SQLite has one writer at a time anyway; left to itself, a second writer waits in SQLite's busy
        handler, which sleeps and polls with growing pauses, so under concurrent load a few unlucky
        actions wait hundreds of milliseconds. A lock hands the database over in arrival order instead.
        (Writers in other processes still meet at ``BEGIN IMMEDIATE``.) A no-op on PostgreSQL.
        """
        return self._write_lock if self._write_lock is not None else nullcontext()

    def read(
        self,
        credential: TokenCredential | PrincipalRef,
        tenant_slug: str,
        resource_type: str,
        query: Callable[[Session, TenantView], _T],
        *,
        verb: str = "read",
    ) -> _T:
        """Run a read (``query``) for a principal allowed ``<resource_type>.<verb>`` in the tenant.

        ``verb`` other than ``read`` pre-authorizes a step that precedes an action (a streamed upload is
        authorized before its bytes are written, then stored by the governed action itself).

        Authentication, tenant and RBAC are decided exactly as for an action; an allowed read is not
        audited (it changes nothing), a denied one is, like every denial. Raises :class:`ReadDenied`.
        """
        bundle, authorizer = self._bundle, self.authorizer
        kind = f"{resource_type}.{verb}"
        checks: list[CheckResult] = []
        stale: list[str] = []  # the token's last use, to record after the read
        # A read-only transaction: on SQLite it does not take the write lock, so reads never queue behind
        # actions (WAL). Only a denial, or a token last used over a minute ago, opens a short write.
        with Session(read_only(self.engine)) as session:
            conn = session.connection()
            row = conn.execute(_TENANT_BY_SLUG, {"slug": tenant_slug}).first()
            tenant = TenantView(*row) if row is not None else None
            label = _label(credential)
            principal = None
            if tenant is None or tenant.disabled:
                checks.append(CheckResult.failed("tenant", f"unknown tenant {tenant_slug[:63]!r}"))
            else:
                principal, roles, auth = self._authenticate(conn, credential, tenant.id, touch=stale)
                checks.append(auth)
                if principal is not None:
                    label = principal.label
                    rbac = authorizer.check(roles, tenant.slug, resource_type, verb)
                    if rbac.outcome is CheckOutcome.FAIL and principal.tenant_id != tenant.id:
                        rbac = CheckResult.failed(
                            "rbac", f"{label} belongs to another tenant and has no role in {tenant.slug!r}"
                        )
                    checks.append(rbac)
            decision = Decision.from_checks(checks, bundle.digest)
            if decision.allowed and tenant is not None:
                answer = query(session, tenant)
                session.rollback()
                if stale:
                    with self._writing(), self.sessions() as write:
                        write.execute(_TOUCH_TOKEN, {"token_id": stale[0], "now": datetime.now(UTC)})
                        write.commit()
                return answer
            session.rollback()
        result = Result(new_id(), kind, tenant_slug, label, resource_type, decision, "denied")
        ev = _Evaluation(None, tenant, principal, label, None, resource_type, checks)
        action = Action(kind=kind, tenant=tenant_slug, principal=credential, payload={})
        with self._writing():
            write = self.sessions()
            try:
                self._record(write, action, ev, decision, result, payload_sha256(kind, {}))
                write.commit()
                self.audit.after_commit(write)
            except Exception:
                write.rollback()
                self.audit.discard_pending(write)
                raise
            finally:
                write.close()
        failure = next(c for c in checks if c.outcome is CheckOutcome.FAIL)
        raise ReadDenied(failure.check, failure.reason, result.audit_seq)

    def _delegate(
        self,
        session: Session,
        ev: _Evaluation,
        decision: Decision,
        operation_id: str,
        result: Result,
        *,
        pending: bool = False,
    ) -> None:
        assert ev.kind is not None and ev.tenant is not None and ev.principal is not None
        handler = PENDING_HANDLERS[ev.kind] if pending else HANDLERS[ev.kind]
        ctx = HandlerContext(session, self, ev.tenant, ev.principal, ev.payload, decision, operation_id)
        try:
            outcome = handler(ctx)
            if not isinstance(outcome, Outcome):
                raise BackendError(f"handler for {ev.kind} returned {type(outcome).__name__}, expected Outcome")
            session.flush()
        except CheckDenied as exc:
            # The handler found a reason to deny (e.g. failing data-quality expectations): a denial, audited
            # with each failure as a failed check; nothing the handler wrote survives.
            session.rollback()
            session.info.pop(AFTER_COMMIT, None)
            failed = [CheckResult.failed(exc.check, reason, exc.rule) for reason in exc.reasons]
            result.decision = Decision.from_checks([*decision.checks, *failed], decision.bundle_digest)
            result.outcome = "denied"
            return
        except Exception as exc:
            # Roll the whole transaction back: nothing the handler wrote survives. The failure is then
            # recorded (operation and audit event) in a fresh transaction by _record.
            session.rollback()
            session.info.pop(AFTER_COMMIT, None)
            result.outcome = "failed"
            result.error, result.error_type = _describe_failure(exc)
            if result.error_type == "internal":
                log.exception("action %s failed", ev.kind)
            return
        result.outcome = "pending" if pending else "succeeded"
        result.data = outcome.data
        result.secret = outcome.secret

    def _record(
        self,
        session: Session,
        action: Action,
        ev: _Evaluation,
        decision: Decision,
        result: Result,
        payload_digest: str,
    ) -> None:
        reasons = [c.as_dict() for c in decision.checks]
        if result.error:
            reasons.append({"check": "delegate", "outcome": "fail", "reason": result.error})
        tenant, kind = str(action.tenant)[:63], str(action.kind)[:63]
        principal, resource = ev.principal_label[:200], ev.resource[:300]
        # Core statements, not the unit of work: this runs on every action, denials included.
        conn = session.connection()
        seq = self.audit.append(
            conn,
            AuditEntry(
                tenant=tenant,
                principal=principal,
                action=kind,
                resource=resource,
                verdict=str(decision.verdict),
                outcome=result.outcome,
                reasons=reasons,
                bundle_digest=decision.bundle_digest,
                payload_digest=payload_digest,
            ),
            session.info,
        )
        result.audit_seq = seq
        now = datetime.now(UTC)
        conn.execute(
            _INSERT_OPERATION,
            {
                "id": result.operation_id,
                "created_at": now,
                "tenant": tenant,
                "principal": principal,
                "kind": kind,
                "resource": resource,
                "verdict": str(decision.verdict),
                "outcome": result.outcome,
                "decision": {
                    "verdict": str(decision.verdict),
                    "bundle_digest": decision.bundle_digest,
                    "checks": reasons,
                },
                "result": result.data,
                "error": result.error,
                "payload_digest": payload_digest,
                "audit_seq": seq,
                "finished_at": now,
            },
        )

    # -- evaluation -----------------------------------------------------------------------------------------
    def _evaluate(
        self,
        session: Session,
        action: Action,
        bundle: PolicyBundle,
        authorizer: Authorizer,
        *,
        dry_run: bool = False,
    ) -> _Evaluation:
        checks: list[CheckResult] = []
        ev = _Evaluation(None, None, None, _label(action.principal), None, "?", checks)

        kind = parse_kind(action.kind) if isinstance(action.kind, str) else None
        if kind is None:
            checks.append(
                CheckResult.failed(
                    "action",
                    f"unknown action kind {str(action.kind)[:63]!r}: see `falaj actions` for the kinds",
                )
            )
            return ev
        ev.kind = kind

        conn = session.connection()
        row = conn.execute(_TENANT_BY_SLUG, {"slug": action.tenant}).first() if isinstance(action.tenant, str) else None
        tenant = TenantView(*row) if row is not None else None
        if tenant is None:
            checks.append(CheckResult.failed("tenant", f"unknown tenant {str(action.tenant)[:63]!r}"))
            return ev
        if tenant.disabled:
            checks.append(CheckResult.failed("tenant", f"tenant {tenant.slug!r} is disabled"))
            return ev
        ev.tenant = tenant

        principal, roles, auth_check = self._authenticate(conn, action.principal, tenant.id, touch=not dry_run)
        checks.append(auth_check)
        if principal is None:
            return ev
        ev.principal = principal
        ev.principal_label = principal.label

        try:
            payload = PAYLOADS[kind].model_validate(action.payload)
        except PydanticValidationError as exc:
            checks.append(CheckResult.failed("payload", _validation_message(exc)))
            return ev
        except Exception as exc:
            checks.append(CheckResult.failed("payload", f"payload could not be read: {exc}"))
            return ev
        ev.payload = payload
        ev.resource = _resource(kind, payload)
        checks.append(CheckResult.passed("payload", f"valid {PAYLOADS[kind].__name__}"))

        rbac = authorizer.check(roles, tenant.slug, kind.resource_type, kind.verb)
        if rbac.outcome is CheckOutcome.FAIL and principal.tenant_id != tenant.id:
            rbac = CheckResult.failed(
                "rbac",
                f"{ev.principal_label} belongs to another tenant and has no role in {tenant.slug!r}",
                "deny-by-default",
            )
        checks.append(rbac)
        if rbac.outcome is CheckOutcome.FAIL:
            return ev

        if kind not in HANDLERS:
            checks.append(
                CheckResult.failed(
                    "handler",
                    f"{kind} is a known action kind but no handler for it is installed in this version",
                )
            )
            return ev

        backend_config = self._target_backend(session, tenant, payload, checks)
        facts = self.facts.load(session, tenant, principal, roles, kind, payload, backend_config)
        checks.extend(self.policy.checks(facts))
        applicable = [spec for spec in self.registry.policy_checks if spec.applies_to(kind.value)]
        if not applicable:
            return ev
        context = CheckContext(
            kind=kind.value,
            tenant=tenant.slug,
            ruleset=tenant.ruleset,
            principal=ev.principal_label,
            principal_kind=principal.kind,
            roles=roles,
            resource=ev.resource,
            payload=payload.model_dump(mode="json", by_alias=True, exclude=_SECRET_FIELDS),
            bundle=bundle,
            backend=backend_config,
            session=session,
        )
        checks.extend(_run_check(spec, context) for spec in applicable)
        return ev

    def _authenticate(
        self,
        conn: Connection,
        credential: TokenCredential | PrincipalRef,
        tenant_id: str,
        *,
        touch: bool | list[str] = True,
    ) -> tuple[PrincipalView | None, frozenset[str], CheckResult]:
        """Who is acting, and their roles in the action's tenant (one query: a row per role).

        ``touch`` records the token's last use (at most once a minute): True writes it on ``conn``; a list
        receives the token id instead, for the caller to write later (a read-only transaction).
        """
        now = datetime.now(UTC)
        row: Any
        rows: Sequence[Any]
        if isinstance(credential, TokenCredential):
            parts = split_token(credential.token) if isinstance(credential.token, str) else None
            if parts is None:
                return (
                    None,
                    NO_ROLES,
                    CheckResult.failed("authenticate", "malformed API token (expected flj_<id>_<secret>)"),
                )
            rows = conn.execute(_TOKEN_BY_PREFIX, {"prefix": parts[0], "tid": tenant_id}).all()
            row = rows[0] if rows else None
            if row is None or not secret_matches(parts[1], row.secret_hash):
                return None, NO_ROLES, CheckResult.failed("authenticate", "unknown API token")
            if row.revoked_at is not None:
                return None, NO_ROLES, CheckResult.failed("authenticate", f"API token {parts[0]} was revoked")
            if row.expires_at is not None and row.expires_at <= now:
                return None, NO_ROLES, CheckResult.failed("authenticate", f"API token {parts[0]} has expired")
            if touch is not False and (row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60):
                if isinstance(touch, list):
                    touch.append(row.token_id)
                else:
                    conn.execute(_TOUCH_TOKEN, {"token_id": row.token_id, "now": now})
        elif isinstance(credential, PrincipalRef):
            rows = conn.execute(_PRINCIPAL_BY_ID, {"pid": credential.principal_id, "tid": tenant_id}).all()
            row = rows[0] if rows else None
            if row is None:
                return (
                    None,
                    NO_ROLES,
                    CheckResult.failed("authenticate", f"unknown principal {credential.principal_id!r}"),
                )
        else:
            return (
                None,
                NO_ROLES,
                CheckResult.failed("authenticate", f"unsupported credential {type(credential).__name__}"),
            )
        principal = PrincipalView(
            id=row.principal_id,
            name=row.name,
            kind=row.kind,
            tenant_id=row.tenant_id,
            label=f"{row.home}/{row.name}",
        )
        if row.disabled:
            return None, NO_ROLES, CheckResult.failed("authenticate", f"principal {principal.label} is disabled")
        roles = frozenset(r.role for r in rows if r.role is not None)
        return principal, roles, CheckResult.passed("authenticate", f"authenticated as {principal.label}")

    def _target_backend(
        self, session: Session, tenant: TenantView, payload: Payload, checks: list[CheckResult]
    ) -> BackendConfig | None:
        name = None
        for field_name in ("storage_backend", "runtime_backend", "backend", "offline_store"):
            value = getattr(payload, field_name, None)
            if isinstance(value, str):
                name = value
                break
        if name is None:
            return None
        row = session.scalar(select(Backend).where(Backend.tenant_id == tenant.id, Backend.name == name))
        if row is None:
            checks.append(CheckResult.failed("backend", f"no backend named {name!r} in tenant {tenant.slug!r}"))
            return None
        if not row.enabled:
            checks.append(CheckResult.failed("backend", f"backend {name!r} is disabled"))
            return None
        if self.registry.backend_spec(row.kind, row.plugin) is None:
            checks.append(
                CheckResult.failed(
                    "backend",
                    f"backend {name!r} needs plugin {row.plugin!r}, which is not available (falaj plugins)",
                )
            )
            return None
        checks.append(CheckResult.passed("backend", f"{row.kind} backend {name!r} in region {row.region}"))
        return self._config(tenant.slug, row)

    # -- backends -------------------------------------------------------------------------------------------
    def _config(self, tenant_slug: str, row: Backend) -> BackendConfig:
        return BackendConfig(
            name=row.name,
            plugin=row.plugin,
            kind=row.kind,
            region=row.region,
            node_class=row.node_class,
            tenant=tenant_slug,
            home=self.settings.home / "backends" / tenant_slug / row.name,
            settings=dict(row.settings),
            data_keys=self.keyring(tenant_slug),
        )

    def keyring(self, tenant_slug: str) -> DataKeyring:
        """The tenant's data keys for encryption at rest (unwrapped with the master key on first use)."""
        ring = self._keyrings.get(tenant_slug)
        if ring is None:
            ring = self._keyrings[tenant_slug] = DataKeyring(self.engine, master_key(self.settings), tenant_slug)
        return ring

    def backend_instance(self, tenant_slug: str, row: Backend) -> Any:
        """The live backend object for a configured backend row (built once per configuration)."""
        config = self._config(tenant_slug, row)
        fingerprint = sha256_digest({"plugin": row.plugin, "region": row.region, "settings": row.settings})
        cached = self._backend_cache.get(row.id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        spec = self.registry.backend_spec(row.kind, row.plugin)
        if spec is None:
            raise BackendError(f"plugin {row.plugin!r} for backend {row.name!r} is not available")
        try:
            instance = spec.factory(config)
        except Exception as exc:
            raise BackendError(f"plugin {row.plugin!r} could not start backend {row.name!r}: {exc}") from exc
        if not isinstance(instance, spec.interface):
            raise BackendError(
                f"plugin {row.plugin!r} returned {type(instance).__name__}, not a {spec.interface.__name__}"
            )
        self._backend_cache[row.id] = (fingerprint, instance)
        return instance


def _run_check(spec: Any, context: CheckContext) -> CheckResult:
    try:
        outcome = spec.check(context)
    except Exception as exc:
        return CheckResult.failed(spec.name, f"check raised {type(exc).__name__}: {exc} (a check that fails denies)")
    if not isinstance(outcome, CheckResult):
        return CheckResult.failed(
            spec.name, f"plugin check returned {type(outcome).__name__}, expected CheckResult (denied)"
        )
    return outcome


def _label(credential: object) -> str:
    describe = getattr(credential, "describe", None)
    if callable(describe):
        return str(describe())
    return f"<{type(credential).__name__}>"


def _resource(kind: ActionKind, payload: Payload) -> str:
    fields = payload.__dict__  # a pydantic model's values; getattr on a missing name raises, slowly
    subject = fields.get("subject_id")
    if isinstance(subject, str):
        # Audit events outlive erasure: they name a data subject by a keyed-free hash, never by the id.
        return f"{kind.resource_type}/subject:{hashlib.sha256(subject.encode('utf-8')).hexdigest()[:16]}"
    for name in _RESOURCE_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and value:
            return f"{kind.resource_type}/{value}"
    return kind.resource_type


def _validation_message(exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc) or "payload"
        message = f"{where}: {err.get('msg', 'invalid')}"
        value = err.get("input")
        # Name the unknown value (an unknown classification, region, role...), but never echo a secret.
        if (
            isinstance(value, str | int | float)
            and not isinstance(value, bool)
            and len(str(value)) <= 63
            and not _SECRET_FIELDS.intersection(loc)
            and err.get("type") not in ("missing", "extra_forbidden")
        ):
            message += f" (got {value!r})"
        parts.append(message)
    more = len(exc.errors()) - 5
    return "invalid payload: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _describe_failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, NotFoundError):
        return str(exc), "not_found"
    if isinstance(exc, ConflictError):
        return str(exc), "conflict"
    if isinstance(exc, ValidationError):
        return str(exc), "validation"
    if isinstance(exc, BackendError):
        return str(exc), "backend"
    if isinstance(exc, IntegrityError):
        return "conflicts with existing state (a duplicate or a missing reference)", "conflict"
    if isinstance(exc, DBAPIError):
        # The driver's message can quote SQL and stored values; the audit log gets the kind of failure only.
        log.warning("database error during an action: %s", exc)
        return f"the database refused the change ({type(exc.orig).__name__ if exc.orig else 'error'})", "internal"
    if isinstance(exc, FalajError):
        return str(exc), "internal"
    return f"backend raised {type(exc).__name__}: {exc}", "backend"


_INSERT_OPERATION = insert(Operation)


def payload_sha256(kind: object, payload: object) -> str:
    """Digest of what the caller asked for, whatever its types (values that JSON lacks become strings)."""
    data = orjson.dumps(
        {"kind": kind, "payload": payload}, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
    )
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Statements of the hot path, built once (building a statement costs more than running it on SQLite).
_TENANT_BY_SLUG = select(Tenant.id, Tenant.slug, Tenant.ruleset, Tenant.disabled).where(
    Tenant.slug == bindparam("slug")
)
# The principal's roles in the action's tenant come along with the principal, a row per role.
_ROLE_IN_TENANT = RoleAssignment
_ROLE_IN_TENANT_ON = (RoleAssignment.principal_id == Principal.id) & (RoleAssignment.tenant_id == bindparam("tid"))
_PRINCIPAL_COLUMNS = (
    Principal.id.label("principal_id"),
    Principal.name,
    Principal.kind,
    Principal.disabled,
    Principal.tenant_id,
    Tenant.slug.label("home"),
    RoleAssignment.role,
)
_TOKEN_BY_PREFIX = (
    select(
        ApiToken.id.label("token_id"),
        ApiToken.secret_hash,
        ApiToken.revoked_at,
        ApiToken.expires_at,
        ApiToken.last_used_at,
        *_PRINCIPAL_COLUMNS,
    )
    .join(Principal, ApiToken.principal_id == Principal.id)
    .join(Tenant, Principal.tenant_id == Tenant.id)
    .outerjoin(_ROLE_IN_TENANT, _ROLE_IN_TENANT_ON)
    .where(ApiToken.prefix == bindparam("prefix"))
)
_PRINCIPAL_BY_ID = (
    select(*_PRINCIPAL_COLUMNS)
    .join(Tenant, Principal.tenant_id == Tenant.id)
    .outerjoin(_ROLE_IN_TENANT, _ROLE_IN_TENANT_ON)
    .where(Principal.id == bindparam("pid"))
)
_TOUCH_TOKEN = update(ApiToken).where(ApiToken.id == bindparam("token_id")).values(last_used_at=bindparam("now"))
_ACTIVE_BUNDLE = (
    select(PolicyBundleRecord.digest, PolicyBundleRecord.files)
    .where(PolicyBundleRecord.activated_at.is_not(None))
    .order_by(PolicyBundleRecord.activated_at.desc())
    .limit(1)
)
