"""The job folder: its files, atomic JSON writes, the one final outcome, processes and log tails.

Standard library only: the control plane (``backend.py``) and the worker processes (``worker.py``) both use
it, and the control plane must not import an ML framework.

A job folder ``<home>/jobs/<run id>/`` holds:

``job.json``      the job as submitted, the validated spec and the backend's limits (written by ``submit``)
``process.json``  the supervisor process: pid, its start time in clock ticks, when it was submitted
``trainer.json``  the trainer process (started by the supervisor): pid, start ticks, started_at, deadline
``status.json``   the live view: state, epoch, metrics so far, updated every epoch (atomic replace)
``final.json``    the outcome, written once: the first of the supervisor, ``cancel`` or ``status`` to claim it
                  wins, so a job cannot be both cancelled and succeeded
``train.log``     the supervisor's and the trainer's log, with the trainer's stdout and stderr
``lineage.json``  what was trained on and with what (seed, code digest, versions, input file digests)
``staging/``      the trainer's work in progress; removed when the job ends
``artifact/``     the model folder, present only when the job succeeded
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JOB = "job.json"
PROCESS = "process.json"
TRAINER = "trainer.json"
STATUS = "status.json"
FINAL = "final.json"
LOG = "train.log"
LINEAGE = "lineage.json"
STAGING = "staging"
ARTIFACT = "artifact"
#: Inside ``staging/``: the finished artifact folder, the trainer's result, and its error when it failed.
STAGED_ARTIFACT = "artifact"
RESULT = "result.json"
ERROR = "error.json"

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATES = frozenset({"queued", "running"}) | TERMINAL
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_run_id(run_id: object) -> str:
    """A run id usable as a folder name (no separators, no leading dot)."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"job field 'run_id': {run_id!r} is not a valid run id (letters, digits, '_', '-', '.')")
    return run_id


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is absent or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def update_status(folder: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``status.json`` (the live view) and return the new content."""
    current = read_json(folder / STATUS) or {}
    current.update(fields)
    current["updated_at"] = now_iso()
    write_json(folder / STATUS, current)
    return current


def claim_final(folder: Path, state: str, message: str, **extra: Any) -> bool:
    """Record the job's outcome unless another party already did; True when this call decided it.

    The outcome is linked into place (``link`` fails when the name exists), so exactly one claim wins even
    between processes. The winner also mirrors the outcome into ``status.json``.
    """
    if state not in TERMINAL:
        raise ValueError(f"not a final state: {state!r}")
    outcome = {"state": state, "message": message, "finished_at": now_iso(), **extra}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".final.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(outcome, fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
        try:
            os.link(tmp, folder / FINAL)
        except FileExistsError:
            return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    update_status(folder, **outcome)
    return True


def remove_outputs(folder: Path) -> None:
    """Remove the staging folder and any artifact: what a job that did not succeed must leave behind."""
    for name in (STAGING, ARTIFACT):
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True)


def log_tail(folder: Path, lines: int = 20, max_chars: int = 4000) -> str:
    """The last lines of the job's log (what a failed job's message quotes)."""
    path = folder / LOG
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    tail = "\n".join(line for line in text.splitlines()[-lines:])
    return tail[-max_chars:]


# -- processes ------------------------------------------------------------------------------------------------
def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell it from a later process that
    reuses the pid; None where ``/proc`` does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not) and, when ``start`` is given, is the process that started then."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields and fields[0] in ("Z", "X", "x"):
            return False
        return start is None or len(fields) <= 19 or fields[19] == start
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(record: Mapping[str, Any] | None) -> None:
    """SIGKILL the process group led by the recorded process, if that process still runs."""
    if not record:
        return
    pid, start = record.get("pid"), record.get("start")
    if not isinstance(pid, int) or pid <= 1 or not process_alive(pid, start if isinstance(start, str) else None):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def wait_dead(records: list[Mapping[str, Any] | None], timeout: float = 10.0) -> bool:
    """Wait until every recorded process has ended; False if one still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [
            r
            for r in records
            if r
            and isinstance(r.get("pid"), int)
            and process_alive(r["pid"], r.get("start") if isinstance(r.get("start"), str) else None)
        ]
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
