"""The worker: ``python -m falaj.plugins.local_compute.worker <job folder>``.

Two processes per job, so that a job's end is always recorded, whatever the training code does:

- the **supervisor** (the command above, started by ``submit`` in its own session) validates the job,
  starts the trainer in its own process group with the thread limits in its environment, waits for it
  up to the time limit (and kills its group past it), then decides the outcome: it moves the staged
  artifact to ``<job>/artifact`` and records ``succeeded`` only when the trainer exited 0 with a result;
  anything else is ``failed`` with the reason and the last log lines, and leaves no artifact;
- the **trainer** (``worker --train <job folder>``) reads the inputs, trains (the builtin torch MLP or an
  entry point), exports and checks the model (ONNX, and for the builtin trainers also the torch program)
  into ``staging/artifact``, writes ``lineage.json``, updates ``status.json`` every epoch and exits; it
  exits at once if its supervisor dies.

Only the trainer imports numpy, torch, onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from falaj.plugins.local_compute import jobfiles as jf
from falaj.plugins.local_compute.spec import LocalComputeSettings, TrainingSpec, validate_spec

MODULE = "falaj.plugins.local_compute.worker"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
SUPERVISOR_VARIABLE = "FALAJ_LOCAL_COMPUTE_SUPERVISOR"
log = logging.getLogger("falaj.local_compute")


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # the exporter's libraries are chatty at INFO
    logging.getLogger("falaj").setLevel(logging.INFO)


def load_job(folder: Path) -> tuple[dict[str, Any], TrainingSpec, LocalComputeSettings]:
    job = jf.read_json(folder / jf.JOB)
    if job is None:
        raise ValueError(f"{folder / jf.JOB} is missing or is not a JSON object")
    backend = dict(job.get("backend") or {})
    backend.pop("name", None)
    settings = LocalComputeSettings.parse(backend)
    return job, validate_spec(job.get("spec", {}), settings), settings


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# -- the supervisor -------------------------------------------------------------------------------------------
class Supervisor:
    """Runs the trainer of one job under its time limit and records how the job ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.trainer: subprocess.Popen[bytes] | None = None
        self.record: dict[str, Any] | None = None

    def fail(self, message: str, with_log: bool = True) -> None:
        if (self.folder / jf.FINAL).exists():
            return  # cancelled meanwhile (the cancellation cleans up); a success is never claimed before this
        tail = jf.log_tail(self.folder) if with_log else ""
        jf.remove_outputs(self.folder)  # before the outcome shows, so a failed job is never seen with a model
        jf.claim_final(self.folder, "failed", message + (f"; last log lines:\n{tail}" if tail else ""))
        log.error("job failed: %s", message)

    def stop_trainer(self) -> None:
        jf.kill_group(self.record)
        if self.trainer is not None:
            self.trainer.wait()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Not Popen.wait: the main thread may be inside it, holding its lock. A zombie counts as ended.
        jf.kill_group(self.record)
        jf.wait_dead([self.record])
        self.fail(f"the worker was stopped by signal {_signal_name(signum)}")
        os._exit(1)

    def run(self) -> int:
        try:
            job, spec, _ = load_job(self.folder)
        except ValueError as exc:
            self.fail(f"invalid job: {exc}", with_log=False)
            return 2
        if (self.folder / jf.FINAL).exists():
            return 0  # cancelled before it started
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        env = dict(os.environ)
        env.update({name: str(spec.threads) for name in THREAD_VARIABLES})
        env["PYTHONHASHSEED"] = "0"
        env[SUPERVISOR_VARIABLE] = str(os.getpid())
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS, where a GPU is used
        started_at, started = jf.now_iso(), time.monotonic()
        log.info("job %s: starting the trainer (time limit %g s)", job.get("run_id"), spec.time_limit_s)
        with (self.folder / jf.LOG).open("ab") as out:
            self.trainer = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--train", str(self.folder)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=env,
                process_group=0,
                close_fds=True,
            )
        self.record = {
            "pid": self.trainer.pid,
            "start": jf.process_start(self.trainer.pid),
            "started_at": started_at,
            "time_limit_s": spec.time_limit_s,
        }
        jf.write_json(self.folder / jf.TRAINER, self.record)
        jf.update_status(self.folder, state="running", started_at=started_at, epochs=spec.epochs)
        try:
            code = self.trainer.wait(timeout=spec.time_limit_s)
        except subprocess.TimeoutExpired:
            self.stop_trainer()
            self.fail(f"time limit of {spec.time_limit_s:g} s exceeded: the worker was killed")
            return 0
        # Whatever the trainer's code started (subprocesses, data loader workers) ends with the job.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.trainer.pid, signal.SIGKILL)
        self.conclude(code, time.monotonic() - started)
        return 0

    def conclude(self, code: int, seconds: float) -> None:
        staging = self.folder / jf.STAGING
        result = jf.read_json(staging / jf.RESULT)
        staged = staging / jf.STAGED_ARTIFACT
        if code == 0 and result is not None and staged.is_dir():
            final = self.folder / jf.ARTIFACT
            if final.exists():
                self.fail("an artifact folder was already there")
                return
            os.rename(staged, final)
            shutil.rmtree(staging, ignore_errors=True)
            metrics = result.get("metrics") or {}
            if jf.claim_final(self.folder, "succeeded", f"trained in {seconds:.1f} s", metrics=metrics):
                log.info("job succeeded: %s", metrics)
            else:  # cancelled meanwhile: the cancellation stands, and leaves no model
                jf.remove_outputs(self.folder)
            return
        error = jf.read_json(staging / jf.ERROR)
        if error is not None:
            reason = f"training failed: {error.get('message')}"
        elif code < 0:
            reason = f"the trainer was killed by signal {_signal_name(-code)}"
        else:
            reason = f"the trainer exited with code {code} without a result"
        self.fail(reason)


