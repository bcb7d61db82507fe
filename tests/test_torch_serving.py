"""The builtin ``torch`` serving runtime, end to end: a model trained by the local compute backend (a real
worker process), its signed artifact served by a real data-plane process on the torch runtime, answering
the Open Inference Protocol V2 like the same artifact served by the ``onnxruntime`` runtime.

This node has no GPU, so ``device: auto`` runs on the CPU here and ``device: cuda`` must be refused; on a
node where torch sees CUDA the same tests check the GPU path instead.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import falaj.plugins.onnx_serving as onnx_serving
from falaj.core.errors import BackendError, ValidationError
from falaj.core.plugin import BackendConfig, ServingRuntime, create_plugin_manager
from falaj.plugins.onnx_serving.examples import write_mlp
from falaj.plugins.onnx_serving.settings import DeviceUnavailable, SpecError, choose_device
from falaj.plugins.onnx_serving.verify import folder_manifest, manifest_digest
from tests.test_local_compute import CLASSIFIER, breast_cancer, make_backend, make_job, wait  # noqa: F401
from tests.test_onnx_serving import Signer, infer_body, post_many, spec

MISSING = [m for m in ("torch", "onnx", "onnxscript", "onnxruntime", "sklearn") if find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the torch runtime tests need {', '.join(MISSING)}")

NAME = "triage-gpu"
RTOL, ATOL = 1e-4, 1e-5  # torch and ONNX Runtime on the same float32 graph


# -- helpers and fixtures -----------------------------------------------------------------------------------------
def make_runtime(kind: str, home: Path, **settings: Any) -> ServingRuntime:
    """A runtime built the way the control plane builds it: the plugin's spec from the plugin manager."""
    registry = create_plugin_manager(builtins=(), load_entrypoints=False, extra=[("onnx-serving", onnx_serving)])
    found = registry.backend_spec("serving", kind)
    assert found is not None
    config = BackendConfig(
        name=f"serve-{kind}",
        plugin=kind,
        kind="serving",
        region="me-central-1",
        node_class="gpu-smb",
        tenant="acme",
        home=home,
        settings={"exit_with_parent": True, **settings},  # a crashed test run leaves no server behind
    )
    runtime = found.factory(config)
    assert isinstance(runtime, ServingRuntime)
    return runtime


def signed_variant(folder: Path, signer: Signer, version: int = 1) -> dict[str, Any]:
    manifest = folder_manifest(folder)
    return {
        "model": "triage",
        "version": version,
        "weight": 100,
        "artifact_path": str(folder),
        "manifest": manifest,
        "artifact_digest": manifest_digest(manifest),
        "signatures": [signer.sign(folder)],
        "trusted_keys": {signer.key_id: signer.public.decode()},
    }


def outputs_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, breast_cancer: Path) -> dict[str, Any]:  # noqa: F811
    """The builtin classifier trained on the breast cancer data: its artifact folder and the data's rows."""
    backend = make_backend(tmp_path_factory.mktemp("compute"))
    status = wait(backend, backend.submit(make_job("torch-serve", {**CLASSIFIER, "epochs": 5}, breast_cancer)), 120)
    assert status.state == "succeeded", status.message
    folder = Path(status.outputs["artifact_path"])
    manifest = json.loads((folder / "falaj-model.json").read_text())
    rows = list(csv.DictReader(breast_cancer.open()))
    x = np.array([[float(r[f]) for f in manifest["features"]] for r in rows], dtype=np.float32)
    return {"folder": folder, "manifest": manifest, "x": x}


@pytest.fixture(scope="module")
def torch_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingRuntime]:
    runtime = make_runtime("torch", tmp_path_factory.mktemp("torch-home"), device="auto")
    yield runtime
    runtime.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Any], signer: Signer, torch_runtime: Any
) -> Iterator[dict[str, Any]]:
    """The same signed artifact deployed on the torch runtime and on the onnxruntime runtime."""
    onnx_runtime = make_runtime("onnxruntime", tmp_path_factory.mktemp("onnx-home"))
    variant = signed_variant(trained["folder"], signer)
    try:
        torch_endpoint = torch_runtime.deploy(spec(NAME, [variant], max_queue_delay_ms=5))
        onnx_endpoint = onnx_runtime.deploy(spec(NAME, [variant]))
        with (
            httpx.Client(base_url=torch_endpoint, timeout=30) as torch_client,
            httpx.Client(base_url=onnx_endpoint, timeout=30) as onnx_client,
        ):
            yield {"torch": torch_client, "onnx": onnx_client, "endpoint": torch_endpoint, "variant": variant}
    finally:
        onnx_runtime.close()  # type: ignore[attr-defined]


