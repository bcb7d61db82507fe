"""The artifact folder a job produces, and the facts about the code and packages that made it.

An artifact is a folder: ``model.onnx`` (its weights may lie in the sidecar ``model.onnx.data``), for the
builtin trainers ``model.pt2`` (the same model as a ``torch.export`` program, which the ``torch`` serving
runtime loads on a GPU or the CPU) and ``falaj-model.json``, which says how to feed the model and what it
answers:

``format``         ``falaj-model/1``
``task``           ``classification``, ``regression`` or ``custom``
``trainer``        the builtin trainer or the entry point
``model_file``     ``model.onnx``
``input``          ``{"name", "dtype", "shape"}``: one FP32 tensor ``[-1, len(features)]`` of raw feature
                   values (the standardisation is part of the graph)
``outputs``        ``[{"name", "dtype", "shape"}]``: ``probabilities`` ``[-1, classes]`` or ``prediction``
                   ``[-1]``
``features``       feature column names, in input order
``target``, ``classes``  the target column and, for a classifier, the class labels in output order
``normalisation``  ``{"kind": "standardise", "in_graph": true, "mean", "std"}`` (and ``target_mean`` and
                   ``target_std`` for a regressor): what the graph applies
``opset``, ``frameworks``  the ONNX opset and the versions of python, torch, onnx, onnxruntime, numpy
``seed``, ``code_digest``, ``metrics``
``check``          how ONNX Runtime's answers compared with torch's at export
``torch_program``  ``{"file": "model.pt2", "format": "torch.export", "torch": <version>, "check": {...}}``:
                   the saved program and how its answers (loaded back) compared with torch's
``example``        a few synthetic input rows (never training records) and torch's outputs for them, to
                   check a runtime against

Nothing in it depends on the run (no ids, no times), so the same training gives the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from falaj.plugins.local_compute.data import JobError
from falaj.plugins.local_compute.jobfiles import write_json

MANIFEST = "falaj-model.json"
MODEL_FILE = "model.onnx"
TORCH_FILE = "model.pt2"
TORCH_FORMAT = "torch.export"  # torch.export.save; loaded with torch.export.load
FORMAT = "falaj-model/1"
PACKAGES = ("numpy", "torch", "onnx", "onnxscript", "onnxruntime")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def package_digest() -> str:
    """SHA-256 over this package's Python sources (names and bytes, in name order)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


def versions() -> dict[str, str | None]:
    """The versions of python and the ML packages installed for the worker (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def session(folder: Path) -> Any:
    """An ONNX Runtime session (CPU) on the folder's ``model.onnx``; a ``JobError`` if it cannot load."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    model = folder / MODEL_FILE
    if not model.is_file():
        raise JobError(f"the artifact has no {MODEL_FILE}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise JobError(f"ONNX Runtime cannot load the exported {MODEL_FILE}: {exc}") from exc


def opset(folder: Path) -> int | None:
    """The default-domain opset ``model.onnx`` was written for (read without loading the weights)."""
    import onnx  # type: ignore[import-untyped]

    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def tensor_specs(args: Any) -> list[dict[str, Any]]:
    """Name, element type and shape (-1 for a dynamic dimension) of ONNX Runtime inputs or outputs."""
    return [
        {
            "name": a.name,
            "dtype": str(a.type).removeprefix("tensor(").removesuffix(")"),
            "shape": [d if isinstance(d, int) else -1 for d in (a.shape or [])],
        }
        for a in args
    ]


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    write_json(folder / MANIFEST, {"format": FORMAT, **manifest})
