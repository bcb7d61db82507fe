"""The ``torch`` executor: an artifact's torch program on a CUDA device or the CPU (data-plane process only).

This module imports torch; the data plane imports it only for a deployment on the ``torch`` runtime.

**What it loads.** The program the artifact's ``falaj-model.json`` names (``torch_program.py``), with the
model's inputs and outputs as the manifest declares them, checked against the program. The program is a
``torch.export`` ExportedProgram saved with ``torch.export.save``: the graph of aten operations and the
weights, loadable without the training code (no pickled Python classes of the trainer), and movable to any
device (``torch.export.passes.move_to_device_pass``). TorchScript was not chosen: ``torch.jit.script``,
``save`` and ``load`` are deprecated in the torch this was written against (2.13), and ``torch.export`` is
their successor. An artifact without a torch program is refused with the reason.

**Where it runs.** The ``device`` setting: ``auto`` (the first CUDA device when torch sees one, else the
CPU), ``cpu``, or ``cuda``/``cuda:N`` (refused when torch sees no such device; never moved to the CPU
quietly). The choice and its reason are logged and shown in the model metadata's ``parameters``. Every run
is under ``torch.inference_mode()``; on the CPU torch uses ``intra_op_threads`` threads and one inter-op
thread. Inputs arrive as numpy arrays (batched by the server) and outputs leave as numpy arrays.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from falaj.plugins.onnx_serving.model import Executor, Feeds, ModelLoadError, Outputs, zeros
from falaj.plugins.onnx_serving.protocol import DTYPES, TensorSpec
from falaj.plugins.onnx_serving.settings import DeviceUnavailable, ServingSettings, choose_device
from falaj.plugins.onnx_serving.torch_program import TorchProgram

log = logging.getLogger("falaj.onnx_serving")

PLATFORM = "pytorch_export"
TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}

DTYPES_BY_NUMPY: dict[str, str] = {dtype.str: name for name, dtype in DTYPES.items() if name != "BYTES"}


class ShapeOfAnswerError(ValueError):
    """The program answers something other than the tensors the manifest lists."""


class TorchExecutor:
    """A loaded torch program on one device, called with numpy feeds."""

    platform = PLATFORM

    def __init__(
        self, module: Any, device: str, input_names: Sequence[str], output_names: Sequence[str], facts: dict[str, Any]
    ) -> None:
        self._module = module
        self._device = torch.device(device)
        self._cpu = self._device.type == "cpu"
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        self.parameters: dict[str, Any] = facts

    def _tensor(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        if not array.flags.writeable:  # a binary request's buffer: torch tensors must own writable memory
            array = array.copy()
        tensor = torch.from_numpy(array)
        return tensor if self._cpu else tensor.to(self._device)

    def run(self, feeds: Feeds) -> Outputs:
        with torch.inference_mode():
            result = self._module(*[self._tensor(feeds[name]) for name in self._inputs])
            if isinstance(result, torch.Tensor):
                tensors: Sequence[Any] = (result,)
            elif isinstance(result, Mapping):
                tensors = [result[name] for name in self._outputs]
            elif isinstance(result, list | tuple):
                tensors = result
            else:
                raise ShapeOfAnswerError(f"the torch program answered a {type(result).__name__}, not tensors")
            if len(tensors) != len(self._outputs):
                raise ShapeOfAnswerError(
                    f"the torch program answered {len(tensors)} outputs; the manifest lists {len(self._outputs)}"
                )
            if self._cpu:
                return [t.numpy() for t in tensors]
            return [t.cpu().numpy() for t in tensors]


def _check_signature(program: Any, inputs: list[TensorSpec], rel: str) -> None:
    """The program takes as many inputs as the manifest declares, of the declared types and ranks."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != len(inputs):
        raise ModelLoadError(f"the torch program {rel} takes {len(names)} inputs; the manifest declares {len(inputs)}")
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name, spec in zip(names, inputs, strict=True):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            continue  # no recorded example: the first run tells
        datatype = TORCH_DTYPES.get(value.dtype, str(value.dtype))
        if datatype != spec.datatype or value.dim() != len(spec.shape):
            raise ModelLoadError(
                f"the torch program {rel} takes {datatype} of rank {value.dim()} as input {spec.name!r}; the "
                f"manifest declares {spec.datatype} {list(spec.shape)}"
            )


def _check_outputs(executor: TorchExecutor, inputs: list[TensorSpec], outputs: list[TensorSpec], rel: str) -> None:
    """One run on zeros: the answers have the declared types and ranks (a mismatch would be encoded wrongly)."""
    try:
        answers = executor.run({s.name: zeros(s, None) for s in inputs})
    except ShapeOfAnswerError as exc:
        raise ModelLoadError(f"{exc} (checked on an input of zeros)") from exc
    except Exception as exc:  # data-dependent failures show at request time, with the reason
        log.warning("the torch program %s fails on an input of zeros (%s): its outputs are not checked", rel, exc)
        return
    for spec, answer in zip(outputs, answers, strict=True):
        got = DTYPES_BY_NUMPY.get(answer.dtype.str, str(answer.dtype))
        if got != spec.datatype or answer.ndim != len(spec.shape):
            raise ModelLoadError(
                f"the torch program {rel} answers {got} of rank {answer.ndim} as output {spec.name!r}; the "
                f"manifest declares {spec.datatype} {list(spec.shape)}"
            )


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # allowed only before the first parallel work of the process
        torch.set_num_interop_threads(1)


def open_program(found: TorchProgram, settings: ServingSettings) -> Executor:
    """Load an artifact's torch program onto the configured device, checked against the manifest."""
    rel, inputs, outputs = found.rel, found.inputs, found.outputs
    try:
        device, why = choose_device(settings.device, torch.cuda.is_available(), torch.cuda.device_count())
    except DeviceUnavailable as exc:
        raise ModelLoadError(str(exc)) from exc
    set_threads(settings.intra_op_threads)
    from torch.export.passes import move_to_device_pass

    try:
        program = torch.export.load(str(found.path))
        program = move_to_device_pass(program, device)
        module = program.module()
    except Exception as exc:
        made = f" (saved with torch {found.saved_with})" if found.saved_with else ""
        raise ModelLoadError(
            f"torch {torch.__version__} cannot load the torch program {rel}{made}: {type(exc).__name__}: {exc}"
        ) from exc
    _check_signature(program, inputs, rel)
    facts: dict[str, Any] = {"device": device, "device_choice": why, "program": rel, "torch": torch.__version__}
    if device.startswith("cuda"):
        facts["device_name"] = torch.cuda.get_device_name(torch.device(device))
    executor = TorchExecutor(module, device, [s.name for s in inputs], [s.name for s in outputs], facts)
    _check_outputs(executor, inputs, outputs, rel)
    log.info("torch program %s on %s (%s), %d intra-op thread(s)", rel, device, why, settings.intra_op_threads)
    return executor
