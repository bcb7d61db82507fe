"""Which torch program an artifact holds, and the tensors its ``falaj-model.json`` declares (no torch import).

Read in the data plane before torch is imported, so an artifact without a torch program is refused at once.
The local trainer (``falaj.plugins.local_compute``) writes the model manifest; the part read here::

    "torch_program": {"file": "model.pt2", "format": "torch.export", "torch": "<version it was saved with>"}
    "input": {"name": "input", "dtype": "float32", "shape": [-1, 30]}      (or "inputs": [...])
    "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 2]}]

The manifest is a file of the signed artifact folder, so it was verified with the program.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falaj.plugins.onnx_serving.model import ModelLoadError
from falaj.plugins.onnx_serving.protocol import TensorSpec

PROGRAM_FORMAT = "torch.export"
MODEL_MANIFEST = "falaj-model.json"  # the name the local trainer gives it (falaj.plugins.local_compute.artifact)

#: Element type names a model manifest may use (numpy's and ONNX's) -> V2 datatypes torch can carry.
MANIFEST_DTYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float": "FP32",  # ONNX's name for float32 (artifact.tensor_specs writes ONNX names)
    "float32": "FP32",
    "double": "FP64",
    "float64": "FP64",
}


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_MANIFEST
    if not path.is_file():
        raise ModelLoadError(
            f"the artifact has no {MODEL_MANIFEST}, so it names no torch program: the torch runtime serves "
            "artifacts that carry one (the local trainer writes model.pt2 beside model.onnx); serve this one "
            "with the onnxruntime runtime"
        )
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"the artifact's {MODEL_MANIFEST} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"the artifact's {MODEL_MANIFEST} is not a JSON object")
    return manifest


def program_file(folder: Path, manifest: Mapping[str, Any]) -> tuple[Path, Mapping[str, Any]]:
    """The torch program a model manifest names (inside ``folder``), and its manifest entry."""
    entry = manifest.get("torch_program")
    if entry is None:
        raise ModelLoadError(
            f"the artifact holds no torch program: its {MODEL_MANIFEST} has no 'torch_program' (artifacts of a "
            "user entry point, or trained before torch programs were saved, carry only ONNX); serve it with the "
            "onnxruntime runtime, or train it again"
        )
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
        raise ModelLoadError(f"{MODEL_MANIFEST}: 'torch_program' must be an object with a 'file'")
    if entry.get("format") != PROGRAM_FORMAT:
        raise ModelLoadError(
            f"{MODEL_MANIFEST}: the torch program's format is {entry.get('format')!r}; this runtime loads "
            f"{PROGRAM_FORMAT!r} programs (torch.export.save)"
        )
    rel: str = entry["file"]
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ModelLoadError(f"{MODEL_MANIFEST}: the torch program {rel!r} is not a file inside the artifact")
    path = folder.joinpath(*parts)
    if not path.is_file():
        raise ModelLoadError(f"the torch program {rel} named by {MODEL_MANIFEST} is not in the artifact")
    return path, entry


def tensor_specs(manifest: Mapping[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's inputs and outputs as a model manifest declares them."""
    raw_inputs = manifest.get("inputs")
    if raw_inputs is None and "input" in manifest:
        raw_inputs = [manifest["input"]]
    raw_outputs = manifest.get("outputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ModelLoadError(f"{MODEL_MANIFEST} must declare the model's 'input' or 'inputs'")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        raise ModelLoadError(f"{MODEL_MANIFEST} must declare the model's 'outputs'")
    return _specs(raw_inputs, "input"), _specs(raw_outputs, "output")


def _specs(items: list[Any], what: str) -> list[TensorSpec]:
    specs: list[TensorSpec] = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ModelLoadError(f"{MODEL_MANIFEST}: every {what} needs a 'name'")
        name = item["name"]
        datatype = MANIFEST_DTYPES.get(str(item.get("dtype")))
        if datatype is None:
            raise ModelLoadError(
                f"{MODEL_MANIFEST}: {what} {name!r} has dtype {item.get('dtype')!r}, which the torch runtime "
                f"cannot carry (known: {', '.join(sorted(MANIFEST_DTYPES))})"
            )
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ModelLoadError(f"{MODEL_MANIFEST}: {what} {name!r} needs a 'shape' of integers (-1: any size)")
        specs.append(TensorSpec(name, datatype, tuple(d if d >= 0 else -1 for d in shape)))
    if len({s.name for s in specs}) != len(specs):
        raise ModelLoadError(f"{MODEL_MANIFEST}: two {what}s share a name")
    return specs


@dataclass(frozen=True, slots=True)
class TorchProgram:
    """An artifact's torch program: its file, the torch version that saved it, the model's tensors."""

    path: Path
    rel: str  # the file inside the artifact folder
    saved_with: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def find_program(folder: Path) -> TorchProgram:
    """The torch program of a verified artifact folder, or ``ModelLoadError`` saying why there is none."""
    manifest = read_manifest(folder)
    path, entry = program_file(folder, manifest)
    inputs, outputs = tensor_specs(manifest)
    made = entry.get("torch")
    rel = path.relative_to(folder).as_posix()
    return TorchProgram(path, rel, made if isinstance(made, str) else None, inputs, outputs)