# -- the plugin and its settings ------------------------------------------------------------------------------------
def test_the_torch_runtime_is_registered_and_the_control_plane_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "from falaj.core.plugin import create_plugin_manager\n"
        "r = create_plugin_manager(builtins=('falaj.plugins.onnx_serving',), load_entrypoints=False)\n"
        "spec = r.backend_spec('serving', 'torch')\n"
        "print(sorted(r.plugins['onnx-serving'].provides), sorted(spec.capabilities), spec.factory.__name__)\n"
        "print([m for m in ('torch', 'onnxruntime', 'numpy', 'uvicorn') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.splitlines() == [
        "['serving:onnxruntime', 'serving:torch'] "
        "['binary-tensors', 'cpu', 'dynamic-batching', 'gpu', 'traffic-split', 'v2-protocol'] TorchServingRuntime",
        "[]",
    ]


def test_the_device_choice() -> None:
    assert choose_device("auto", False, 0) == ("cpu", "auto: torch sees no CUDA device on this node")
    assert choose_device("auto", True, 2) == ("cuda:0", "auto: torch sees 2 CUDA device(s)")
    assert choose_device("cpu", True, 2)[0] == "cpu"
    assert choose_device("cuda", True, 1)[0] == "cuda:0"
    assert choose_device("cuda:1", True, 2)[0] == "cuda:1"
    with pytest.raises(DeviceUnavailable, match=r"'cuda' but torch sees no CUDA device on this node .* 'auto'"):
        choose_device("cuda", False, 0)
    with pytest.raises(DeviceUnavailable, match=r"'cuda:2' but this node has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        choose_device("cuda:2", True, 2)
    with pytest.raises(SpecError, match="must be auto, cpu, cuda or cuda:<index>"):
        choose_device("gpu", True, 1)


def test_settings_of_the_other_runtime_and_bad_devices_are_refused(tmp_path: Path, torch_runtime: Any) -> None:
    with pytest.raises(ValueError, match="setting 'providers' does not apply to the torch runtime"):
        make_runtime("torch", tmp_path / "a", providers=["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="setting 'device' does not apply to the onnxruntime runtime"):
        make_runtime("onnxruntime", tmp_path / "b", device="cuda")
    with pytest.raises(ValueError, match="setting 'device' must be auto, cpu, cuda or cuda:<index>, not 'gpu'"):
        make_runtime("torch", tmp_path / "c", device="gpu")
    files = {"model.pt2": {"digest": "sha256:" + "0" * 64, "size": 1}}
    manifest = {"format": "falaj-artifact/v1", "files": files}
    variant = {"model": "m", "version": 1, "weight": 1, "artifact_path": str(tmp_path), "manifest": manifest}
    with pytest.raises(ValidationError, match="setting 'device' must be auto, cpu, cuda or cuda:<index>"):
        torch_runtime.deploy({"name": "bad-device", "variants": [variant], "settings": {"device": "cuda:x"}})
    with pytest.raises(ValidationError, match="setting 'providers' does not apply to the torch runtime"):
        torch_runtime.deploy({"name": "bad-device", "variants": [variant], "settings": {"providers": ["X"]}})
    assert torch_runtime.status("bad-device") == "stopped"


# -- serving --------------------------------------------------------------------------------------------------------
def test_metadata_shows_the_platform_and_the_device(served: dict[str, Any], trained: dict[str, Any]) -> None:
    client: httpx.Client = served["torch"]
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "falaj-torch"
    meta = client.get(f"/v2/models/{NAME}").json()
    onnx_meta = served["onnx"].get(f"/v2/models/{NAME}").json()
    assert meta["platform"] == "pytorch_export" and onnx_meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == onnx_meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert onnx_meta["outputs"][0]["name"] == "probabilities" and "parameters" not in onnx_meta
    params = meta["parameters"]
    assert params["program"] == "model.pt2" and params["torch"] == trained["manifest"]["torch_program"]["torch"]
    if params["device"] == "cpu":
        assert params["device_choice"] == "auto: torch sees no CUDA device on this node"
    else:  # a GPU node
        assert params["device"] == "cuda:0" and params["device_choice"].startswith("auto: torch sees")
    stats = client.get("/v2/falaj/stats").json()["variants"][0]
    assert stats["platform"] == "pytorch_export" and stats["device"] == params["device"]
    assert stats["batchable"] is True
    assert trained["manifest"]["torch_program"]["format"] == "torch.export"
    assert trained["manifest"]["torch_program"]["check"]["max_abs_diff"] <= 1e-4


def test_torch_answers_like_onnx_runtime(served: dict[str, Any], trained: dict[str, Any]) -> None:
    torch_client: httpx.Client = served["torch"]
    x = trained["x"]
    path = f"/v2/models/{NAME}/infer"
    # every row of the data set in one request (JSON), on both runtimes
    ours = outputs_of(torch_client.post(path, json=infer_body(x)))
    theirs = outputs_of(served["onnx"].post(path, json=infer_body(x)))
    assert ours.shape == (len(x), 2)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
    assert float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1))) == 1.0
    # the trainer's own example answers (torch, in the worker)
    example = trained["manifest"]["example"]
    got = outputs_of(torch_client.post(path, json=infer_body(np.asarray(example["input"], dtype=np.float32))))
    np.testing.assert_allclose(got, np.asarray(example["probabilities"]), rtol=1e-5, atol=1e-6)
    # binary tensors in and out (the input buffer is read-only: the executor copies it for torch)
    rows = x[:7]
    raw = rows.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [7, 30], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = torch_client.post(path, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    out = json.loads(r.content[:length])["outputs"][0]
    binary = np.frombuffer(r.content[length:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(binary, theirs[:7], rtol=RTOL, atol=ATOL)
    # concurrent requests of different sizes go through the dynamic batcher and come back to their senders
    rng = np.random.default_rng(4)
    picks = [rng.choice(len(x), size=int(rng.integers(1, 4)), replace=False) for _ in range(120)]
    answers = post_many(served["endpoint"], [(path, infer_body(x[p]), {}) for p in picks], 32)
    for p, answer in zip(picks, answers, strict=True):
        np.testing.assert_allclose(outputs_of(answer), theirs[p], rtol=RTOL, atol=ATOL)
    stats = torch_client.get("/v2/falaj/stats").json()["variants"][0]
    assert stats["requests"] >= 123 and stats["batch"]["max_rows"] >= len(x)


def test_bad_input_is_400_with_a_v2_error(served: dict[str, Any]) -> None:
    client: httpx.Client = served["torch"]
    path = f"/v2/models/{NAME}/infer"
    bad: list[tuple[Any, str]] = [
        (infer_body(np.zeros((2, 29), np.float32)), "input 'input' has shape [2, 29]; the model expects [-1, 30]"),
        (
            {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "INT64", "data": [0] * 30}]},
            "datatype INT64; the model expects FP32",
        ),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]}, "missing input"),
        ({"inputs": [{"name": "input", "shape": [0, 30], "datatype": "FP32", "data": []}]}, "0 rows"),
        (b"{not json", "not valid JSON"),
    ]
    for body, message in bad:
        r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
        assert r.status_code == 400, (message, r.status_code, r.text)
        assert message in r.json()["error"], (message, r.json())
    assert outputs_of(client.post(path, json=infer_body(np.zeros((1, 30), np.float32)))).shape == (1, 2)


