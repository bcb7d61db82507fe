"""Event webhooks: subscriptions per tenant and event type, delivered from the audit log as outbox.

The outbox is the audit log itself. Every action appends its audit event in the same transaction as its
effects, so an event exists exactly when the action committed, in one total order (``seq``). The
dispatcher keeps a cursor (the last ``seq`` fanned out), turns each new event into a delivery row per
matching subscription (in one transaction with the cursor move, so nothing is skipped or doubled), and
sends due deliveries with retries and exponential backoff. A delivery is claimed with a lease before it is
sent, so several server workers can run dispatchers side by side without sending one delivery twice at
once.

Each request carries::

    Falaj-Webhook-Id: <delivery id>          (the same across retries: receivers deduplicate on it)
    Falaj-Webhook-Timestamp: <unix seconds>
    Falaj-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
    Falaj-Event-Type: <action kind>

Targets resolving to private, loopback, link-local or otherwise non-public addresses are refused, at
subscription and again at every delivery (the name may resolve elsewhere later), unless a tenant admin
allow-listed the range (``webhook.allow_target``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from falaj.core.domain import (
    AuditEvent,
    Operation,
    Tenant,
    WebhookAllowEntry,
    WebhookCursor,
    WebhookDelivery,
    WebhookSubscription,
)
from falaj.core.errors import ValidationError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Falaj-Webhook-Signature"
TIMESTAMP_HEADER = "Falaj-Webhook-Timestamp"
ID_HEADER = "Falaj-Webhook-Id"
EVENT_HEADER = "Falaj-Event-Type"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``base * 2**(attempt-1)`` seconds, capped, with +-20% jitter."""

    base_seconds: float = 5.0
    cap_seconds: float = 3600.0
    max_attempts: int = 8
    timeout_seconds: float = 10.0

    def delay(self, attempt: int) -> float:
        raw = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return float(raw * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not security


# -- the signing secret -----------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _aead(master: bytes) -> AESGCM:
    key = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"falaj webhook secrets v1").derive(master)
    return AESGCM(key)


