"""The builtin local compute backend, end to end: real worker processes, real torch, real ONNX Runtime.

Training data comes from the data sets scikit-learn ships inside its package (breast cancer, diabetes),
written to CSV files with a subject id column. Jobs run in their own processes exactly as the control
plane starts them; the artifacts are loaded here with ONNX Runtime and compared with what torch answered.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from falaj.core.errors import BackendError
from falaj.core.plugin import BackendConfig, ComputeBackend, JobStatus
from falaj.plugins import local_compute
from falaj.plugins.local_compute import jobfiles
from falaj.plugins.local_compute.backend import LocalCompute

MISSING = [name for name in ("torch", "onnx", "onnxscript", "onnxruntime", "sklearn") if find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"local training needs {', '.join(MISSING)}")

TERMINAL = ("succeeded", "failed", "cancelled")
BC_ROWS = 569


# -- data and helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    path = tmp_path_factory.mktemp("data") / "breast_cancer.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pid", *(n.replace(" ", "_") for n in data.feature_names), "malignant"])
        for i, (row, label) in enumerate(zip(data.data, data.target, strict=True)):
            w.writerow([f"P{i:04d}", *row.tolist(), int(label)])
    return path


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    path = tmp_path_factory.mktemp("data") / "diabetes.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pid", *data.feature_names, "progression"])
        for i, (row, target) in enumerate(zip(data.data, data.target, strict=True)):
            w.writerow([f"D{i:03d}", *row.tolist(), float(target)])
    return path


def make_backend(home: Path, **settings: Any) -> LocalCompute:
    return LocalCompute(
        BackendConfig(
            name="trainer",
            plugin="local",
            kind="compute",
            region="me-central-1",
            node_class="cpu-smb",
            tenant="operator",
            home=home,
            settings=settings,
        )
    )


@pytest.fixture
def backend(tmp_path: Path) -> LocalCompute:
    return make_backend(tmp_path / "home")


def make_job(run_id: str, spec: dict[str, Any], *files: Path, **entry: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "tenant": "operator",
        "name": f"train-{run_id}",
        "purpose": "training",
        "spec": spec,
        "inputs": [
            {
                "dataset": f.stem,
                "version": 1,
                "classification": "internal",
                "uri": f.as_uri(),
                "consent_filtered": False,
                **entry,
            }
            for f in files
        ],
    }


CLASSIFIER = {"trainer": "tabular_classifier", "target": "malignant", "subject_column": "pid", "epochs": 15}
LONG = {**CLASSIFIER, "epochs": 1000, "batch_size": 1}


def wait(backend: ComputeBackend, handle: str, timeout: float = 60.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status(handle)
        if status.state in TERMINAL:
            return status
        assert time.monotonic() < deadline, f"job {handle} still {status.state} after {timeout} s: {status}"
        time.sleep(0.05)


def wait_for_epoch(backend: ComputeBackend, handle: str, timeout: float = 30.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status(handle)
        assert status.state not in TERMINAL, status
        if status.state == "running" and status.message.startswith("epoch "):
            return status
        assert time.monotonic() < deadline, f"job {handle} never reached an epoch: {status}"
        time.sleep(0.05)


def job_folder(backend: LocalCompute, handle: str) -> Path:
    return backend.jobs / handle


def processes(folder: Path) -> list[dict[str, Any]]:
    return [
        r for r in (jobfiles.read_json(folder / jobfiles.PROCESS), jobfiles.read_json(folder / jobfiles.TRAINER)) if r
    ]


def assert_no_model_and_no_process(folder: Path) -> None:
    assert not (folder / "artifact").exists()
    assert not (folder / "staging").exists()
    assert jobfiles.wait_dead(processes(folder), timeout=10), processes(folder)  # the supervisor may be exiting


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def ort_run(folder: Path, rows: Any) -> Any:
    import numpy as np
    import onnxruntime as ort

    manifest = json.loads((folder / "falaj-model.json").read_text())
    session = ort.InferenceSession(str(folder / manifest["model_file"]), providers=["CPUExecutionProvider"])
    name = manifest["input"]["name"]
    return session.run(None, {name: np.asarray(rows, dtype=np.float32)})[0]


# -- the plugin -------------------------------------------------------------------------------------------------
def test_the_plugin_registers_and_imports_no_ml_framework() -> None:
    code = (
        "import sys\n"
        "from falaj.core.plugin import create_plugin_manager\n"
        "r = create_plugin_manager(builtins=('falaj.plugins.local_compute',), load_entrypoints=False)\n"
        "info = r.plugins['local-compute']\n"
        "spec = r.backend_spec('compute', 'local')\n"
        "print(info.state, info.provides, sorted(spec.capabilities))\n"
        "print([m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'numpy', 'sklearn') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.splitlines() == ["active ['compute:local'] ['cpu', 'cuda-if-present']", "[]"]


# -- (a) the tabular classifier -------------------------------------------------------------------------------
def test_classifier_trains_exports_onnx_that_matches_torch_and_is_reproducible(
    tmp_path: Path, breast_cancer: Path
) -> None:
    import numpy as np

    backend = make_backend(tmp_path / "home")
    handles = [backend.submit(make_job(run, CLASSIFIER, breast_cancer)) for run in ("bc-1", "bc-2")]
    assert handles == ["bc-1", "bc-2"]
    first, second = (wait(backend, h) for h in handles)
    assert first.state == "succeeded", first.message
    assert second.state == "succeeded", second.message

    m = first.metrics
    assert m["accuracy"] > 0.9 and m["roc_auc"] > 0.95 and 0 < m["log_loss"] < 0.5, m
    assert m["train_rows"] + m["validation_rows"] == BC_ROWS and m["validation_rows"] == round(BC_ROWS * 0.2)
    out = first.outputs
    artifact = Path(out["artifact_path"])
    assert artifact == job_folder(backend, "bc-1") / "artifact"
    assert sorted(p.name for p in artifact.iterdir()) == [
        "falaj-model.json",
        "model.onnx",
        "model.onnx.data",
        "model.pt2",
    ]
    assert Path(out["log_path"]).is_file() and "epoch 15/15" in Path(out["log_path"]).read_text()
    assert out["started_at"] and out["finished_at"] and out["finished_at"] > out["started_at"]

    manifest = json.loads((artifact / "falaj-model.json").read_text())
    assert manifest["task"] == "classification" and manifest["classes"] == ["0", "1"]
    assert manifest["target"] == "malignant" and len(manifest["features"]) == 30 and "pid" not in manifest["features"]
    assert manifest["input"] == {"name": "input", "dtype": "float32", "shape": [-1, 30]}
    assert manifest["outputs"][0]["name"] == "probabilities"
    assert len(manifest["normalisation"]["mean"]) == 30 and manifest["normalisation"]["in_graph"] is True
    assert manifest["frameworks"]["torch"] == importlib.metadata.version("torch")
    assert manifest["frameworks"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert isinstance(manifest["opset"], int)

    # ONNX Runtime, loaded here, answers what torch answered in the worker, and classifies the data well.
    example = manifest["example"]
    got = ort_run(artifact, example["input"])
    np.testing.assert_allclose(got, np.array(example["probabilities"]), rtol=1e-3, atol=1e-4)
    rows = list(csv.DictReader(breast_cancer.open()))
    x = [[float(r[f]) for f in manifest["features"]] for r in rows]
    labels = np.array([manifest["classes"].index(r["malignant"]) for r in rows])
    proba = ort_run(artifact, x)
    assert proba.shape == (BC_ROWS, 2) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert float(np.mean(proba.argmax(axis=1) == labels)) > 0.9

    lineage = out["lineage"]
    assert lineage["seed"] == 0 and lineage["run_id"] == "bc-1" and lineage["purpose"] == "training"
    assert lineage["code_digest"] == sha256(Path(local_compute.__file__).parent / "trainer.py")
    assert lineage["versions"]["torch"] == importlib.metadata.version("torch")
    assert {"python", "onnx", "onnxruntime", "numpy"} <= set(lineage["versions"])
    [source] = lineage["inputs"]
    assert source["dataset"] == "breast_cancer" and source["sha256"] == sha256(breast_cancer)
    assert source["rows"] == BC_ROWS and lineage["rows"] == {"read": BC_ROWS, "train": 455, "validation": 114}

    # The same seed gives the same model, byte for byte, and the same metrics.
    other = Path(second.outputs["artifact_path"])
    for name in ("model.onnx", "model.onnx.data", "model.pt2", "falaj-model.json"):
        assert (artifact / name).read_bytes() == (other / name).read_bytes(), name
    assert dict(first.metrics) == dict(second.metrics)

    # A control plane that restarted reads the same answer from the files alone.
    again = make_backend(tmp_path / "home").status("bc-1")
    assert again.state == "succeeded" and dict(again.metrics) == dict(first.metrics)
    assert again.outputs["artifact_path"] == out["artifact_path"]
    live = json.loads((job_folder(backend, "bc-1") / "status.json").read_text())
    assert live["state"] == "succeeded" and live["epoch"] == 15
    assert jobfiles.wait_dead(processes(job_folder(backend, "bc-1")), timeout=10)


# -- (b) the tabular regressor --------------------------------------------------------------------------------
def test_regressor_trains_on_diabetes(backend: LocalCompute, diabetes: Path) -> None:
    import numpy as np

    spec = {"trainer": "tabular_regressor", "target": "progression", "subject_column": "pid", "epochs": 40}
    status = wait(backend, backend.submit(make_job("diab", {**spec, "hidden": [16], "lr": 0.01}, diabetes)))
    assert status.state == "succeeded", status.message
    m = status.metrics
    assert {"rmse", "mae", "r2", "train_rows", "validation_rows"} <= set(m)
    assert m["r2"] > 0.3 and m["rmse"] < 65 and m["mae"] < m["rmse"], m
    artifact = Path(status.outputs["artifact_path"])
    manifest = json.loads((artifact / "falaj-model.json").read_text())
    assert manifest["task"] == "regression" and manifest["classes"] is None
    assert manifest["outputs"][0] == {"name": "prediction", "dtype": "float32", "shape": [-1]}
    assert manifest["features"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert "target_mean" in manifest["normalisation"]
    got = ort_run(artifact, manifest["example"]["input"])
    np.testing.assert_allclose(got, np.array(manifest["example"]["prediction"]), rtol=1e-3, atol=1e-3)
    assert 25 < float(np.mean(got)) < 350  # on the target's own scale


def test_device_cuda_runs_only_where_torch_sees_a_gpu(backend: LocalCompute, breast_cancer: Path) -> None:
    status = wait(
        backend, backend.submit(make_job("gpu", {**CLASSIFIER, "epochs": 2, "device": "cuda"}, breast_cancer))
    )
    if status.state == "failed":  # a machine without CUDA: refused with the reason, no model
        assert "spec field 'device' is 'cuda' but torch sees no CUDA device here" in status.message
        assert_no_model_and_no_process(job_folder(backend, "gpu"))
    else:
        assert status.state == "succeeded", status.message
        assert status.outputs["lineage"]["device"].startswith("cuda")


def test_an_export_that_onnx_runtime_disagrees_with_is_refused(tmp_path: Path) -> None:
    """The check itself: a model that computes one thing eagerly and another when exported is caught."""
    import numpy as np
    import torch

    from falaj.plugins.local_compute.data import JobError
    from falaj.plugins.local_compute.trainer import export

    class TwoFaced(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if torch.compiler.is_exporting() else x

    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(JobError, match="ONNX Runtime's outputs differ from torch's"):
        export(TwoFaced(), x, tmp_path, "prediction")

    class Honest(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    (tmp_path / "ok").mkdir()
    check = export(Honest(), x, tmp_path / "ok", "prediction")
    assert check["check"]["max_abs_diff"] <= 1e-6


# -- (c) bad specs --------------------------------------------------------------------------------------------
BAD_SPECS = [
    ({**CLASSIFIER, "trainer": "xgboost"}, "spec field 'trainer': 'xgboost' is not a builtin trainer"),
    ({**CLASSIFIER, "epochz": 3}, "spec field 'epochz' is unknown"),
    ({k: v for k, v in CLASSIFIER.items() if k != "target"}, "spec field 'target' is missing"),
    ({**CLASSIFIER, "target": "diagnosis"}, "column 'diagnosis' is not in breast_cancer v1"),
    ({**CLASSIFIER, "features": ["mean_radius", "nope"]}, "column 'nope' is not in breast_cancer v1"),
    ({**CLASSIFIER, "epochs": 5000}, "spec field 'epochs': 5000 is not allowed; give an integer from 1 to 1000"),
    ({**CLASSIFIER, "epochs": True}, "spec field 'epochs'"),
    ({**CLASSIFIER, "device": "tpu"}, "spec field 'device': 'tpu' is not allowed; allowed: auto, cpu, cuda"),
    ({**CLASSIFIER, "threads": (os.cpu_count() or 1) + 1}, "spec field 'threads'"),
    ({**CLASSIFIER, "time_limit_s": 10**9}, "spec field 'time_limit_s'"),
    ({**CLASSIFIER, "validation_fraction": 1.0}, "spec field 'validation_fraction'"),
    ({**CLASSIFIER, "lr": float("nan")}, "spec field 'lr'"),
    ({**CLASSIFIER, "hidden": [0]}, "spec field 'hidden'"),
    ({**CLASSIFIER, "features": ["malignant"]}, "spec field 'features' must not hold 'malignant'"),
    ({**CLASSIFIER, "entry_point": "mod:fn"}, "'trainer' and 'entry_point' exclude each other"),
    ({"entry_point": "not a module"}, "spec field 'entry_point'"),
    ({**CLASSIFIER, "params": {"a": 1}}, "spec field 'params' is only for an 'entry_point'"),
    ({}, "spec field 'trainer' is missing"),
]


@pytest.mark.parametrize(("spec", "reason"), BAD_SPECS, ids=[r[:40] for _, r in BAD_SPECS])
def test_bad_specs_are_refused_before_anything_starts(
    backend: LocalCompute, breast_cancer: Path, spec: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=r"spec field|exclude each other") as refused:
        backend.submit(make_job("bad", spec, breast_cancer))
    assert reason in str(refused.value)
    assert list(backend.jobs.iterdir()) == []  # no folder, no process


def test_bad_jobs_and_settings_are_refused(tmp_path: Path, backend: LocalCompute, breast_cancer: Path) -> None:
    remote = make_job("r", CLASSIFIER, breast_cancer)
    remote["inputs"][0]["uri"] = "s3://bucket/bc.csv"
    with pytest.raises(ValueError, match="reads local files"):
        backend.submit(remote)
    with pytest.raises(ValueError, match="at least one dataset"):
        backend.submit({**make_job("r", CLASSIFIER), "inputs": []})
    with pytest.raises(ValueError, match="not a valid run id"):
        backend.submit(make_job("../escape", CLASSIFIER, breast_cancer))
    assert list(backend.jobs.iterdir()) == []
    for settings, reason in (
        ({"gpu": True}, "unknown setting 'gpu'"),
        ({"python_path": "relative"}, "setting 'python_path'"),
        ({"python_path": ["relative/dir"]}, "not an absolute folder path"),
        ({"max_threads": 0}, "setting 'max_threads'"),
        ({"max_time_limit_s": -1}, "setting 'max_time_limit_s'"),
    ):
        with pytest.raises(ValueError, match=reason):
            make_backend(tmp_path / "other", **settings)
    with pytest.raises(BackendError, match="has no job"):
        backend.status("never-submitted")


def test_bad_data_fails_in_the_worker_with_the_reason(backend: LocalCompute, tmp_path: Path) -> None:
    data = tmp_path / "text.csv"
    data.write_text("pid,x,label\nA,1.5,yes\nB,oops,no\nC,2.0,yes\n")
    status = wait(backend, backend.submit(make_job("text", {**CLASSIFIER, "target": "label", "features": ["x"]}, data)))
    assert status.state == "failed"
    assert "column 'x' line 3: 'oops' is not a number" in status.message
    assert "artifact_path" not in status.outputs
    assert status.outputs["lineage"]["inputs"][0]["rows"] == 3  # what was read is known even for a failure
    assert_no_model_and_no_process(job_folder(backend, "text"))
    # A view whose row count is not what the control plane wrote is refused (it changed after submission).
    status = wait(backend, backend.submit(make_job("changed", CLASSIFIER | {"target": "label"}, data, rows=2)))
    assert status.state == "failed" and "holds 3 rows but the control plane wrote 2" in status.message


# -- (d) cancel, (e) the time limit, a dead worker --------------------------------------------------------------
def test_cancel_stops_a_long_job_and_leaves_no_model(backend: LocalCompute, breast_cancer: Path) -> None:
    handle = backend.submit(make_job("long", LONG, breast_cancer))
    running = wait_for_epoch(backend, handle)
    assert running.metrics["val_accuracy"] > 0 and running.outputs["started_at"]
    backend.cancel(handle)
    status = backend.status(handle)
    assert status.state == "cancelled" and status.outputs["finished_at"]
    assert "artifact_path" not in status.outputs
    folder = job_folder(backend, handle)
    assert_no_model_and_no_process(folder)
    time.sleep(0.3)
    backend.cancel(handle)  # again: nothing changes
    assert make_backend(backend.jobs.parent).status(handle).state == "cancelled"
    assert json.loads((folder / "status.json").read_text())["state"] == "cancelled"


def test_a_job_past_its_time_limit_is_killed_and_fails(backend: LocalCompute, breast_cancer: Path) -> None:
    status = wait(backend, backend.submit(make_job("slow", {**LONG, "time_limit_s": 2}, breast_cancer)))
    assert status.state == "failed"
    assert "time limit of 2 s exceeded" in status.message
    assert_no_model_and_no_process(job_folder(backend, "slow"))


# -- entry points ---------------------------------------------------------------------------------------------
USER_MODULE = '''
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fit(inputs, spec, output):
    """Least-squares linear scores on the numeric columns, exported as ONNX with the helper API."""
    assert isinstance(output, Path) and list(output.iterdir()) == []
    [table] = inputs
    cols = table["columns"]
    assert cols["pid"].dtype.kind == "U" and cols["malignant"].dtype == np.float64
    features = [c for c in table["header"] if c not in ("pid", spec["target"])]
    x = np.column_stack([cols[c] for c in features])
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = np.column_stack([(x - mean) / std, np.ones(len(x))])
    ridge = spec["params"]["ridge"]
    w = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ cols[spec["target"]])
    weight = (w[:-1] / std).astype(np.float32).reshape(-1, 1)
    bias = np.array([w[-1] - float((mean / std) @ w[:-1])], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["score"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(features)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, output / "model.onnx")
    accuracy = float(np.mean((z @ w > 0.5) == (cols[spec["target"]] > 0.5)))
    return {"accuracy": accuracy, "rows": float(table["rows"])}


def crash(inputs, spec, output):
    print("about to fall over", file=sys.stderr, flush=True)
    os._exit(3)


def killed(inputs, spec, output):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would


def raises(inputs, spec, output):
    raise RuntimeError("the user code is broken")


def no_model(inputs, spec, output):
    return {"accuracy": 1.0}


def sleeps(inputs, spec, output):
    import time

    time.sleep(60)
'''


@pytest.fixture
def user_backend(tmp_path: Path) -> LocalCompute:
    code = tmp_path / "user_code"
    code.mkdir()
    (code / "my_trainers.py").write_text(textwrap.dedent(USER_MODULE))
    return make_backend(tmp_path / "home", python_path=[str(code)])


def test_an_entry_point_trains_its_own_model(user_backend: LocalCompute, breast_cancer: Path) -> None:
    import numpy as np

    spec = {"entry_point": "my_trainers:fit", "target": "malignant", "params": {"ridge": 1.0}}
    status = wait(user_backend, user_backend.submit(make_job("udf", spec, breast_cancer)))
    assert status.state == "succeeded", status.message
    assert status.metrics["accuracy"] > 0.9 and status.metrics["rows"] == BC_ROWS
    artifact = Path(status.outputs["artifact_path"])
    manifest = json.loads((artifact / "falaj-model.json").read_text())
    assert manifest["task"] == "custom" and manifest["trainer"] == "my_trainers:fit"
    assert manifest["inputs"] == [{"name": "input", "dtype": "float", "shape": [-1, 30]}]
    assert manifest["outputs"][0]["name"] == "score"
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = [[float(r[c]) for c in list(r)[1:-1]] for r in csv.DictReader(breast_cancer.open())]
    scores = session.run(None, {"input": np.asarray(rows, dtype=np.float32)})[0]
    assert scores.shape == (BC_ROWS, 1)
    lineage = status.outputs["lineage"]
    code = Path(user_backend.settings.python_path[0]) / "my_trainers.py"
    assert lineage["code_digest"] == sha256(code) and lineage["trainer"] == "my_trainers:fit"
    assert lineage["inputs"][0]["sha256"] == sha256(breast_cancer)


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("crash", "the trainer exited with code 3 without a result"),
        ("killed", "the trainer was killed by signal SIGKILL"),
        ("raises", "training failed: RuntimeError: the user code is broken"),
        ("no_model", "the artifact has no model.onnx"),
        ("missing", "module 'my_trainers' has no function 'missing'"),
        ("elsewhere:fit", "no module 'elsewhere' under the backend's python_path"),
        ("json:dumps", "no module 'json' under the backend's python_path"),  # never the standard library
    ],
)
def test_a_crashing_entry_point_fails_with_its_log_tail(
    user_backend: LocalCompute, breast_cancer: Path, function: str, reason: str
) -> None:
    entry_point = function if ":" in function else f"my_trainers:{function}"
    run_id = function.replace(":", "-")
    status = wait(user_backend, user_backend.submit(make_job(run_id, {"entry_point": entry_point}, breast_cancer)))
    assert status.state == "failed"
    assert reason in status.message
    assert "last log lines:" in status.message
    if function == "crash":
        assert "about to fall over" in status.message
    assert_no_model_and_no_process(job_folder(user_backend, run_id))


def test_a_worker_that_dies_is_reported_failed_from_the_files(user_backend: LocalCompute, breast_cancer: Path) -> None:
    handle = user_backend.submit(make_job("dies", {"entry_point": "my_trainers:sleeps"}, breast_cancer))
    folder = job_folder(user_backend, handle)
    deadline = time.monotonic() + 20
    while jobfiles.read_json(folder / jobfiles.TRAINER) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    supervisor = jobfiles.read_json(folder / jobfiles.PROCESS)
    assert supervisor is not None
    os.kill(supervisor["pid"], signal.SIGKILL)  # as the OOM killer would: it records nothing
    status = wait(make_backend(user_backend.jobs.parent), handle, timeout=20)
    assert status.state == "failed" and "the worker stopped without recording an outcome" in status.message
    assert_no_model_and_no_process(folder)


def test_status_stops_a_job_whose_supervisor_hangs_past_the_time_limit(
    user_backend: LocalCompute, breast_cancer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from falaj.plugins.local_compute import backend as backend_module

    monkeypatch.setattr(backend_module, "OVERRUN_GRACE_S", 0.5)
    handle = user_backend.submit(
        make_job("hung", {"entry_point": "my_trainers:sleeps", "time_limit_s": 1}, breast_cancer)
    )
    folder = job_folder(user_backend, handle)
    deadline = time.monotonic() + 20
    while jobfiles.read_json(folder / jobfiles.TRAINER) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    supervisor = jobfiles.read_json(folder / jobfiles.PROCESS)
    assert supervisor is not None
    os.kill(supervisor["pid"], signal.SIGSTOP)  # it can no longer enforce the limit itself
    status = wait(user_backend, handle, timeout=20)
    assert status.state == "failed" and "time limit of 1 s exceeded" in status.message
    assert_no_model_and_no_process(folder)


def test_a_supervisor_stopped_by_sigterm_records_why(user_backend: LocalCompute, breast_cancer: Path) -> None:
    handle = user_backend.submit(make_job("term", {"entry_point": "my_trainers:sleeps"}, breast_cancer))
    folder = job_folder(user_backend, handle)
    deadline = time.monotonic() + 20
    while jobfiles.read_json(folder / jobfiles.TRAINER) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    supervisor = jobfiles.read_json(folder / jobfiles.PROCESS)
    assert supervisor is not None
    os.kill(supervisor["pid"], signal.SIGTERM)
    status = wait(user_backend, handle, timeout=20)
    assert status.state == "failed" and "the worker was stopped by signal SIGTERM" in status.message
    assert_no_model_and_no_process(folder)


# -- (h) through the control plane ----------------------------------------------------------------------------
@pytest.fixture
def plane_world(tmp_path: Path, database_url: str) -> Iterator[Any]:
    from falaj.core.plugin import create_plugin_manager
    from falaj.core.plugin.manager import BUILTIN_PLUGINS
    from tests.conftest import make_world

    builtins = tuple(dict.fromkeys((*BUILTIN_PLUGINS, "falaj.plugins.local_compute")))
    registry = create_plugin_manager(builtins=builtins, load_entrypoints=False)
    assert registry.plugins["local-compute"].state == "active"
    w = make_world(tmp_path, database_url, registry=registry)
    try:
        w.principal("eng", ["ml-engineer"])
        w.principal("dpo", ["data-steward"])
        yield w
    finally:
        w.plane.close()


def test_training_through_the_control_plane_reads_only_consented_rows(plane_world: Any) -> None:
    from sqlalchemy import select

    from falaj.core.datasets import file_digest
    from falaj.core.domain import Backend

    w = plane_world
    r = w.act("backend.register", {"name": "cpu-ae", "kind": "compute", "plugin": "local", "region": "me-central-1"})
    assert r.ok, r.message()
    folder = w.settings.data_dir / w.tenant
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "customers.csv"
    n, withdrawn = 60, {f"C{i:03d}" for i in range(0, 60, 6)}
    with source.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["cid", "age", "tenure", "churned"])
        for i in range(n):
            out.writerow([f"C{i:03d}", 20 + i % 40, (i * 7) % 25, int((i * 7) % 25 > 12)])
    r = w.act(
        "dataset.register",
        {
            "name": "customers",
            "classification": "personal",
            "residency": "AE",
            "legal_basis": "consent",
            "uri": source.as_uri(),
            "subject_column": "cid",
        },
        as_="dpo",
    )
    assert r.ok, r.message()
    for i in range(n):
        assert w.act("consent.record", {"subject_id": f"C{i:03d}", "purpose": "training"}, as_="dpo").ok
    for subject in sorted(withdrawn):
        assert w.act("consent.withdraw", {"subject_id": subject, "purpose": "training"}, as_="dpo").ok

    bad = w.act(
        "training.submit",
        {"name": "bad", "backend": "cpu-ae", "inputs": ["customers"], "spec": {"trainer": "forest"}},
        as_="eng",
    )
    assert bad.outcome == "failed" and "spec field 'trainer': 'forest' is not a builtin trainer" in bad.error

    spec = {"trainer": "tabular_classifier", "target": "churned", "subject_column": "cid", "epochs": 5}
    r = w.act(
        "training.submit", {"name": "churn", "backend": "cpu-ae", "inputs": ["customers"], "spec": spec}, as_="eng"
    )
    assert r.ok, r.message()
    assert r.data["excluded_rows"] == len(withdrawn) and r.data["handle"] == r.data["run_id"]
    with w.plane.sessions() as s:
        row = s.scalar(select(Backend).where(Backend.name == "cpu-ae"))
    compute = w.plane.backend_instance(w.tenant, row)
    assert isinstance(compute, LocalCompute)
    status = wait(compute, r.data["handle"])
    assert status.state == "succeeded", status.message

    lineage = status.outputs["lineage"]
    [source_read] = lineage["inputs"]
    view = Path(r.data["inputs"][0]["uri"].removeprefix("file://"))
    assert source_read["consent_filtered"] is True and source_read["uri"] == view.as_uri()
    assert source_read["rows"] == source_read["reported_rows"] == n - len(withdrawn)
    assert source_read["excluded_rows"] == lineage["excluded_rows"] == len(withdrawn)
    assert source_read["sha256"] == file_digest(view) != file_digest(source)
    assert lineage["rows"]["read"] == n - len(withdrawn)
    read_ids = {row["cid"] for row in csv.DictReader(view.open())}
    assert read_ids.isdisjoint(withdrawn) and len(read_ids) == n - len(withdrawn)
    assert status.metrics["train_rows"] + status.metrics["validation_rows"] == n - len(withdrawn)
    assert (Path(status.outputs["artifact_path"]) / "model.onnx").is_file()
