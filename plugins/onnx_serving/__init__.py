"""Builtin serving runtime ``onnxruntime``: ONNX models behind the Open Inference Protocol (V2).

The control plane imports only this package and ``runtime.py`` (standard library and ``falaj.core``);
onnxruntime, numpy and the HTTP server are imported inside the data-plane process
(``python -m falaj.plugins.onnx_serving.server``), which verifies every artifact before it loads it.
"""

from __future__ import annotations

from collections.abc import Iterable

from falaj.core.plugin import ServingRuntimeSpec, hookimpl
from falaj.plugins.onnx_serving.runtime import OnnxServingRuntime

__all__ = ["OnnxServingRuntime", "falaj_serving_runtimes"]


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
