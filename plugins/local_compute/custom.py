"""Running a user's training function (``entry_point: "module:function"``) in the trainer process.

The function is called as ``function(inputs, spec, output)``:

- ``inputs``: a list with one dict per input, in job order: ``dataset``, ``version``, ``classification``,
  ``sha256`` (of the file read), ``rows`` (a count), ``header`` (column names in file order) and
  ``columns`` (column name -> numpy array: float64 where every value is a finite number, else ``str``);
- ``spec``: the validated spec with its defaults, as a dict (``spec["params"]`` holds the user's own
  parameters, ``spec["seed"]`` the seed: seed your own frameworks from it);
- ``output``: an empty folder (``pathlib.Path``) where the function writes the artifact: ``model.onnx``
  (with any external data files) and, optionally, its own ``falaj-model.json``.

It returns its metrics (a mapping of names to numbers; ``None`` for none). The worker then checks that
ONNX Runtime loads ``model.onnx`` (the job fails if not) and writes a ``falaj-model.json`` describing the
model's inputs and outputs when the function wrote none. Modules are found on the worker's ``sys.path``,
which starts with the backend's ``python_path`` setting.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import math
import numbers
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from falaj.plugins.local_compute import artifact
from falaj.plugins.local_compute.data import InputTable, JobError, columns
from falaj.plugins.local_compute.spec import TrainingSpec


def load(entry_point: str, python_path: Sequence[str]) -> tuple[Any, str]:
    """The function an entry point names and the SHA-256 of its module's source file."""
    module_name, _, function_name = entry_point.partition(":")
    if not python_path:
        raise JobError(f"entry point {entry_point!r}: this backend allows no user code (an admin sets its python_path)")
    # Only code under the folders an admin allowed: never a module from the standard library, site-packages
    # or Falaj itself, whatever the submitter names.
    top = module_name.split(".")[0]
    found = importlib.machinery.PathFinder.find_spec(top, list(python_path))
    roots = [Path(folder).resolve() for folder in python_path]
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin is None or not any(root == origin.parent or root in origin.parents for root in roots):
        raise JobError(f"entry point {entry_point!r}: no module {top!r} under the backend's python_path")
    for folder in reversed(python_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise JobError(f"entry point {entry_point!r}: cannot import {module_name!r}: {exc}") from exc
    source_file = getattr(module, "__file__", None)
    if source_file is None or not any(root in Path(source_file).resolve().parents for root in roots):
        raise JobError(f"entry point {entry_point!r}: {module_name!r} does not come from the backend's python_path")
    function = getattr(module, function_name, None)
    if not callable(function):
        raise JobError(f"entry point {entry_point!r}: module {module_name!r} has no function {function_name!r}")
    source = inspect.getsourcefile(module)
    digest = artifact.sha256_file(Path(source)) if source else "unknown"
    return function, digest


def run(
    entry_point: str, python_path: Sequence[str], tables: Sequence[InputTable], spec: TrainingSpec, out: Path
) -> tuple[dict[str, float], str]:
    """Call the user's function; return its metrics and its module's code digest."""
    function, digest = load(entry_point, python_path)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    inputs = [
        {
            "dataset": t.dataset,
            "version": t.version,
            "classification": t.classification,
            "sha256": t.sha256,
            "rows": len(t.rows),
            "header": list(t.header),
            "columns": columns(t),
        }
        for t in tables
    ]
    returned = function(inputs, spec.as_dict(), out)
    metrics = _metrics(returned, entry_point)
    session = artifact.session(out)
    if not (out / artifact.MANIFEST).exists():
        artifact.write_manifest(
            out,
            {
                "task": "custom",
                "trainer": entry_point,
                "model_file": artifact.MODEL_FILE,
                "inputs": artifact.tensor_specs(session.get_inputs()),
                "outputs": artifact.tensor_specs(session.get_outputs()),
                "opset": artifact.opset(out),
                "frameworks": artifact.versions(),
                "seed": spec.seed,
                "code_digest": digest,
                "metrics": metrics,
            },
        )
    return metrics, digest


def _metrics(returned: object, entry_point: str) -> dict[str, float]:
    if returned is None:
        return {}
    if not isinstance(returned, Mapping):
        raise JobError(f"entry point {entry_point!r} returned {type(returned).__name__}, not a mapping of metrics")
    metrics: dict[str, float] = {}
    for name, value in returned.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise JobError(f"entry point {entry_point!r} returned metric {name!r} = {value!r}: not a number")
        if not math.isfinite(float(value)):
            raise JobError(f"entry point {entry_point!r} returned metric {name!r} = {value!r}: not finite")
        metrics[name] = float(value)
    return metrics
