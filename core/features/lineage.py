"""OpenLineage run events (START, COMPLETE, FAIL) for materializations and retrievals.

Events go where the installation says: ``FALAJ_OPENLINEAGE_URL`` (an OpenLineage HTTP endpoint such as
Marquez) or, by default, one JSON event per line in ``FALAJ_HOME/lineage/openlineage.ndjson``. Emitting never
fails an action: a transport error is logged and the action goes on (the audit log remains the record).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRODUCER = "https://falaj.dev/openlineage"  # identifies Falaj as the producer of the events


class LineageEmitter:
    """One per control plane; thread-safe."""

    def __init__(self, home: Path, url: str | None = None) -> None:
        self.url = url if url is not None else os.environ.get("FALAJ_OPENLINEAGE_URL") or None
        self.path = home / "lineage" / "openlineage.ndjson"
        self._client: Any = None
        self._lock = threading.Lock()
        # Events are sent by one background thread, in order: an action never waits for the transport (nor
        # for the OpenLineage client's import, half a second the first time).
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._worker: threading.Thread | None = None

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from openlineage.client import OpenLineageClient
                from openlineage.client.transport.file import FileConfig, FileTransport
                from openlineage.client.transport.http import HttpConfig, HttpTransport

                if self.url:
                    transport: Any = HttpTransport(
                        HttpConfig(url=self.url, timeout=2.0, retry={"total": 1, "backoff_factor": 0.1})
                    )
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    transport = FileTransport(FileConfig(log_file_path=str(self.path), append=True))
                self._client = OpenLineageClient(transport=transport)
            return self._client

    def emit(
        self,
        state: str,
        *,
        run_id: str,
        namespace: str,
        job: str,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        error: str | None = None,
    ) -> None:
        """Queue one run event; ``inputs``/``outputs`` are dataset names within ``namespace``."""
        event = {
            "state": state,
            "run_id": run_id,
            "namespace": namespace,
            "job": job,
            "inputs": list(inputs),
            "outputs": list(outputs),
            "error": error,
            "at": datetime.now(UTC).isoformat(),
        }
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="falaj-openlineage", daemon=True)
                self._worker.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("OpenLineage queue full: %s event for %s dropped", state, job)

    def warm(self) -> None:
        """Load the OpenLineage client now, in the background (a server calls this at start-up): otherwise the
        first event imports it while the first feature action runs, and the two share one interpreter."""
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="falaj-openlineage", daemon=True)
                self._worker.start()
        self._queue.put_nowait(None)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued event has been handed to the transport."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while self._queue.unfinished_tasks and not deadline.is_set():
                deadline.wait(0.01)
        finally:
            timer.cancel()

    def close(self) -> None:
        self.flush()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    self._get_client()
                else:
                    self._send(**item)
            except Exception as exc:  # a client that cannot be built: each event then logs why it was not sent
                log.warning("OpenLineage client unavailable: %s", exc)
            finally:
                self._queue.task_done()

    def _send(
        self,
        state: str,
        *,
        run_id: str,
        namespace: str,
        job: str,
        inputs: list[str],
        outputs: list[str],
        error: str | None,
        at: str,
    ) -> None:
        try:
            from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
            from openlineage.client.facet_v2 import error_message_run

            run_facets: dict[str, Any] = {}
            if error is not None:
                run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                    message=error[:4000], programmingLanguage="python"
                )
            event = RunEvent(
                eventType=getattr(RunState, state),
                eventTime=at,
                run=Run(runId=_uuid(run_id), facets=run_facets),
                job=Job(namespace=namespace, name=job),
                producer=PRODUCER,
                inputs=[InputDataset(namespace=namespace, name=n) for n in inputs],
                outputs=[OutputDataset(namespace=namespace, name=n) for n in outputs],
            )
            self._get_client().emit(event)
        except Exception as exc:  # lineage is best effort; the audit log is the record
            log.warning("OpenLineage %s event for %s not sent: %s", state, job, exc)

    def events(self) -> list[dict[str, Any]]:
        """The events written to the local file (tests and `falaj features lineage`)."""
        import json

        self.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _uuid(hex_id: str) -> str:
    """OpenLineage run ids are UUIDs; Falaj ids are 32 hex digits, which are one."""
    h = hex_id.replace("-", "")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
