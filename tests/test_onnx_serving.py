"""The builtin ONNX Runtime serving runtime, end to end: signed artifacts, a real data-plane process, HTTP.

Artifacts are built for real: a small MLP written with the ``onnx`` helper API (weights in an external-data
sidecar, so the artifact is a folder), its ``falaj-artifact/v1`` manifest, and a model-signing bundle made
with an ECDSA key. The runtime is reached through the plugin manager like any backend, deploys in its own
process, and every answer is checked against numpy.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime", reason="the onnxruntime serving runtime needs onnxruntime")
pytest.importorskip("onnx", reason="the test models are written with the onnx package")

import httpx
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import falaj.plugins.onnx_serving as onnx_serving
from falaj.core import signing
from falaj.core.errors import BackendError, ValidationError
from falaj.core.plugin import BackendConfig, ServingRuntime, create_plugin_manager
from falaj.plugins.onnx_serving.batching import Batcher, InferenceFailed, Overloaded
from falaj.plugins.onnx_serving.examples import MlpWeights, write_mlp
from falaj.plugins.onnx_serving.metrics import chi2_sf, srm_check
from falaj.plugins.onnx_serving.routing import sticky_point
from falaj.plugins.onnx_serving.verify import folder_manifest, manifest_digest

NAME = "churn-prod"
FEATURES = 30


# -- signed artifacts ------------------------------------------------------------------------------------------
class Signer:
    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self.private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = signing.key_id(self.public)

    def sign(self, folder: Path) -> dict[str, Any]:
        return {"key_id": self.key_id, "bundle": signing.sign_folder(folder, self.private, None)}


def artifact(root: Path, signer: Signer, version: int, *, seed: int) -> tuple[dict[str, Any], MlpWeights]:
    """A signed artifact folder and the variant entry of a deployment spec for it."""
    folder = root / f"churn-v{version}-{seed}"
    weights = write_mlp(folder, n_features=FEATURES, seed=seed)
    manifest = folder_manifest(folder)
    variant = {
        "model": "churn",
        "version": version,
        "weight": 0,
        "shadow": False,
        "artifact_path": str(folder),
        "manifest": manifest,
        "artifact_digest": manifest_digest(manifest),
        "signatures": [signer.sign(folder)],
        "trusted_keys": {signer.key_id: signer.public.decode()},
    }
    return variant, weights


def spec(name: str, variants: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "acme",
        "environment": "production",
        "variants": variants,
        "sticky_salt": "5eed" * 8,
        "settings": {"workers": 1, "max_batch_size": 32, "max_queue_delay_ms": 2, "intra_op_threads": 1, **settings},
    }


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


def probabilities(response: httpx.Response) -> np.ndarray:
    out = response.json()["outputs"][0]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingRuntime]:
    """The runtime built the way the control plane builds it: the plugin's spec from the plugin manager."""
    registry = create_plugin_manager(builtins=(), load_entrypoints=False, extra=[("onnx-serving", onnx_serving)])
    assert registry.plugins["onnx-serving"].state == "active", registry.plugins["onnx-serving"].error
    spec_ = registry.backend_spec("serving", "onnxruntime")
    assert spec_ is not None
    config = BackendConfig(
        name="serve-local",
        plugin="onnxruntime",
        kind="serving",
        region="me-central-1",
        node_class="cpu-smb",
        tenant="acme",
        home=tmp_path_factory.mktemp("serving-home"),
        settings={"exit_with_parent": True},  # a crashed test run leaves no server behind
    )
    rt = spec_.factory(config)
    assert isinstance(rt, ServingRuntime)
    yield rt
    rt.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def ab(tmp_path_factory: pytest.TempPathFactory, signer: Signer, runtime: Any) -> Iterator[dict[str, Any]]:
    """One deployment: versions 1 (weight 80) and 2 (weight 20), and version 3 as a shadow."""
    root = tmp_path_factory.mktemp("artifacts")
    v1, w1 = artifact(root, signer, 1, seed=1)
    v2, w2 = artifact(root, signer, 2, seed=2)
    v3, w3 = artifact(root, signer, 3, seed=3)
    v1["weight"], v2["weight"], v3["shadow"], v3["weight"] = 80, 20, True, 0
    endpoint = runtime.deploy(spec(NAME, [v1, v2, v3], max_queue_delay_ms=5, max_body_bytes=256 * 1024))
    with httpx.Client(base_url=endpoint, timeout=30) as client:
        yield {"endpoint": endpoint, "client": client, "weights": {"1": w1, "2": w2, "3": w3}}


