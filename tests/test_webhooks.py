"""Webhooks through the real server (two workers, so two dispatchers) and a real receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from falaj.core.webhooks import ID_HEADER, verify_signature
from tests.apiserver import Server, auth, running_server


class Receiver:
    """An HTTP endpoint that records every request and answers what ``status`` says."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status: Callable[[int], int] = lambda n: 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(receiver.status(len(receiver.requests)))
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests arrived, {count} expected")
            time.sleep(0.05)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(request, tmp_path_factory) -> Iterator[Server]:
    env = {"FALAJ_WEBHOOK_RETRY_BASE": "0.3", "FALAJ_WEBHOOK_MAX_ATTEMPTS": "3", "FALAJ_WEBHOOK_INTERVAL": "0.05"}
    with running_server(request, tmp_path_factory.mktemp("hooks"), request.param, env, workers=2) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


_n = iter(range(1000))


def _tenant(srv: Server) -> tuple[str, str, str]:
    slug = f"hooks{next(_n)}"
    admin = srv.tenant(slug)
    eng = srv.principal(slug, admin, "eng", "ml-engineer")
    return slug, admin, eng


def _subscribe(srv: Server, slug: str, admin: str, url: str, **extra: object) -> str:
    h = auth(admin)
    body = {"name": "erp", "url": url, "event_types": ["model.*"]} | extra
    r = srv.client.post(f"/api/v1/tenants/{slug}/webhooks", headers=h, json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["secret"])


def _deliveries(srv: Server, slug: str, admin: str) -> list[dict]:
    r = srv.client.get(f"/api/v1/tenants/{slug}/webhook-deliveries", headers=auth(admin), params={"sort": "created_at"})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_private_and_loopback_targets_need_an_allow_list(srv, receiver):
    slug, admin, _ = _tenant(srv)
    h, c = auth(admin), srv.client
    for url in (receiver.url, "https://10.1.2.3/hook", "https://[::1]/hook", "https://169.254.169.254/latest"):
        r = c.post(f"/api/v1/tenants/{slug}/webhooks", headers=h, json={"name": "x", "url": url, "event_types": ["*"]})
        assert r.status_code == 422 and "allow-list" in r.json()["detail"], (url, r.text)
    r = c.post(
        f"/api/v1/tenants/{slug}/webhooks",
        headers=h,
        json={"name": "x", "url": "http://8.8.8.8/h", "event_types": ["*"]},
    )
    assert r.status_code == 422 and "https" in r.json()["detail"]
    bad = c.post(f"/api/v1/tenants/{slug}/webhook-allowlist", headers=h, json={"cidr": "not-a-net", "note": "x"})
    assert bad.status_code == 422
    # Only an admin may allow-list; the ML engineer may not.
    eng = srv.principal(slug, admin, "e2", "ml-engineer")
    body = {"cidr": "127.0.0.0/8", "note": "the test receiver"}
    assert c.post(f"/api/v1/tenants/{slug}/webhook-allowlist", headers=auth(eng), json=body).status_code == 403
    assert c.post(f"/api/v1/tenants/{slug}/webhook-allowlist", headers=h, json=body).status_code == 201
    _subscribe(srv, slug, admin, receiver.url)


def test_events_are_delivered_signed_once_each(srv, receiver):
    slug, admin, eng = _tenant(srv)
    h = auth(admin)
    srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "before"})  # not delivered
    srv.client.post(f"/api/v1/tenants/{slug}/webhook-allowlist", headers=h, json={"cidr": "127.0.0.1/32", "note": "t"})
    secret = _subscribe(srv, slug, admin, receiver.url)
    for name in ("m1", "m2", "m3"):
        assert (
            srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": name}).status_code == 201
        )
    body = {"name": "b", "kind": "storage", "plugin": "local", "region": "uaenorth"}
    srv.client.post(f"/api/v1/tenants/{slug}/backends", headers=h, json=body)  # not a model.* event
    srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "m1"})  # failed: not subscribed
    receiver.wait(3)
    time.sleep(1.0)  # anything duplicated or unwanted would arrive by now
    assert len(receiver.requests) == 3
    events = []
    for headers, raw in receiver.requests:
        assert verify_signature(secret, headers, raw)
        assert not verify_signature(secret, headers, raw + b" ")
        assert not verify_signature("whsec_wrong", headers, raw)
        events.append(json.loads(raw))
    assert [e["type"] for e in events] == ["model.register"] * 3
    assert sorted(e["resource"] for e in events) == ["model/m1", "model/m2", "model/m3"]
    assert all(e["outcome"] == "succeeded" and e["tenant"] == slug for e in events)
    assert len({h[ID_HEADER] for h, _ in receiver.requests}) == 3
    seqs = [e["audit_seq"] for e in events]
    assert seqs == sorted(seqs)  # in the order the actions committed
    history = _deliveries(srv, slug, admin)
    assert [d["status"] for d in history] == ["delivered"] * 3 and all(d["attempts"] == 1 for d in history)


def test_failures_are_retried_with_backoff_then_given_up_and_redelivered(srv, receiver):
    slug, admin, eng = _tenant(srv)
    h = auth(admin)
    srv.client.post(f"/api/v1/tenants/{slug}/webhook-allowlist", headers=h, json={"cidr": "127.0.0.1/32", "note": "t"})
    receiver.status = lambda n: 500 if n <= 2 else 200
    _subscribe(srv, slug, admin, receiver.url)
    srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "flaky"})
    receiver.wait(3)
    time.sleep(0.5)
    (delivery,) = _deliveries(srv, slug, admin)
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["history"]] == [500, 500, 200]
    at = [datetime.fromisoformat(a["at"]) for a in delivery["history"]]
    first_gap, second_gap = (at[1] - at[0]).total_seconds(), (at[2] - at[1]).total_seconds()
    assert first_gap >= 0.3 * 0.8 and second_gap > first_gap  # exponential: 0.3 s, then 0.6 s (+-20%)
    assert len({hd[ID_HEADER] for hd, _ in receiver.requests}) == 1  # the same id on every retry

    # A receiver that stays down: given up after the maximum attempts (3 here), then redelivered by hand.
    receiver.status = lambda n: 503
    srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "down"})
    receiver.wait(6)
    deadline = time.monotonic() + 10
    while True:
        failed = [d for d in _deliveries(srv, slug, admin) if d["status"] == "failed"]
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(failed) == 1 and failed[0]["attempts"] == 3 and failed[0]["last_status_code"] == 503
    receiver.status = lambda n: 200
    r = srv.client.post(
        f"/api/v1/tenants/{slug}/webhook-deliveries/redeliver", headers=h, json={"delivery_id": failed[0]["id"]}
    )
    assert r.status_code == 201, r.text
    receiver.wait(7)
    time.sleep(0.3)
    again = [d for d in _deliveries(srv, slug, admin) if d["generation"] == 1]
    assert len(again) == 1 and again[0]["status"] == "delivered"
    assert json.loads(receiver.requests[-1][1])["resource"] == "model/down"
    # Unsubscribed: nothing more arrives.
    srv.client.post(f"/api/v1/tenants/{slug}/webhooks/unsubscribe", headers=h, json={"name": "erp"})
    count = len(receiver.requests)
    srv.client.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "after"})
    time.sleep(1.0)
    assert len(receiver.requests) == count
