"""Builtin compute backend ``local``: trains on this machine, in a worker process per job, and exports ONNX.

The control plane imports only this package's ``backend``, ``spec`` and ``jobfiles`` modules (standard
library and ``falaj.core``); numpy, torch, onnx and onnxruntime are imported by the worker process
(``python -m falaj.plugins.local_compute.worker <job folder>``), never in the API process.

**Submit.** ``submit(job)`` takes the job the control plane built (run id, tenant, name, purpose, spec and
the allowed inputs: local CSV files, consent-filtered views for personal data). It validates the spec and
the inputs' headers first, refusing a bad one with a ``ValueError`` that names the field and what is
allowed (see ``spec.py`` for every field), then writes ``<home>/jobs/<run id>/job.json`` and starts the
worker in its own session. The handle is the run id.

**Train.** The builtin trainers ``tabular_classifier`` and ``tabular_regressor`` fit a torch MLP on
standardised features, deterministically from the seed; an ``entry_point`` (``"module:function"``, found
on the backend's ``python_path`` setting) trains in its own way (``custom.py`` has its contract). Progress
goes to ``train.log`` and ``status.json``; the model is exported with ``torch.export`` (saved as
``model.pt2`` for the ``torch`` serving runtime) and translated with ``torch.onnx.export``, and both are
checked against torch; the artifact folder (``model.onnx``, ``model.onnx.data``, ``model.pt2``,
``falaj-model.json``: see ``artifact.py``) appears as ``<job>/artifact`` only when everything succeeded.
``lineage.json`` records the seed, the trainer's code digest, the package versions and, for each input,
its dataset, version, the SHA-256 of the file read and its row counts (with the rows consent excluded).

**Status and cancel.** ``status(handle)`` answers ``JobStatus(state, metrics, message, outputs)``, the
state being ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``; ``outputs`` holds
``job_path``, ``log_path``, ``started_at``, ``finished_at``, ``lineage`` (once the inputs were read) and
``artifact_path`` (only when succeeded). A worker that died without a result is ``failed`` with the last
log lines; one past its time limit is killed and ``failed`` ("time limit ... exceeded"). ``cancel(handle)``
kills the job's process groups and records ``cancelled``; it leaves no artifact. Both work from the files
alone, so a restarted control plane keeps track of the jobs an earlier one started.
"""

from __future__ import annotations

from collections.abc import Iterable

from falaj.core.plugin import ComputeBackendSpec, hookimpl
from falaj.plugins.local_compute.backend import LocalCompute

__all__ = ["LocalCompute", "falaj_compute_backends"]


@hookimpl
def falaj_compute_backends() -> Iterable[ComputeBackendSpec]:
    yield ComputeBackendSpec(
        name="local",
        factory=LocalCompute,
        description=(
            "Local training in a worker process per job: builtin torch MLP trainers for tabular data or a "
            "user entry point, deterministic from the seed, exported to ONNX and checked with ONNX Runtime; "
            "time limits, cancellation, lineage with input digests"
        ),
        capabilities=frozenset({"cpu", "cuda-if-present"}),
    )
