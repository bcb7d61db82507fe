"""Builtin serving runtimes ``onnxruntime`` and ``torch``: models behind the Open Inference Protocol (V2).

Both share one data plane (protocol, dynamic batching, traffic split, verification, metrics) and differ in
the executor: ONNX Runtime on the artifact's ONNX file (CPU), or torch on its torch program (a CUDA device
where the node has one, else the CPU). The control plane imports only this package and ``runtime.py``
(standard library and ``falaj.core``); onnxruntime, torch, numpy and the HTTP server are imported inside
the data-plane process (``python -m falaj.plugins.onnx_serving.server``), which verifies every artifact
before it loads it.
"""

from __future__ import annotations

from collections.abc import Iterable

from falaj.core.plugin import ServingRuntimeSpec, hookimpl
from falaj.plugins.onnx_serving.runtime import OnnxServingRuntime, TorchServingRuntime

__all__ = ["OnnxServingRuntime", "TorchServingRuntime", "falaj_serving_runtimes"]


@hookimpl
def falaj_serving_runtimes() -> Iterable[ServingRuntimeSpec]:
    yield ServingRuntimeSpec(
        name="onnxruntime",
        factory=OnnxServingRuntime,
        description=(
            "ONNX Runtime on CPU: Open Inference Protocol V2 over REST with the binary tensor extension, "
            "dynamic batching, weighted/sticky/shadow traffic split, signature-verified artifacts"
        ),
        capabilities=frozenset({"cpu", "v2-protocol", "binary-tensors", "dynamic-batching", "traffic-split"}),
    )
    yield ServingRuntimeSpec(
        name="torch",
        factory=TorchServingRuntime,
        description=(
            "torch on GPU nodes, falling back to the CPU where there is no GPU (setting 'device': auto, cpu, "
            "cuda, cuda:N): the artifact's torch.export program behind the same V2 data plane as onnxruntime "
            "(binary tensors, dynamic batching, weighted/sticky/shadow traffic split, signature-verified artifacts)"
        ),
        capabilities=frozenset({"gpu", "cpu", "v2-protocol", "binary-tensors", "dynamic-batching", "traffic-split"}),
    )