async def _post_many(
    endpoint: str, requests: list[tuple[str, Any, dict[str, str]]], concurrency: int = 32
) -> list[Any]:
    """Send (path, json-or-bytes, headers) requests concurrently; responses in order."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=endpoint, timeout=30, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
            async with gate:
                if isinstance(body, bytes):
                    return await client.post(path, content=body, headers=headers)
                return await client.post(path, json=body, headers=headers)

        return await asyncio.gather(*(one(*r) for r in requests))


def post_many(endpoint: str, requests: list[tuple[str, Any, dict[str, str]]], concurrency: int = 32) -> list[Any]:
    return asyncio.run(_post_many(endpoint, requests, concurrency))


def stats(client: httpx.Client) -> dict[str, Any]:
    body = client.get("/v2/falaj/stats").json()
    body["by_version"] = {v["version"]: v for v in body["variants"]}
    return body


# -- the plugin ------------------------------------------------------------------------------------------------
def test_plugin_imports_no_ml_framework_in_the_control_plane() -> None:
    code = (
        "import sys, falaj.plugins.onnx_serving as p; "
        "bad = [m for m in ('onnxruntime', 'numpy', 'onnx', 'uvicorn') if m in sys.modules]; "
        "assert not bad, bad; print(p.OnnxServingRuntime.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_bad_backend_settings_and_specs_are_refused(tmp_path: Path, runtime: Any) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        onnx_serving.OnnxServingRuntime(
            BackendConfig("x", "onnxruntime", "serving", "r", "cpu-smb", "acme", tmp_path, {"max_batch_size": 0})
        )
    with pytest.raises(ValueError, match="unknown setting 'batch'"):
        onnx_serving.OnnxServingRuntime(
            BackendConfig("x", "onnxruntime", "serving", "r", "cpu-smb", "acme", tmp_path, {"batch": 3})
        )
    with pytest.raises(ValidationError, match="variants"):
        runtime.deploy({"name": "empty", "variants": []})
    with pytest.raises(ValidationError, match=r"variants\[0\]\.artifact_path"):
        runtime.deploy({"name": "rel", "variants": [{"model": "m", "version": 1, "weight": 1, "artifact_path": "x"}]})


# -- protocol: health, metadata, inference ------------------------------------------------------------------------
def test_health_and_metadata(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "falaj-onnxruntime" and "binary_tensor_data" in server["extensions"]
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME
    assert meta["versions"] == ["1", "2", "3"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get(f"/v2/models/{NAME}/versions/2").json()["versions"] == ["2"]
    assert client.get(f"/v2/models/{NAME}/ready").json()["ready"] is True
    assert client.get(f"/v2/models/{NAME}/versions/3/ready").status_code == 200
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "unknown model 'other'" in missing.json()["error"]
    no_version = client.get(f"/v2/models/{NAME}/versions/9")
    assert no_version.status_code == 404 and "no version '9'" in no_version.json()["error"]
    assert client.post(f"/v2/models/{NAME}/versions/9/infer", json={}).status_code == 404
    assert client.get(f"/v2/models/{NAME}/infer").status_code == 405


def test_json_inference_matches_numpy(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    rng = np.random.default_rng(7)
    for version in ("1", "2", "3"):
        x = rng.normal(size=(5, FEATURES)).astype(np.float32)
        r = client.post(f"/v2/models/{NAME}/versions/{version}/infer", json=infer_body(x, id=f"req-{version}"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == NAME and body["model_version"] == version and body["id"] == f"req-{version}"
        np.testing.assert_allclose(probabilities(r), ab["weights"][version].predict(x), rtol=1e-5, atol=1e-6)
    # nested data and an explicit output selection are accepted too
    x = rng.normal(size=(2, FEATURES)).astype(np.float32)
    nested = {
        "inputs": [{"name": "input", "shape": [2, FEATURES], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    r = client.post(f"/v2/models/{NAME}/versions/1/infer", json=nested)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities(r), ab["weights"]["1"].predict(x), rtol=1e-5, atol=1e-6)
    # gzip request bodies, as Triton's clients send them on request
    packed = gzip.compress(json.dumps(nested).encode())
    r = client.post(f"/v2/models/{NAME}/versions/1/infer", content=packed, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities(r), ab["weights"]["1"].predict(x), rtol=1e-5, atol=1e-6)
    r = client.post(f"/v2/models/{NAME}/versions/1/infer", content=packed[:-9], headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip body is truncated" in r.json()["error"]


def test_binary_tensor_extension_round_trip(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    x = np.random.default_rng(11).normal(size=(4, FEATURES)).astype(np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = client.post(
        f"/v2/models/{NAME}/versions/2/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:length])
    out = head["outputs"][0]
    assert head["model_version"] == "2" and "data" not in out
    assert out["parameters"]["binary_data_size"] == 4 * 2 * 4 == len(r.content) - length
    got = np.frombuffer(r.content[length:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, ab["weights"]["2"].predict(x), rtol=1e-5, atol=1e-6)
    # binary in, JSON out (binary_data_output false by default)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    r = client.post(
        f"/v2/models/{NAME}/versions/2/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities(r), ab["weights"]["2"].predict(x), rtol=1e-5, atol=1e-6)
    # a binary size that does not fit the shape is refused, naming the input
    bad = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [4, FEATURES], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
            ]
        }
    ).encode()
    r = client.post(
        f"/v2/models/{NAME}/infer", content=bad + raw[:8], headers={"Inference-Header-Content-Length": str(len(bad))}
    )
    assert r.status_code == 400 and "input 'input'" in r.json()["error"] and "480 bytes" in r.json()["error"]


def test_concurrent_requests_are_batched_and_answered_individually(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    before = stats(client)["by_version"]["1"]["batches"]
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(int(rng.integers(1, 4)), FEATURES)).astype(np.float32) for _ in range(160)]
    responses = post_many(ab["endpoint"], [(f"/v2/models/{NAME}/versions/1/infer", infer_body(x), {}) for x in xs], 64)
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(probabilities(r), ab["weights"]["1"].predict(x), rtol=1e-5, atol=1e-6)
    v1 = stats(client)["by_version"]["1"]
    assert v1["batch"]["max_rows"] > 1, v1["batch"]
    assert v1["batches"] - before < 160  # fewer session.run calls than requests
    assert v1["batch"]["max_rows"] <= 32


def test_bad_inputs_get_400_and_never_disturb_good_ones(ab: dict[str, Any]) -> None:
    rng = np.random.default_rng(5)
    path = f"/v2/models/{NAME}/versions/1/infer"
    good_x = [rng.normal(size=(2, FEATURES)).astype(np.float32) for _ in range(120)]
    bad: list[tuple[Any, str]] = [
        (infer_body(np.zeros((1, FEATURES - 1), np.float32)), "expects [-1, 30]"),
        (
            {"inputs": [{"name": "input", "shape": [2**62, 0], "datatype": "FP32", "data": []}]},
            "is larger than",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2**20, 2**20], "datatype": "FP32", "data": [0.0]}]},
            "more than",
        ),
        (
            {"inputs": [{"name": "input", "shape": [70_000], "datatype": "BYTES", "data": [""]}]},
            "at most 65536 elements",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP64", "data": [0.0] * FEATURES}]},
            "datatype FP64",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.0] * FEATURES}]},
            "missing input 'input'",
        ),
        (
            {
                "inputs": [
                    *infer_body(np.zeros((1, FEATURES), np.float32))["inputs"],
                    {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1.0]},
                ]
            },
            "unknown input 'extra'",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": ["x"] * FEATURES}]},
            "non-numeric",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, FEATURES], "datatype": "FP32", "data": [0.5] * FEATURES}]},
            "needs 60 values",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1.0, 2.0], [3.0]]}]},
            "regular array",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP99", "data": [0] * FEATURES}]},
            "unknown datatype",
        ),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32"}]}, "no 'data'"),
        (infer_body(np.zeros((1, FEATURES), np.float32), outputs=[{"name": "nope"}]), "unknown output 'nope'"),
        (b'{"inputs": [', "not valid JSON"),
        (b"x" * (300 * 1024), "larger than the limit"),
    ]
    requests: list[tuple[str, Any, dict[str, str]]] = []
    expect: list[tuple[str, Any]] = []
    for i, x in enumerate(good_x):
        requests.append((path, infer_body(x), {}))
        expect.append(("good", x))
        if i % 3 == 0:
            body, message = bad[(i // 3) % len(bad)]
            requests.append((path, body, {"Content-Type": "application/json"}))
            expect.append(("bad", message))
    responses = post_many(ab["endpoint"], requests, 48)
    seen_bad = set()
    for (kind, what), r in zip(expect, responses, strict=True):
        if kind == "good":
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(probabilities(r), ab["weights"]["1"].predict(what), rtol=1e-5, atol=1e-6)
        else:
            assert r.status_code == 400, (what, r.status_code, r.text)
            assert what in r.json()["error"], (what, r.json())
            seen_bad.add(what)
    assert len(seen_bad) == len(bad)
    s = stats(ab["client"])
    assert s["by_version"]["1"]["errors"]["invalid"] > 0 and s["rejected"] > 0


def test_traffic_split_sticky_routing_and_shadow(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    path = f"/v2/models/{NAME}/infer"
    before = stats(client)["by_version"]
    x = np.random.default_rng(9).normal(size=(1, FEATURES)).astype(np.float32)
    n = 2000
    responses = post_many(ab["endpoint"], [(path, infer_body(x), {})] * n, 48)
    versions = Counter(r.json()["model_version"] for r in responses)
    assert all(r.status_code == 200 for r in responses)
    assert set(versions) == {"1", "2"}  # the shadow never answers
    assert abs(versions["1"] / n - 0.8) < 0.04, versions
    for r in responses[:50]:  # each answer comes from the version it names
        np.testing.assert_allclose(probabilities(r), ab["weights"][r.json()["model_version"]].predict(x), rtol=1e-5)

    # sticky: one key, one version; keys spread by weight; header and parameter are the same key
    keyed = post_many(ab["endpoint"], [(path, infer_body(x), {"X-Falaj-Route-Key": "customer-42"})] * 30)
    assert len({r.json()["model_version"] for r in keyed}) == 1
    by_param = client.post(path, json=infer_body(x, parameters={"route_key": "customer-42"}))
    assert by_param.json()["model_version"] == keyed[0].json()["model_version"]
    keys = [f"customer-{i}" for i in range(400)]
    spread = post_many(ab["endpoint"], [(path, infer_body(x), {"X-Falaj-Route-Key": k}) for k in keys])
    chosen = {k: r.json()["model_version"] for k, r in zip(keys, spread, strict=True)}
    expected = {k: "1" if sticky_point("5eed" * 8, k) < 0.8 else "2" for k in keys}  # sha256(salt + key)
    assert chosen == expected
    assert 0.7 < sum(v == "1" for v in chosen.values()) / len(keys) < 0.9

    # the shadow got a copy of every split request, answered asynchronously and only measured
    deadline = time.monotonic() + 10
    while True:
        s = stats(client)["by_version"]
        shadow = s["3"]
        copies = shadow["shadow_stats"]["copies"] - before["3"]["shadow_stats"]["copies"]
        if (
            shadow["requests"] + shadow["shadow_stats"]["dropped"] >= shadow["shadow_stats"]["copies"]
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    assert copies >= n + 30 + 1 + 400
    assert shadow["role"] == "shadow" and shadow["routed"] == 0 and shadow["requests"] > 0
    assert shadow["predictions"]["probabilities"]["rows"] >= shadow["requests"]
    routed = {v: s[v]["routed"] - before[v]["routed"] for v in ("1", "2")}
    assert routed["1"] + routed["2"] == n  # the SRM check counts the independent (unkeyed) draws only
    srm = stats(client)["srm"]
    assert srm["applicable"] is True and srm["srm"] is False and srm["p_value"] > 0.001, srm


def test_metrics_endpoints(ab: dict[str, Any]) -> None:
    client: httpx.Client = ab["client"]
    s = stats(client)
    v1 = s["by_version"]["1"]
    assert (
        v1["requests"] > 0
        and v1["latency_ms"]["p50"] is not None
        and v1["latency_ms"]["p99"] >= v1["latency_ms"]["p50"]
    )
    assert set(v1["predictions"]["probabilities"]["class_counts"]) == {"0", "1"}
    assert v1["signed_by"].startswith("ecdsa:") and v1["execution"] in ("event-loop", "thread")
    text = client.get("/metrics").text
    assert f'falaj_inference_requests_total{{deployment="{NAME}",model="churn",role="primary",version="1"}}' in text
    assert "falaj_inference_latency_seconds_bucket" in text
    assert "falaj_inference_predictions_total" in text
    assert "falaj_inference_srm_p_value" in text
    assert "falaj_inference_shadow_dropped_total" in text


def test_srm_chi_square() -> None:
    # reference values of the chi-square survival function (5 % critical values)
    for x, df in ((3.841458820694124, 1), (5.991464547107979, 2), (7.814727903251178, 3), (9.487729036781154, 4)):
        assert chi2_sf(x, df) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(10.827566170662733, 1) == pytest.approx(0.001, rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(1e5, 2) == 0.0
    fine = srm_check({"1": 805, "2": 195}, {"1": 0.8, "2": 0.2})
    assert fine["applicable"] and not fine["srm"] and fine["p_value"] > 0.5
    skewed = srm_check({"1": 700, "2": 300}, {"1": 0.8, "2": 0.2})
    assert skewed["srm"] is True and skewed["p_value"] < 1e-10
    assert srm_check({"1": 3, "2": 0}, {"1": 0.8, "2": 0.2})["applicable"] is False


# -- governance: only verified, signed bytes are served -------------------------------------------------------
def test_tampered_artifact_is_refused_naming_the_file(tmp_path: Path, signer: Signer, runtime: Any) -> None:
    variant, _ = artifact(tmp_path, signer, 1, seed=21)
    variant["weight"] = 1
    data = Path(variant["artifact_path"]) / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight, after signing
    data.write_bytes(bytes(raw))
    with pytest.raises(BackendError) as err:
        runtime.deploy(spec("tampered", [variant]))
    message = str(err.value)
    assert "model.onnx.data" in message and "does not match the manifest" in message
    assert "refusing to start" in message  # the server's own log line is quoted
    assert runtime.status("tampered") == "failed"


def test_unsigned_and_untrusted_artifacts_are_refused(tmp_path: Path, signer: Signer, runtime: Any) -> None:
    variant, _ = artifact(tmp_path, signer, 1, seed=22)
    variant["weight"] = 1
    with pytest.raises(BackendError, match="has no signature"):
        runtime.deploy(spec("unsigned", [{**variant, "signatures": []}]))
    stranger = Signer()
    with pytest.raises(BackendError, match=f"signature by {stranger.key_id} is not from a trusted key"):
        runtime.deploy(spec("untrusted", [{**variant, "signatures": [stranger.sign(Path(variant["artifact_path"]))]}]))
    # a trusted key's signature over other files does not vouch for these
    other, _ = artifact(tmp_path, signer, 2, seed=23)
    with pytest.raises(BackendError, match="signed files differ"):
        runtime.deploy(spec("mismatch", [{**variant, "signatures": other["signatures"]}]))
    # an extra file in the folder is refused too
    extra = dict(variant)
    (Path(variant["artifact_path"]) / "notes.txt").write_text("hello")
    with pytest.raises(BackendError, match=r"notes\.txt is not in the manifest"):
        runtime.deploy(spec("extra-file", [extra]))


def test_undeploy_stops_the_process(tmp_path: Path, signer: Signer, runtime: Any) -> None:
    variant, weights = artifact(tmp_path, signer, 7, seed=31)
    variant["weight"] = 1
    # the pure-Python HTTP stack (what uvicorn uses where httptools and uvloop are not installed)
    endpoint = runtime.deploy(spec("short-lived", [variant], http="h11", loop="asyncio"))
    assert runtime.status("short-lived") == "ready"
    x = np.ones((1, FEATURES), np.float32)
    r = httpx.post(f"{endpoint}/v2/models/short-lived/infer", json=infer_body(x))
    assert r.json()["model_version"] == "7"
    np.testing.assert_allclose(probabilities(r), weights.predict(x), rtol=1e-5)
    state = json.loads((runtime.root / "short-lived" / "current.json").read_text())
    pid, port = state["pid"], state["port"]
    runtime.undeploy("short-lived")
    assert runtime.status("short-lived") == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    runtime.undeploy("short-lived")  # a second undeploy is a no-op
    # the verified private copy is gone, the log stays for the record
    run_dir = Path(state["run_dir"])
    assert not (run_dir / "artifacts").exists() and (run_dir / "server.log").exists()


def test_batcher_merges_splits_and_isolates_a_failing_request() -> None:
    """A batch that fails inside the model is rerun request by request: only the bad one gets the error."""
    calls: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        calls.append(x.shape[0])
        if np.isnan(x).any():
            raise RuntimeError("NaN reached an operator that refuses it")
        return [x * 2, x.sum(axis=1)]

    async def scenario() -> None:
        batcher = Batcher(
            run, input_names=["x"], max_batch_size=8, max_queue_delay_s=0.05, max_queue_rows=10, batchable=True
        )
        batcher.start()
        good = [np.full((2, 3), float(i), np.float32) for i in range(3)]
        bad = np.full((1, 3), np.nan, np.float32)
        futures = [batcher.submit({"x": g}, 2) for g in good[:2]]
        bad_future = batcher.submit({"x": bad}, 1)
        futures.append(batcher.submit({"x": good[2]}, 2))
        with pytest.raises(Overloaded):
            batcher.submit({"x": np.zeros((5, 3), np.float32)}, 5)  # 7 rows queued, limit 10
        results = await asyncio.gather(*futures)
        for g, (doubled, sums) in zip(good, results, strict=True):
            np.testing.assert_array_equal(doubled, g * 2)
            np.testing.assert_array_equal(sums, g.sum(axis=1))
        with pytest.raises(InferenceFailed, match="NaN reached"):
            await bad_future
        await batcher.stop()

    asyncio.run(scenario())
    assert calls[0] == 7  # one merged batch of 2 + 2 + 1 + 2 rows ...
    assert sorted(calls[1:]) == [1, 2, 2, 2]  # ... then each request alone
