"""Loading a verified model into an executor (only inside the data-plane process).

Two executors answer the same ``run(feeds) -> outputs`` call, so batching, routing, the protocol and the
metrics are the same for both: ``onnxruntime`` (an ONNX Runtime session on the artifact's ``.onnx`` file)
and ``torch`` (the artifact's torch program, see ``torch_model.py``; torch is imported only when a
deployment uses it).

ONNX Runtime session options are chosen for small models on CPU nodes: ``intra_op_num_threads`` from the
settings, one inter-op thread, sequential execution, every graph optimisation, and no spinning (idle
threads sleep instead of burning a core waiting for work, which matters on 2-core business nodes).

At load the model is probed with zeros: it batches if every input's first dimension is dynamic and every
output's first dimension follows it; the median time of a full batch decides whether batches run on the
event loop (fast models) or in a worker thread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from falaj.plugins.onnx_serving.protocol import DTYPES, ONNX_TYPES, TensorSpec
from falaj.plugins.onnx_serving.settings import ServingSettings

PLATFORM = "onnxruntime_onnx"
EXECUTORS = ("onnxruntime", "torch")

Feeds = dict[str, np.ndarray[Any, Any]]
Outputs = list[np.ndarray[Any, Any]]


class ModelLoadError(Exception):
    """The artifact holds no model the executor can load; the message says why."""


class Executor(Protocol):
    """What runs a model: feeds by input name in, one array per output (in ``outputs`` order) out."""

    @property
    def platform(self) -> str:
        """The V2 ``platform`` of the model metadata."""
        ...

    @property
    def parameters(self) -> dict[str, Any]:
        """Facts shown as the model metadata's ``parameters`` (the torch device); empty for none."""
        ...

    def run(self, feeds: Feeds) -> Outputs: ...


class OnnxExecutor:
    """An ONNX Runtime session asked for every tensor output."""

    platform = PLATFORM

    def __init__(self, session: Any, output_names: Sequence[str]) -> None:
        self.session = session  # onnxruntime.InferenceSession
        self.parameters: dict[str, Any] = {}
        self._names = list(output_names)

    def run(self, feeds: Feeds) -> Outputs:
        result: Outputs = self.session.run(self._names, feeds)
        return result


@dataclass
class LoadedModel:
    path: Path
    executor: Executor
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batchable: bool
    run_ms: float | None  # median time of a full batch at load; None if the probe failed
    inline: bool  # run on the event loop (True) or in a thread
    run: Callable[[Feeds], Outputs] = field(init=False, repr=False)  # the executor's, with no extra call

    def __post_init__(self) -> None:
        self.run = self.executor.run

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def platform(self) -> str:
        return self.executor.platform

    @property
    def parameters(self) -> dict[str, Any]:
        return self.executor.parameters


def find_model_file(folder: Path) -> Path:
    """``model.onnx`` at the top of the folder, else the only ``*.onnx`` file in it."""
    top = folder / "model.onnx"
    if top.is_file():
        return top
    found = sorted(p for p in folder.rglob("*.onnx") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError("the artifact holds no .onnx file")
    names = ", ".join(p.relative_to(folder).as_posix() for p in found)
    raise ModelLoadError(f"the artifact holds several .onnx files and none is model.onnx: {names}")


def session_options(settings: ServingSettings) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _specs(args: Sequence[Any], what: str) -> list[TensorSpec]:
    specs = []
    for arg in args:
        datatype = ONNX_TYPES.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"{what} {arg.name!r} has type {arg.type}, which the V2 protocol cannot carry")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        specs.append(TensorSpec(arg.name, datatype, shape))
    return specs


def zeros(spec: TensorSpec, rows: int | None) -> np.ndarray[Any, Any]:
    shape = [d if d >= 0 else 1 for d in spec.shape]
    if rows is not None and shape:
        shape[0] = rows
    if spec.datatype == "BYTES":
        arr = np.empty(shape, dtype=object)
        arr.fill("")
        return arr
    return np.zeros(shape, dtype=DTYPES[spec.datatype])


def load_model(folder: Path, settings: ServingSettings, executor: str = "onnxruntime") -> LoadedModel:
    """Open the model of a verified artifact folder and probe how it batches and how fast it runs."""
    if executor == "torch":
        from falaj.plugins.onnx_serving.torch_program import find_program

        found = find_program(folder)  # refused here, before torch is imported, when there is none
        from falaj.plugins.onnx_serving import torch_model

        path, inputs, outputs = found.path, found.inputs, found.outputs
        runner = torch_model.open_program(found, settings)
    elif executor == "onnxruntime":
        path, runner, inputs, outputs = _open_onnx(folder, settings)
    else:
        raise ModelLoadError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
    model = LoadedModel(path, runner, inputs, outputs, batchable=False, run_ms=None, inline=False)
    _probe(model, settings)
    return model


def _open_onnx(folder: Path, settings: ServingSettings) -> tuple[Path, Executor, list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort  # type: ignore[import-untyped]

    path = find_model_file(folder)
    try:
        session = ort.InferenceSession(str(path), session_options(settings), providers=list(settings.providers))
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot load {path.name}: {exc}") from exc
    inputs = _specs(session.get_inputs(), "input")
    outputs = _specs_lenient(session.get_outputs())
    if not outputs:
        raise ModelLoadError("the model has no tensor output")
    return path, OnnxExecutor(session, [o.name for o in outputs]), inputs, outputs


def _probe(model: LoadedModel, settings: ServingSettings) -> None:
    """Whether the model batches along the first dimension, and how long a full batch takes."""
    inputs = model.inputs
    dynamic = bool(inputs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in inputs)
    if dynamic:
        try:
            probe = model.run({s.name: zeros(s, 2) for s in inputs})
            model.batchable = all(o.ndim >= 1 and o.shape[0] == 2 for o in probe)
        except Exception:
            model.batchable = False
    rows = settings.max_batch_size if model.batchable else None
    try:
        feeds = {s.name: zeros(s, rows) for s in inputs}
        model.run(feeds)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            model.run(feeds)
            times.append((time.perf_counter() - started) * 1000)
        model.run_ms = statistics.median(times)
        model.inline = model.run_ms < settings.inline_threshold_ms
    except Exception:
        model.run_ms, model.inline = None, False


def _specs_lenient(args: Sequence[Any]) -> list[TensorSpec]:
    """Tensor outputs only: sequence or map outputs (such as ZipMap) are left out of the V2 answer."""
    return _specs([a for a in args if a.type in ONNX_TYPES], "output")