def encrypt_secret(secret: str, master: bytes, subscription_id: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = _aead(master).encrypt(nonce, secret.encode("utf-8"), subscription_id.encode("ascii"))
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_secret(blob: str, master: bytes, subscription_id: str) -> str:
    raw = base64.b64decode(blob)
    return _aead(master).decrypt(raw[:12], raw[12:], subscription_id.encode("ascii")).decode("utf-8")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(secret: str, headers: dict[str, str], body: bytes, *, tolerance: float = 300.0) -> bool:
    """What a receiver does: recompute the HMAC and refuse stale timestamps (replays)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lowered[TIMESTAMP_HEADER.lower()])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, ts, body)
    return any(
        hmac.compare_digest(expected, part.strip()) for part in lowered.get(SIGNATURE_HEADER.lower(), "").split(",")
    )


# -- target checks -----------------------------------------------------------------------------------------
def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        return [literal]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValidationError(f"webhook host {host!r} does not resolve: {exc}") from exc
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def check_target(url: str, allowlist: Iterable[str]) -> list[str]:
    """Refuse a URL whose host resolves to a non-public address outside ``allowlist`` (CIDRs).

    Returns the resolved addresses. Raises ValidationError naming the address and what to do.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError("url: must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValidationError("url: credentials in the URL are not allowed; the request is signed instead")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    networks = [ipaddress.ip_network(c, strict=False) for c in allowlist]
    addresses = _resolve(parts.hostname, port)
    for ip in addresses:
        if _public(ip):
            continue
        if not any(ip in net for net in networks):
            raise ValidationError(
                f"url: {parts.hostname} resolves to {ip}, a private, loopback or reserved address; a tenant "
                "admin must allow-list its range first (webhook.allow_target)"
            )
    if parts.scheme == "http" and any(_public(ip) for ip in addresses):
        raise ValidationError("url: public targets must use https")
    return [str(ip) for ip in addresses]


def parse_cidr(raw: str) -> str:
    try:
        return str(ipaddress.ip_network(raw.strip(), strict=False))
    except ValueError as exc:
        raise ValidationError(f"cidr: {raw[:49]!r} is not an IP network (e.g. 10.20.0.0/16 or 127.0.0.1/32)") from exc


def allowlist_of(session: Session, tenant_id: str) -> list[str]:
    return list(session.scalars(select(WebhookAllowEntry.cidr).where(WebhookAllowEntry.tenant_id == tenant_id)))


def matches(patterns: Sequence[str], event_type: str) -> bool:
    resource = event_type.partition(".")[0]
    return any(p == "*" or p == event_type or p == f"{resource}.*" for p in patterns)


# -- the dispatcher --------------------------------------------------------------------------------------
class Dispatcher:
    """Fans audit events out to subscriptions and delivers them. ``run_once`` is one pass; ``start`` loops."""

    CURSOR_ID = 1

    def __init__(
        self,
        engine: Engine,
        master_key: bytes,
        *,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
        batch: int = 200,
    ) -> None:
        import httpx

        self.engine = engine
        self.master = master_key
        self.retry = retry or RetryPolicy()
        self.client = client or httpx.Client(timeout=self.retry.timeout_seconds, follow_redirects=False)
        self.batch = batch
        self.worker = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- fan-out ----------------------------------------------------------------------------------------
    def fan_out(self) -> int:
        """Turn audit events after the cursor into deliveries; returns how many deliveries were made."""
        made = 0
        with Session(self.engine) as session:
            cursor = session.execute(
                select(WebhookCursor).where(WebhookCursor.id == self.CURSOR_ID).with_for_update()
            ).scalar_one_or_none()
            if cursor is None:
                # Start where the oldest subscription starts (nothing it asked for is skipped), or at the head.
                head = session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0
                oldest = session.scalar(select(func.min(WebhookSubscription.from_seq)))
                cursor = WebhookCursor(id=self.CURSOR_ID, seq=min(head, oldest) if oldest is not None else head)
                session.add(cursor)
                session.commit()
                return 0
            subs = session.execute(
                select(WebhookSubscription, Tenant.slug)
                .join(Tenant, Tenant.id == WebhookSubscription.tenant_id)
                .where(WebhookSubscription.active.is_(True))
            ).all()
            rows = session.execute(
                select(AuditEvent, Operation.id)
                .outerjoin(Operation, Operation.audit_seq == AuditEvent.seq)
                .where(AuditEvent.seq > cursor.seq)
                .order_by(AuditEvent.seq)
                .limit(self.batch)
            ).all()
            if not rows:
                session.rollback()
                return 0
            now = datetime.now(UTC)
            by_tenant: dict[str, list[WebhookSubscription]] = {}
            for sub, slug in subs:
                by_tenant.setdefault(slug, []).append(sub)
            for event, operation_id in rows:
                for sub in by_tenant.get(event.tenant, ()):
                    if event.seq <= sub.from_seq or event.outcome not in sub.outcomes:
                        continue
                    if not matches(sub.event_types, event.action):
                        continue
                    body = json.dumps(
                        {
                            "id": f"evt_{event.seq}",
                            "type": event.action,
                            "outcome": event.outcome,
                            "tenant": event.tenant,
                            "principal": event.principal,
                            "resource": event.resource,
                            "occurred_at": event.ts,
                            "audit_seq": event.seq,
                            "audit_hash": event.hash,
                            "operation_id": operation_id,
                            "subscription": sub.name,
                        },
                        sort_keys=True,
                        separators=(",", ":"),
                    )
                    session.add(
                        WebhookDelivery(
                            subscription_id=sub.id,
                            tenant_id=sub.tenant_id,
                            event_seq=event.seq,
                            event_type=event.action,
                            generation=0,
                            body=body,
                            status="pending",
                            attempts=0,
                            next_attempt_at=now,
                            history=[],
                        )
                    )
                    made += 1
            cursor.seq = rows[-1][0].seq
            session.commit()
        return made

    # -- delivery ---------------------------------------------------------------------------------------
    def _claim(self, session: Session, now: datetime) -> list[WebhookDelivery]:
        due = list(
            session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                    or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(self.batch)
            )
        )
        claimed = []
        lease = now + timedelta(seconds=self.retry.timeout_seconds * 3)
        for d in due:
            got = session.execute(
                update(WebhookDelivery)
                .where(
                    and_(
                        WebhookDelivery.id == d.id,
                        WebhookDelivery.status == "pending",
                        or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                    )
                )
                .values(lease_until=lease)
            )
            if getattr(got, "rowcount", 0) == 1:
                claimed.append(d)
        session.commit()
        return claimed

    def deliver_due(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session:
            claimed = self._claim(session, now)
            attempted = 0
            for delivery in claimed:
                sub = session.get(WebhookSubscription, delivery.subscription_id)
                if sub is None or not sub.active:
                    delivery.status, delivery.last_error, delivery.lease_until = "cancelled", "unsubscribed", None
                    session.commit()
                    continue
                self._send(session, sub, delivery)
                attempted += 1
        return attempted

    def _send(self, session: Session, sub: WebhookSubscription, delivery: WebhookDelivery) -> None:
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            check_target(sub.url, allowlist_of(session, sub.tenant_id))
            secret = decrypt_secret(sub.secret_encrypted, self.master, sub.id)
            body = delivery.body.encode("utf-8")
            ts = int(time.time())
            response = self.client.post(
                sub.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "Falaj-Webhooks/1",
                    ID_HEADER: delivery.id,
                    TIMESTAMP_HEADER: str(ts),
                    SIGNATURE_HEADER: sign(secret, ts, body),
                    EVENT_HEADER: delivery.event_type,
                },
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except ValidationError as exc:
            error = str(exc)
        except Exception as exc:  # the receiver is down, slow or answers garbage: retried later
            error = f"{type(exc).__name__}: {exc}"[:500]
        now = datetime.now(UTC)
        delivery.attempts += 1
        delivery.history = [
            *delivery.history,
            {
                "at": now.isoformat(),
                "attempt": delivery.attempts,
                "status_code": status_code,
                "error": error,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        ][-20:]
        delivery.last_status_code, delivery.last_error, delivery.lease_until = status_code, error, None
        if error is None:
            delivery.status, delivery.delivered_at = "delivered", now
        elif delivery.attempts >= self.retry.max_attempts:
            delivery.status = "failed"
        else:
            delivery.next_attempt_at = now + timedelta(seconds=self.retry.delay(delivery.attempts))
        session.commit()

    def run_once(self) -> tuple[int, int]:
        return self.fan_out(), self.deliver_due()

    # -- background loop --------------------------------------------------------------------------------
    def start(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    made, sent = self.run_once()
                except Exception:
                    log.exception("webhook dispatcher pass failed")
                    made = sent = 0
                if not (made or sent):
                    self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="falaj-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.client.close()
