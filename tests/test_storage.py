"""The builtin local store: content-addressed, encrypted at rest with per-tenant keys, checked on every read."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falaj.core.datakeys import unwrap
from falaj.core.domain import Backend, TenantDataKey
from falaj.core.errors import BackendError, ConfigurationError
from falaj.plugins.local_storage import CHUNK, LocalArtifactStore


def _store(world, tenant: str = "operator", name: str = "store", **settings) -> tuple[LocalArtifactStore, Path]:
    from falaj.core.actions import Action, TokenCredential

    token = world.admin_token
    if tenant != "operator":
        r = world.act("tenant.create", {"slug": tenant, "display_name": tenant, "admin": "root"})
        assert r.ok, r.message()
        token = r.secret
    body = {"name": name, "kind": "storage", "plugin": "local", "region": "me-central-1", "settings": settings}
    result = world.plane.execute(Action("backend.register", tenant, TokenCredential(token), body))
    assert result.ok, result.message()
    with world.plane.sessions() as s:
        row = s.query(Backend).filter_by(name=name).one()
        store = world.plane.backend_instance(tenant, row)
    return store, store.root


def _read(store: LocalArtifactStore, digest: str, tenant: str = "operator") -> bytes:
    with store.open(digest, tenant=tenant) as fh:
        return fh.read()


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


def test_round_trip_at_chunk_boundaries_and_nothing_in_the_clear(world):
    store, root = _store(world)
    for size in SIZES:
        data = os.urandom(size // 2) + b"FALAJ-SECRET-MARKER" * (size // 38) if size else b""
        data = data[:size].ljust(size, b"x")
        info = store.put(io.BytesIO(data), tenant="operator")
        assert info.digest == "sha256:" + hashlib.sha256(data).hexdigest() and info.size == size
        assert _read(store, info.digest) == data
        on_disk = (root / "operator" / "sha256" / info.digest[7:9] / info.digest[7:]).read_bytes()
        if size >= 64:  # (a byte or two of plaintext may occur in any random-looking file by chance)
            assert data[:64] not in on_disk and b"FALAJ-SECRET-MARKER" not in on_disk
    assert sorted(i.size for i in store.list(tenant="operator")) == sorted(SIZES)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), chunk=st.integers(1, 700))
def test_any_bytes_round_trip_whatever_the_reader_chunks(world, data, chunk):
    if not hasattr(world, "hypothesis_store"):
        world.hypothesis_store = _store(world, name="hyp")[0]
    store = world.hypothesis_store
    info = store.put(io.BytesIO(data), tenant="operator")
    with store.open(info.digest, tenant="operator") as fh:
        parts = []
        while part := fh.read(chunk):
            parts.append(part)
    assert b"".join(parts) == data


def _blob(root: Path, digest: str, tenant: str = "operator") -> Path:
    return root / tenant / "sha256" / digest[7:9] / digest[7:]


def test_any_change_to_a_stored_blob_is_caught(world):
    store, root = _store(world)
    data = os.urandom(2 * CHUNK + 100)
    digest = store.put(io.BytesIO(data), tenant="operator").digest
    path = _blob(root, digest)
    original = path.read_bytes()
    for position in (40, CHUNK, len(original) - 3):  # header area, a chunk, the last tag
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(BackendError):
            _read(store, digest)
    # Cut at a chunk boundary: the new last chunk was sealed as "not the last".
    header_len = len(original) - (len(data) + 3 * 16)
    path.write_bytes(original[: header_len + CHUNK + 16])
    with pytest.raises(BackendError, match=r"authentication|truncated"):
        _read(store, digest)
    # A whole other blob moved under this address: authentic, but not these bytes.
    other = store.put(io.BytesIO(b"other"), tenant="operator").digest
    path.write_bytes(_blob(root, other).read_bytes())
    with pytest.raises(BackendError, match="no longer match"):
        _read(store, digest)
    path.write_bytes(original)
    assert _read(store, digest) == data


def test_tenants_have_their_own_keys(world):
    ours, root = _store(world)
    theirs, their_root = _store(world, tenant="bank", name="bank-store")
    digest = ours.put(io.BytesIO(b"customer table"), tenant="operator").digest
    with pytest.raises(BackendError):
        theirs.put(io.BytesIO(b"x"), tenant="operator")  # a store only holds its own tenant's keys
    copied = _blob(their_root, digest, "bank")
    copied.parent.mkdir(parents=True, exist_ok=True)
    copied.write_bytes(_blob(root, digest).read_bytes())
    with pytest.raises(BackendError, match="data key"):
        _read(theirs, digest, "bank")
    with world.plane.sessions() as s:
        rows = {r.tenant: r for r in s.query(TenantDataKey).all()}
    assert set(rows) == {"operator", "bank"} and "customer" not in rows["operator"].wrapped
    # Keys are stored wrapped: only the master key unwraps them, and only for their own tenant.
    with pytest.raises(ConfigurationError):
        unwrap(b"another master key", "operator", rows["operator"].key_id, rows["operator"].wrapped)
    with pytest.raises(ConfigurationError):
        unwrap(world.plane.keyring("operator").master, "bank", rows["operator"].key_id, rows["operator"].wrapped)


def test_plaintext_stores_and_old_blobs_still_work(world):
    plain, root = _store(world, name="plain", encrypt=False)
    digest = plain.put(io.BytesIO(b"clear"), tenant="operator").digest
    assert _blob(root, digest).read_bytes() == b"clear"
    # A blob written before encryption (no header) is read by an encrypting store, and still checked.
    enc, enc_root = _store(world)
    old = _blob(enc_root, digest)
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"clear")
    assert _read(enc, digest) == b"clear"
    old.write_bytes(b"clean")
    with pytest.raises(BackendError, match="no longer match"):
        _read(enc, digest)
    bad = world.act(
        "backend.register",
        {"name": "bad", "kind": "storage", "plugin": "local", "region": "me-central-1", "settings": {"encrypt": "no"}},
    )
    assert bad.outcome == "failed" and "encrypt" in (bad.error or "")


def test_delete_and_garbage_collection_are_governed_and_keep_what_versions_need(world, tmp_path):
    store, _ = _store(world)
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "weights" / "w.bin").write_bytes(os.urandom(5000))
    from falaj.core.artifacts import put_folder

    artifact, manifest = put_folder(store, "operator", folder)
    world.principal("eng", ["ml-engineer"])
    assert world.act("model.register", {"name": "m"}, as_="eng").ok
    reg = world.act(
        "model_version.register", {"model": "m", "artifact_digest": artifact, "storage_backend": "store"}, as_="eng"
    )
    assert reg.ok, reg.message()
    orphan = store.put(io.BytesIO(b"an upload nobody registered"), tenant="operator").digest
    # A blob a version needs cannot be deleted; an orphan can, by an admin only.
    needed = manifest["files"]["weights/w.bin"]["digest"]
    refused = world.act("artifact.delete", {"storage_backend": "store", "digest": needed})
    assert refused.outcome == "failed" and refused.error_type == "conflict"
    assert world.act("artifact.delete", {"storage_backend": "store", "digest": orphan}, as_="eng").outcome == "denied"
    # GC: a fresh orphan survives the grace period; with none, the dry run lists it and the real run deletes it.
    other = store.put(io.BytesIO(b"another orphan"), tenant="operator").digest
    fresh = world.act("artifact.gc", {"storage_backend": "store", "dry_run": False})
    assert fresh.ok and fresh.data["deleted"] == 0
    dry = world.act("artifact.gc", {"storage_backend": "store", "min_age_hours": 0})
    assert dry.ok and set(dry.data["digests"]) == {orphan, other} and dry.data["deleted"] == 0
    assert store.exists(orphan, tenant="operator")
    done = world.act("artifact.gc", {"storage_backend": "store", "min_age_hours": 0, "dry_run": False})
    assert done.ok and done.data["deleted"] == 2
    assert not store.exists(orphan, tenant="operator") and not store.exists(other, tenant="operator")
    for entry in manifest["files"].values():
        assert store.exists(entry["digest"], tenant="operator")
    assert store.exists(artifact, tenant="operator")
