"""OpenLineage run events (START, COMPLETE, FAIL) for materializations and retrievals.

Events go where the installation says: ``FALAJ_OPENLINEAGE_URL`` (an OpenLineage HTTP endpoint such as
Marquez) or, by default, one JSON event per line in ``FALAJ_HOME/lineage/openlineage.ndjson``. Emitting never
fails an action: a transport error is logged and the action goes on (the audit log remains the record).
"""

from __future__ import annotations

import logging
import os
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
        facets: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Send one run event; ``inputs``/``outputs`` are dataset names within ``namespace``."""
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
                eventTime=datetime.now(UTC).isoformat(),
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

        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _uuid(hex_id: str) -> str:
    """OpenLineage run ids are UUIDs; Falaj ids are 32 hex digits, which are one."""
    h = hex_id.replace("-", "")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
