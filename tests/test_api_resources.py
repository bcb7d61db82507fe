"""Lists, items, idempotency, streamed uploads and reports through the real server process."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from falaj.core.reports import verify_report
from tests.apiserver import Server, auth, running_server

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(request, tmp_path_factory) -> Iterator[Server]:
    # A small upload limit, so a test can pass it without sending gigabytes.
    env = {"FALAJ_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024), "FALAJ_WEBHOOKS": "off"}
    with running_server(request, tmp_path_factory.mktemp("api"), request.param, env) as server:
        yield server


_counter = iter(range(10_000))


@pytest.fixture
def acme(srv) -> tuple[str, str, str]:
    """A fresh tenant: (slug, admin token, ml-engineer token), with a storage backend named 'store'."""
    slug = f"t{next(_counter)}-{threading.get_ident() % 1000}"
    admin = srv.tenant(slug)
    eng = srv.principal(slug, admin, "eng", "ml-engineer")
    r = srv.client.post(
        f"/api/v1/tenants/{slug}/backends",
        headers=auth(admin),
        json={"name": "store", "kind": "storage", "plugin": "local", "region": "me-central-1"},
    )
    assert r.status_code == 201, r.text
    return slug, admin, eng


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> dict[str, str]:
    return {"X-Content-SHA256": hashlib.sha256(data).hexdigest()}


# -- lists and items -------------------------------------------------------------------------------------
def test_lists_page_by_cursor_filter_and_sort(srv, acme):
    slug, admin, _ = acme
    c, h = srv.client, auth(admin)
    for i in range(7):
        region = "me-dubai-1" if i % 2 else "uaenorth"
        body = {"name": f"b{i}", "kind": "storage", "plugin": "local", "region": region}
        assert c.post(f"/api/v1/tenants/{slug}/backends", headers=h, json=body).status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "sort": "name"} | ({"cursor": cursor} if cursor else {})
        page = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params=params).json()
        assert len(page["items"]) <= 3
        seen += [b["name"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(["store"] + [f"b{i}" for i in range(7)])  # every row once, in order
    desc = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params={"sort": "-name", "limit": 200}).json()
    assert [b["name"] for b in desc["items"]] == sorted(seen, reverse=True)
    dubai = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params={"region": "me-dubai-1"}).json()
    assert sorted(b["name"] for b in dubai["items"]) == ["b1", "b3", "b5"]
    item = c.get(f"/api/v1/tenants/{slug}/backends/b3", headers=h)
    assert item.status_code == 200 and item.json()["region"] == "me-dubai-1"


def test_list_input_errors_are_400_and_unknown_items_404(srv, acme):
    slug, admin, _ = acme
    c, h = srv.client, auth(admin)
    body = {"name": "second", "kind": "storage", "plugin": "local", "region": "uaenorth"}
    assert c.post(f"/api/v1/tenants/{slug}/backends", headers=h, json=body).status_code == 201
    first = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params={"limit": 1, "sort": "name"}).json()
    assert first["next_cursor"]
    other_sort = c.get(
        f"/api/v1/tenants/{slug}/backends", headers=h, params={"cursor": first["next_cursor"], "sort": "-name"}
    )
    assert other_sort.status_code == 400 and "sort" in other_sort.json()["detail"]
    garbage = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params={"cursor": "!!not-a-cursor"})
    assert garbage.status_code == 400 and garbage.headers["content-type"].startswith(PROBLEM)
    for params in ({"limit": 0}, {"limit": "many"}, {"sort": "secret"}, {"enabled": "perhaps"}):
        r = c.get(f"/api/v1/tenants/{slug}/backends", headers=h, params=params)
        assert r.status_code == 422, (params, r.text)
        assert [e["field"] for e in r.json()["errors"]] == list(params)
    missing = c.get(f"/api/v1/tenants/{slug}/backends/nope", headers=h)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_reads_are_governed_and_denials_audited(srv, acme):
    slug, admin, eng = acme
    c = srv.client
    # The ML engineer reads backends, but consent records are personal data: denied, and audited.
    assert c.get(f"/api/v1/tenants/{slug}/backends", headers=auth(eng)).status_code == 200
    denied = c.get(f"/api/v1/tenants/{slug}/consents", headers=auth(eng))
    assert denied.status_code == 403 and "consent.read" in denied.json()["detail"]
    seq = denied.json()["audit_seq"]
    auditor = srv.principal(slug, admin, "aud", "auditor")
    events = c.get(f"/api/v1/tenants/{slug}/audit-events", headers=auth(auditor), params={"action": "consent.read"})
    assert [e["seq"] for e in events.json()["items"]] == [seq]
    assert events.json()["items"][0]["outcome"] == "denied"
    # No token: 401. Another tenant's resource answers 404 like a missing tenant.
    assert c.get(f"/api/v1/tenants/{slug}/backends").status_code == 401
    other = srv.tenant(f"{slug}-x")
    assert c.get(f"/api/v1/tenants/{slug}/backends/store", headers=auth(other)).status_code == 404
    assert c.get("/api/v1/tenants/no-such-tenant/backends", headers=auth(other)).status_code == 404
    # Exporting the audit log is for the platform roles, not a tenant admin.
    export = c.post(f"/api/v1/tenants/{slug}/audit/exports", headers=auth(admin), json={"destination": "e1"})
    assert export.status_code == 403
    export = c.post("/api/v1/tenants/operator/audit/exports", headers=auth(srv.token), json={"destination": slug})
    assert export.status_code == 201 and export.json()["data"]["events"] > 0
    # Token hashes never leave the server.
    tokens = c.get(f"/api/v1/tenants/{slug}/tokens", headers=auth(admin)).json()["items"]
    assert tokens and all("hash" not in json.dumps(t) for t in tokens)


# -- idempotency ---------------------------------------------------------------------------------------------
def test_idempotency_key_replays_the_first_answer_and_refuses_reuse(srv, acme):
    slug, _, eng = acme
    c = srv.client
    h = auth(eng) | {"Idempotency-Key": f"create-fraud-{slug}"}
    first = c.post(f"/api/v1/tenants/{slug}/models", headers=h, json={"name": "fraud"})
    again = c.post(f"/api/v1/tenants/{slug}/models", headers=h, json={"name": "fraud"})
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotency-replayed"] == "true"
    assert again.json()["operation_id"] == first.json()["operation_id"]
    assert again.json()["data"] == first.json()["data"]
    # Without the key the same request is a conflict: the model exists once.
    assert c.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "fraud"}).status_code == 409
    reused = c.post(f"/api/v1/tenants/{slug}/models", headers=h, json={"name": "other"})
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
    models = c.get(f"/api/v1/tenants/{slug}/models", headers=auth(eng)).json()["items"]
    assert [m["name"] for m in models] == ["fraud"]


def test_concurrent_requests_with_one_key_do_the_action_once(srv, acme):
    slug, admin, eng = acme
    h = auth(eng) | {"Idempotency-Key": f"race-{slug}"}
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            answers.append(client.post(f"/api/v1/tenants/{slug}/models", headers=h, json={"name": "raced"}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert len({a.json()["operation_id"] for a in answers}) == 1
    auditor = srv.principal(slug, admin, "aud2", "auditor")
    done = srv.client.get(
        f"/api/v1/tenants/{slug}/operations", headers=auth(auditor), params={"kind": "model.register"}
    ).json()["items"]
    assert len([o for o in done if o["outcome"] == "succeeded"]) == 1


# -- uploads -----------------------------------------------------------------------------------------------------
def test_artifact_upload_streams_checks_the_digest_and_registers(srv, acme):
    slug, _, eng = acme
    c = srv.client
    weights = bytes(range(256)) * 20_000  # 5 MB: streamed in chunks, stored by the storage plugin
    body = _tar({"model.onnx": b"onnx-graph", "weights/model.onnx.data": weights, "./config.json": b"{}"})
    url = f"/api/v1/tenants/{slug}/artifacts/uploads"
    r = c.put(url, params={"storage_backend": "store"}, headers=auth(eng) | _sha(body), content=body)
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["files"] == {"model.onnx": 10, "weights/model.onnx.data": len(weights), "config.json": 2}
    assert data["upload_sha256"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert c.post(f"/api/v1/tenants/{slug}/models", headers=auth(eng), json={"name": "m"}).status_code == 201
    version = {"model": "m", "artifact_digest": data["artifact_digest"], "storage_backend": "store"}
    reg = c.post(f"/api/v1/tenants/{slug}/model-versions", headers=auth(eng), json=version)
    assert reg.status_code == 201, reg.text
    listed = c.get(f"/api/v1/tenants/{slug}/model-versions", headers=auth(eng), params={"model": "m"}).json()
    assert [v["artifact_digest"] for v in listed["items"]] == [data["artifact_digest"]]
    manifest = c.get(f"/api/v1/tenants/{slug}/models/m/versions/1/artifact", headers=auth(eng)).json()
    assert {f["path"]: f["size"] for f in manifest["files"]} == data["files"]
    digests = {f["path"]: f["digest"] for f in manifest["files"]}
    assert digests["weights/model.onnx.data"] == "sha256:" + hashlib.sha256(weights).hexdigest()
    assert c.get(f"/api/v1/tenants/{slug}/models/m/versions/2/artifact", headers=auth(eng)).status_code == 404
    # RFC 9530 Repr-Digest works as well; a single file is an artifact too.
    one = b"\x00\x01" * 1000
    digest = base64.b64encode(hashlib.sha256(one).digest()).decode()
    r = c.put(
        url,
        params={"storage_backend": "store", "layout": "file", "filename": "model.onnx"},
        headers=auth(eng) | {"Repr-Digest": f"sha-256=:{digest}:"},
        content=one,
    )
    assert r.status_code == 201 and r.json()["data"]["files"] == {"model.onnx": 2000}
    assert not any((srv.home / "uploads" / slug).iterdir())  # staging files are gone


def test_bad_uploads_are_refused_and_leave_nothing(srv, acme):
    slug, admin, eng = acme
    c, url = srv.client, f"/api/v1/tenants/{slug}/artifacts/uploads"
    q = {"storage_backend": "store"}
    body = _tar({"a": b"1"})
    assert c.put(url, params=q, headers=auth(eng), content=body).status_code == 400  # no digest sent
    wrong = c.put(url, params=q, headers=auth(eng) | {"X-Content-SHA256": "0" * 64}, content=body)
    assert wrong.status_code == 422 and "SHA-256" in wrong.json()["detail"]
    evil = _tar({"../../escape": b"x"})
    r = c.put(url, params=q, headers=auth(eng) | _sha(evil), content=evil)
    assert r.status_code == 422 and "outside the artifact" in r.json()["detail"]
    junk = b"not a tar archive at all" * 100
    r = c.put(url, params=q, headers=auth(eng) | _sha(junk), content=junk)
    assert r.status_code == 422 and "tar" in r.json()["detail"]
    # Over the limit: 413, whether the length is declared or the body is streamed without one.
    big = b"\0" * (8 * 1024 * 1024 + 1)
    assert c.put(url, params=q, headers=auth(eng) | _sha(big), content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(9):
            yield b"\0" * (1024 * 1024)

    r = c.put(url, params=q, headers=auth(eng) | {"X-Content-SHA256": "1" * 64}, content=chunks())
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM)
    # Not allowed to upload (admin has no artifact.upload): refused before a byte is stored.
    r = c.put(url, params=q, headers=auth(admin) | _sha(body), content=body)
    assert r.status_code == 403
    assert c.put(url, params={"storage_backend": "nope"}, headers=auth(eng) | _sha(body), content=body).status_code in (
        403,
        404,
    )
    assert not any((srv.home / "uploads" / slug).iterdir())


# -- reports -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "csv", "pdf"])
def test_report_export_download_and_signature(srv, acme, fmt):
    slug, admin, _ = acme
    c, h = srv.client, auth(admin)
    body = {"period_start": "2026-01-01T00:00:00Z", "period_end": "2030-01-01T00:00:00Z", "format": fmt}
    r = c.post(f"/api/v1/tenants/{slug}/reports", headers=h, json=body)
    assert r.status_code == 201, r.text
    report_id = r.json()["data"]["report_id"]
    content = c.get(f"/api/v1/tenants/{slug}/reports/{report_id}/content", headers=h)
    assert content.status_code == 200
    signature = c.get(f"/api/v1/tenants/{slug}/reports/{report_id}/signature", headers=h).json()
    public = (srv.home / "keys" / "audit-ed25519.pub.pem").read_bytes()
    assert isinstance(load_pem_public_key(public), Ed25519PublicKey)
    verify_report(content.content, signature, public)
    with pytest.raises(ValueError):
        verify_report(content.content + b" ", signature, public)
    if fmt == "json":
        report = content.json()
        schema = c.get("/api/v1/schemas/compliance-report.json").json()
        import jsonschema

        jsonschema.validate(report, schema)
        assert report["header"]["tenant"] == slug
        assert report["processing_locations"] and report["controls"]
    elif fmt == "pdf":
        assert content.content.startswith(b"%PDF")
    listed = c.get(f"/api/v1/tenants/{slug}/reports", headers=h).json()["items"]
    assert report_id in [x["id"] for x in listed]
    # An ML engineer may not read reports; another tenant gets 404.
    eng = srv.principal(slug, admin, f"e-{fmt}", "ml-engineer")
    assert c.get(f"/api/v1/tenants/{slug}/reports/{report_id}/content", headers=auth(eng)).status_code == 403
    bad = c.post(f"/api/v1/tenants/{slug}/reports", headers=h, json=body | {"format": "docx"})
    assert bad.status_code == 422 and "format" in bad.json()["detail"]


def test_cli_report_export_and_verify(srv, acme, tmp_path: Path):
    slug, admin, _ = acme
    out = tmp_path / "report.pdf"
    cmd = [sys.executable, "-m", "falaj.api.cli", "report", "export", "--tenant", slug, "--token", admin]
    run = subprocess.run(
        [*cmd, "--from", "2026-01-01", "--to", "2030-01-01", "--format", "pdf", "--out", str(out)],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    key = srv.home / "keys" / "audit-ed25519.pub.pem"
    verify = [sys.executable, "-m", "falaj.api.cli", "report", "verify", str(out), "--public-key", str(key)]
    ok = subprocess.run(verify, env=srv.env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "verified" in ok.stdout
    out.write_bytes(out.read_bytes().replace(b"%PDF", b"%PDX", 1))
    bad = subprocess.run(verify, env=srv.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NOT VERIFIED" in bad.stdout


# -- the feature store over REST ---------------------------------------------------------------------------
def test_feature_store_over_rest(srv, acme):
    slug, admin, eng = acme
    h, he = auth(admin), auth(eng)
    c = srv.client
    for name, plugin in (("offline", "parquet-offline"), ("online", "sqlite-online")):
        r = c.post(
            f"/api/v1/tenants/{slug}/backends",
            headers=h,
            json={"name": name, "kind": "feature_store", "plugin": plugin, "region": "me-central-1"},
        )
        assert r.status_code == 201, r.text
    folder = srv.home / "data" / slug
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["store_id,event_timestamp,sales,open"]
    for s in range(5):
        for day in (1, 2):
            rows.append(f"{s},2026-11-0{day}T00:00:00+00:00,{s * 100 + day},true")
    (folder / "stores.csv").write_text("\n".join(rows) + "\n")
    r = c.post(
        f"/api/v1/tenants/{slug}/datasets",
        headers=he,
        json={
            "name": "stores",
            "classification": "internal",
            "residency": "AE",
            "uri": (folder / "stores.csv").as_uri(),
        },
    )
    assert r.status_code == 201, r.text
    r = c.post(
        f"/api/v1/tenants/{slug}/entities",
        headers=he,
        json={"name": "store", "join_keys": [{"name": "store_id", "dtype": "int64"}]},
    )
    assert r.status_code == 201, r.text
    view = {
        "name": "store_sales",
        "entities": ["store"],
        "features": [{"name": "sales", "dtype": "float64"}, {"name": "open", "dtype": "bool"}],
        "source_dataset": "stores",
        "offline_store": "offline",
        "online_store": "online",
        "expectations": [{"type": "range", "column": "sales", "min": 0}],
    }
    r = c.post(f"/api/v1/tenants/{slug}/feature-views", headers=he, json=view)
    assert r.status_code == 201 and r.json()["data"]["version"] == 1, r.text
    # A bad definition is a 422 naming the problem; an unknown store a 404.
    r = c.post(f"/api/v1/tenants/{slug}/feature-views", headers=he, json={**view, "features": []})
    assert r.status_code == 422 and "features" in r.json()["detail"], r.text
    r = c.post(f"/api/v1/tenants/{slug}/feature-views", headers=he, json={**view, "online_store": "nope"})
    assert r.status_code == 404, r.text
    r = c.post(f"/api/v1/tenants/{slug}/feature-views/materialize", headers=he, json={"name": "store_sales"})
    assert r.status_code == 200 and r.json()["data"]["entities_written"] == 5, r.text
    r = c.post(
        f"/api/v1/tenants/{slug}/features/online",
        headers=he,
        json={
            "purpose": "feature-serving",
            "features": ["store_sales:sales"],
            "entities": [{"store_id": 3}, {"store_id": 99}, {"store_id": "3"}],
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert got[0]["values"] == {"sales": 302.0} and got[0]["status"]["store_sales"]["status"] == "present"
    assert [g["status"]["store_sales"]["status"] for g in got[1:]] == ["not_found", "invalid_key"]
    r = c.post(
        f"/api/v1/tenants/{slug}/features/online",
        headers=he,
        json={"purpose": "feature-serving", "entities": [{"store_id": 3}]},
    )
    assert r.status_code == 400 and "feature_service" in r.json()["detail"], r.text
    r = c.post(
        f"/api/v1/tenants/{slug}/features/historical",
        headers=he,
        json={
            "purpose": "analytics",
            "features": ["store_sales"],
            "entity_rows": [{"store_id": 1, "event_timestamp": "2026-11-01T12:00:00"}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["data"] == [
        {"store_id": 1, "event_timestamp": "2026-11-01T12:00:00+00:00", "sales": 101.0, "open": True}
    ]
    r = c.get(f"/api/v1/tenants/{slug}/materializations", headers=he)
    assert r.status_code == 200 and r.json()["items"][0]["profile"]["features"]["sales"]["count"] == 5, r.text
    r = c.get(f"/api/v1/tenants/{slug}/features/lineage-events", headers=he)
    assert r.status_code == 200
    assert {e["eventType"] for e in r.json()} >= {"START", "COMPLETE"}
