"""Small ONNX models for demos, tests and benchmarks, written with the ``onnx`` helper API (no framework).

``write_mlp`` writes a tabular classifier (``input`` FP32 ``[-1, n_features]`` -> MatMul, Add, Relu,
MatMul, Add, Softmax -> ``probabilities`` FP32 ``[-1, classes]``) as ``model.onnx`` with its weights in
the sidecar ``model.onnx.data`` (ONNX external data), so the artifact is a folder. ``MlpWeights.predict``
computes the same function with numpy, for checking answers. Needs the ``onnx`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT = "input"
OUTPUT = "probabilities"
DATA_FILE = "model.onnx.data"


@dataclass(frozen=True)
class MlpWeights:
    w1: np.ndarray[Any, Any]
    b1: np.ndarray[Any, Any]
    w2: np.ndarray[Any, Any]
    b2: np.ndarray[Any, Any]

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Class probabilities for rows ``x`` (float32), as the ONNX graph computes them."""
        hidden = np.maximum(x.astype(np.float32) @ self.w1 + self.b1, 0)
        logits = hidden @ self.w2 + self.b2
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        result: np.ndarray[Any, Any] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return result


def write_mlp(folder: Path, *, n_features: int = 30, hidden: int = 64, classes: int = 2, seed: int = 0) -> MlpWeights:
    """Write a random MLP classifier to ``folder`` (``model.onnx`` + ``model.onnx.data``); return its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = MlpWeights(
        w1=(rng.normal(size=(n_features, hidden)) / np.sqrt(n_features)).astype(np.float32),
        b1=(rng.normal(size=hidden) * 0.1).astype(np.float32),
        w2=(rng.normal(size=(hidden, classes)) / np.sqrt(hidden)).astype(np.float32),
        b2=(rng.normal(size=classes) * 0.1).astype(np.float32),
    )
    initializers = [
        numpy_helper.from_array(weights.w1, "w1"),
        numpy_helper.from_array(weights.b1, "b1"),
        numpy_helper.from_array(weights.w2, "w2"),
        numpy_helper.from_array(weights.b2, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT, "w1"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["l_mm"]),
        helper.make_node("Add", ["l_mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "falaj-mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="falaj")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=0,
    )
    return weights