# -- the trainer ----------------------------------------------------------------------------------------------
def _watch_parent() -> None:
    """Exit at once when the supervisor goes away (killed, cancelled): no orphan trains on."""
    parent = os.getppid()
    if os.environ.get(SUPERVISOR_VARIABLE, str(parent)) != str(parent):
        os._exit(70)  # the supervisor died before this process got here

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def train(folder: Path) -> int:
    _watch_parent()
    staging = folder / jf.STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        job, spec, settings = load_job(folder)
        result = _train(folder, staging, job, spec, settings)
    except Exception as exc:
        from falaj.plugins.local_compute.data import JobError

        if isinstance(exc, JobError | ValueError):  # a problem of the job's own, said in full by the message
            message = str(exc)
            log.error("training failed: %s", message)
        else:
            message = f"{type(exc).__name__}: {exc}"
            log.exception("training failed: %s", message)
        jf.write_json(staging / jf.ERROR, {"message": message})
        return 1
    jf.write_json(staging / jf.RESULT, result)
    return 0


def _train(
    folder: Path, staging: Path, job: dict[str, Any], spec: TrainingSpec, settings: LocalComputeSettings
) -> dict[str, Any]:
    from falaj.plugins.local_compute import artifact
    from falaj.plugins.local_compute.data import read_input, tabular

    started_at = jf.now_iso()
    tables = [read_input(entry) for entry in job.get("inputs") or []]
    lineage: dict[str, Any] = {
        "run_id": job.get("run_id"),
        "tenant": job.get("tenant"),
        "name": job.get("name"),
        "purpose": job.get("purpose"),
        "backend": (job.get("backend") or {}).get("name"),
        "trainer": spec.trainer or spec.entry_point,
        "spec": spec.as_dict(),
        "seed": spec.seed,
        "inputs": [t.lineage() for t in tables],
        "rows": {"read": sum(len(t.rows) for t in tables)},
        "excluded_rows": sum(t.excluded_rows or 0 for t in tables),
        "versions": artifact.versions(),
        "package_digest": artifact.package_digest(),
        "started_at": started_at,
    }
    jf.write_json(folder / jf.LINEAGE, lineage)
    for t in tables:
        log.info("read %s: %d rows, %s", t.label, len(t.rows), t.sha256)
    out = staging / jf.STAGED_ARTIFACT
    out.mkdir()

    if spec.entry_point is not None:
        from falaj.plugins.local_compute import custom

        metrics, digest = custom.run(spec.entry_point, settings.python_path, tables, spec, out)
        lineage.update(code_digest=digest, device=None)
    else:
        table = tabular(tables, spec)  # data errors end the job before torch is even imported

        from falaj.plugins.local_compute import trainer

        device = str(trainer.resolve_device(spec.device))

        def progress(epoch: int, scores: dict[str, float]) -> None:
            jf.update_status(folder, state="running", epoch=epoch, epochs=spec.epochs, metrics=scores)

        trained = trainer.train(table, spec, out, progress)
        metrics = trained.metrics
        lineage.update(
            code_digest=artifact.sha256_file(Path(trainer.__file__)),
            device=device,
            threads=spec.threads,
            features=table.features,
            target=table.target,
            classes=trained.manifest.get("classes"),
            rows={"read": len(table.x), **trained.rows},
            versions=artifact.versions(),
        )
    lineage["finished_at"] = jf.now_iso()
    jf.write_json(folder / jf.LINEAGE, lineage)
    return {"metrics": metrics}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="Run one local training job.")
    parser.add_argument("--train", action="store_true", help="be the trainer (started by the supervisor)")
    parser.add_argument("folder", type=Path, help="the job folder, holding job.json")
    args = parser.parse_args(argv)
    folder: Path = args.folder.resolve()
    _log_to_stderr()
    if args.train:
        code = train(folder)
        # Everything the trainer must leave is written; skip tearing down torch's runtime (up to a second).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return Supervisor(folder).run()


if __name__ == "__main__":
    sys.exit(main())
