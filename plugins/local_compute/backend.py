"""The control-plane side of the local compute backend: submit, status, cancel (standard library only).

Nothing here trains or imports an ML framework. ``submit`` validates the spec and the inputs' headers,
writes the job folder and starts ``python -m falaj.plugins.local_compute.worker <job folder>`` in its own
session (process group); ``status`` and ``cancel`` work from the job folder's files alone, so a control
plane that restarted (a fresh instance) sees and controls the jobs that an earlier one started.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from falaj.core.errors import BackendError
from falaj.core.plugin import BackendConfig, ComputeBackend, JobStatus
from falaj.plugins.local_compute import jobfiles as jf
from falaj.plugins.local_compute.spec import LocalComputeSettings, check_inputs, validate_spec

WORKER_MODULE = "falaj.plugins.local_compute.worker"
#: How long past its time limit a job may still run before ``status`` stops it itself (the supervisor
#: normally kills the trainer at the limit; this covers a supervisor that hangs).
OVERRUN_GRACE_S = 30.0
#: How long a submitted job may stay without a supervisor record before it counts as never started.
START_GRACE_S = 60.0


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a supervisor so that it leaves no zombie in the control-plane process."""
    process.wait()


def _seconds_since(iso: object) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return time.time() - datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


class LocalCompute(ComputeBackend):
    """Trains on this machine, one worker process per job, under ``<home>/jobs/<run id>/``.

    Settings: ``python_path``, ``max_time_limit_s``, ``max_threads`` (see ``spec.py``).
    """

    def __init__(self, config: BackendConfig) -> None:
        self.settings = LocalComputeSettings.parse(config.settings)
        self.name = config.name
        self.jobs = Path(config.home) / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)

    # -- submit -------------------------------------------------------------------------------------------------
    def submit(self, job: Mapping[str, Any]) -> str:
        run_id = jf.check_run_id(job.get("run_id"))
        spec = validate_spec(job.get("spec", {}), self.settings)
        check_inputs(job.get("inputs"), spec)
        folder = self.jobs / run_id
        try:
            folder.mkdir(parents=False, exist_ok=False)
        except FileExistsError:
            raise ValueError(f"a job with run id {run_id!r} already exists on backend {self.name!r}") from None
        try:
            record = {
                **dict(job),
                "spec": dict(job.get("spec", {})),
                "resolved_spec": spec.as_dict(),
                "backend": {"name": self.name, **self.settings.as_dict()},
            }
            jf.write_json(folder / jf.JOB, record)
            submitted = jf.now_iso()
            jf.write_json(folder / jf.STATUS, {"state": "queued", "submitted_at": submitted, "updated_at": submitted})
            with (folder / jf.LOG).open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, str(folder)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            jf.remove_outputs(folder)
            for name in (jf.JOB, jf.STATUS, jf.LOG):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
            raise BackendError(f"could not start the training worker: {exc}") from exc
        jf.write_json(
            folder / jf.PROCESS,
            {"pid": process.pid, "start": jf.process_start(process.pid), "submitted_at": submitted},
        )
        threading.Thread(target=_reap, args=(process,), name=f"reap-{run_id}", daemon=True).start()
        return run_id

    # -- status ---------------------------------------------------------------------------------------------------
    def _folder(self, handle: str) -> Path:
        try:
            run_id = jf.check_run_id(handle)
        except ValueError:
            raise BackendError(f"{handle!r} is not a job handle of backend {self.name!r}") from None
        folder = self.jobs / run_id
        if not (folder / jf.JOB).is_file():
            raise BackendError(f"backend {self.name!r} has no job {handle!r}")
        return folder

    def status(self, handle: str) -> JobStatus:
        folder = self._folder(handle)
        final = jf.read_json(folder / jf.FINAL)
        if final is None:
            final = self._check_running(folder)
        if final is not None:
            return self._answer(folder, final)
        live = jf.read_json(folder / jf.STATUS) or {"state": "queued"}
        state = live.get("state") if live.get("state") in ("queued", "running") else "running"
        epoch, epochs = live.get("epoch"), live.get("epochs")
        message = f"epoch {epoch}/{epochs}" if isinstance(epoch, int) and isinstance(epochs, int) else str(state)
        return self._answer(folder, {**live, "state": state, "message": message})

    def _check_running(self, folder: Path) -> dict[str, Any] | None:
        """For a job with no outcome yet: end it if its worker died or overran; return the outcome if it ended."""
        process = jf.read_json(folder / jf.PROCESS)
        trainer = jf.read_json(folder / jf.TRAINER)
        if process is None:
            status = jf.read_json(folder / jf.STATUS) or {}
            waited = _seconds_since(status.get("submitted_at"))
            if waited is None or waited < START_GRACE_S:
                return None  # submit is still writing the record
            reason = "the worker was never started"
        elif not (isinstance(process.get("pid"), int) and jf.process_alive(process["pid"], process.get("start"))):
            final = jf.read_json(folder / jf.FINAL)  # it may have recorded its outcome just before it exited
            if final is not None:
                return final
            tail = jf.log_tail(folder)
            reason = "the worker stopped without recording an outcome" + (f"; last log lines:\n{tail}" if tail else "")
        else:
            limit = self._time_limit(folder)
            started = (trainer or {}).get("started_at") or process.get("submitted_at")
            elapsed = _seconds_since(started)
            if limit is None or elapsed is None or elapsed <= limit + OVERRUN_GRACE_S:
                return None
            reason = f"time limit of {limit:g} s exceeded: the worker was killed after {elapsed:.0f} s"
        self._stop(folder, process, trainer)
        if jf.read_json(folder / jf.FINAL) is None:  # nobody recorded an outcome meanwhile: no model may stay
            jf.remove_outputs(folder)
            jf.claim_final(folder, "failed", reason)
        return jf.read_json(folder / jf.FINAL)

    def _time_limit(self, folder: Path) -> float | None:
        job = jf.read_json(folder / jf.JOB) or {}
        limit = (job.get("resolved_spec") or {}).get("time_limit_s")
        return float(limit) if isinstance(limit, int | float) else None

    @staticmethod
    def _stop(folder: Path, process: Mapping[str, Any] | None, trainer: Mapping[str, Any] | None) -> None:
        jf.kill_group(process)
        trainer = trainer or jf.read_json(folder / jf.TRAINER)  # the supervisor may have started one meanwhile
        jf.kill_group(trainer)
        jf.wait_dead([process, trainer])

    def _answer(self, folder: Path, record: Mapping[str, Any]) -> JobStatus:
        state = str(record.get("state", "running"))
        metrics = {
            str(k): float(v)
            for k, v in (record.get("metrics") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        trainer = jf.read_json(folder / jf.TRAINER) or {}
        outputs: dict[str, Any] = {
            "job_path": str(folder),
            "log_path": str(folder / jf.LOG),
            "started_at": trainer.get("started_at"),
            "finished_at": record.get("finished_at") if state in jf.TERMINAL else None,
        }
        lineage = jf.read_json(folder / jf.LINEAGE)
        if lineage is not None:
            outputs["lineage"] = lineage
        if state == "succeeded" and (folder / jf.ARTIFACT).is_dir():
            outputs["artifact_path"] = str(folder / jf.ARTIFACT)
        return JobStatus(state=state, metrics=metrics, message=str(record.get("message", "")), outputs=outputs)

    # -- cancel ---------------------------------------------------------------------------------------------------
    def cancel(self, handle: str) -> None:
        """Stop the job's processes and record it as cancelled; a job that already ended is left as it is."""
        folder = self._folder(handle)
        if not jf.claim_final(folder, "cancelled", "cancelled"):
            return
        self._stop(folder, jf.read_json(folder / jf.PROCESS), jf.read_json(folder / jf.TRAINER))
        jf.remove_outputs(folder)
        # The trainer may have written its live status between the claim and its end: show the outcome again.
        jf.update_status(folder, **(jf.read_json(folder / jf.FINAL) or {}))