# -- refusals -------------------------------------------------------------------------------------------------------
def test_a_cuda_device_is_refused_where_torch_sees_none(
    served: dict[str, Any], trained: dict[str, Any], torch_runtime: Any
) -> None:
    device = served["torch"].get(f"/v2/models/{NAME}").json()["parameters"]["device"]
    deployment = spec("wants-cuda", [served["variant"]], device="cuda")
    if device.startswith("cuda"):  # a GPU node: the same request is served there
        endpoint = torch_runtime.deploy(deployment)
        with httpx.Client(base_url=endpoint, timeout=30) as client:
            assert client.get("/v2/models/wants-cuda").json()["parameters"]["device"] == "cuda:0"
        torch_runtime.undeploy("wants-cuda")
        return
    with pytest.raises(BackendError) as failed:
        torch_runtime.deploy(deployment)
    message = str(failed.value)
    assert "setting 'device' is 'cuda' but torch sees no CUDA device on this node" in message
    assert "use 'auto' (CUDA where present, else CPU) or 'cpu'" in message
    assert torch_runtime.status("wants-cuda") == "failed" and torch_runtime.endpoint("wants-cuda") is None
    assert not (torch_runtime.run_dir("wants-cuda") / "artifacts").exists()


def test_a_tampered_torch_program_is_refused_before_loading(
    tmp_path: Path, trained: dict[str, Any], signer: Signer, torch_runtime: Any
) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(trained["folder"], folder)
    variant = signed_variant(folder, signer)  # signed, then changed
    program = folder / "model.pt2"
    raw = bytearray(program.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    program.write_bytes(bytes(raw))
    with pytest.raises(BackendError, match=r"artifact file model\.pt2 does not match the manifest"):
        torch_runtime.deploy(spec("tampered", [variant]))
    assert torch_runtime.status("tampered") == "failed"
    log = (torch_runtime.run_dir("tampered") / "server.log").read_text()
    assert "refusing to start" in log and "torch program" not in log  # refused before anything was loaded


def test_an_artifact_without_a_torch_program_is_refused(
    tmp_path: Path, trained: dict[str, Any], signer: Signer, torch_runtime: Any
) -> None:
    folder = tmp_path / "onnx-only"
    shutil.copytree(trained["folder"], folder)
    (folder / "model.pt2").unlink()
    manifest = json.loads((folder / "falaj-model.json").read_text())
    del manifest["torch_program"]
    (folder / "falaj-model.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match=r"the artifact holds no torch program: its falaj-model\.json has no"):
        torch_runtime.deploy(spec("no-program", [signed_variant(folder, signer)]))
    assert torch_runtime.status("no-program") == "failed"
    # an ONNX file with no model manifest at all (as a user's own upload might be)
    bare = tmp_path / "bare"
    write_mlp(bare, n_features=30, seed=1)
    with pytest.raises(BackendError, match=r"the artifact has no falaj-model\.json, so it names no torch program"):
        torch_runtime.deploy(spec("no-program", [signed_variant(bare, signer)]))


def test_the_program_is_checked_against_its_manifest(tmp_path: Path, trained: dict[str, Any]) -> None:
    """The loader itself, in this process: what the manifest declares must be what the program takes and answers."""
    from falaj.plugins.onnx_serving.model import ModelLoadError, load_model
    from falaj.plugins.onnx_serving.settings import ServingSettings

    settings = ServingSettings(max_batch_size=8)
    model = load_model(trained["folder"], settings, "torch")
    assert model.platform == "pytorch_export" and model.batchable and model.parameters["program"] == "model.pt2"
    example = trained["manifest"]["example"]
    [got] = model.run({"input": np.asarray(example["input"], dtype=np.float32)})
    np.testing.assert_allclose(got, np.asarray(example["probabilities"]), rtol=1e-5, atol=1e-6)

    def altered(name: str, change: Any) -> Path:
        folder = tmp_path / name
        shutil.copytree(trained["folder"], folder)
        manifest = json.loads((folder / "falaj-model.json").read_text())
        change(manifest)
        (folder / "falaj-model.json").write_text(json.dumps(manifest))
        return folder

    refusals = [
        (
            altered("fp64", lambda m: m["input"].update(dtype="float64")),
            r"takes FP32 of rank 2 as input 'input'; the manifest declares FP64 \[-1, 30\]",
        ),
        (
            altered("two", lambda m: m["outputs"].append({"name": "extra", "dtype": "float32", "shape": [-1]})),
            r"the torch program answered 1 outputs; the manifest lists 2 \(checked on an input of zeros\)",
        ),
        (
            altered("rank", lambda m: m["outputs"][0].update(shape=[-1])),
            r"answers FP32 of rank 2 as output 'probabilities'; the manifest declares FP32 \[-1\]",
        ),
        (
            altered("strings", lambda m: m["input"].update(dtype="string")),
            r"input 'input' has dtype 'string', which the torch runtime cannot carry",
        ),
        (
            altered("escape", lambda m: m["torch_program"].update(file="../model.pt2")),
            r"the torch program '\.\./model\.pt2' is not a file inside the artifact",
        ),
        (
            altered("script", lambda m: m["torch_program"].update(format="torchscript")),
            r"format is 'torchscript'; this runtime loads 'torch\.export' programs",
        ),
    ]
    for folder, message in refusals:
        with pytest.raises(ModelLoadError, match=message):
            load_model(folder, settings, "torch")
    garbled = altered("garbled", lambda m: None)
    (garbled / "model.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match=r"torch .* cannot load the torch program model\.pt2 \(saved with torch "):
        load_model(garbled, settings, "torch")
