"""The control-plane side of the serving runtimes ``onnxruntime`` and ``torch``: starts, watches and stops
data-plane processes.

Both runtimes share everything here and in the data plane but the executor the server loads the model
with (``model.py``): ``OnnxServingRuntime`` runs the artifact's ONNX file with ONNX Runtime on the CPU,
``TorchServingRuntime`` its torch program on a CUDA device or the CPU (the ``device`` setting).

``deploy`` validates the spec, binds the listening socket itself (so the port is known and free, with no
race), writes the server's configuration under the backend's home, starts
``python -m falaj.plugins.onnx_serving.server`` in its own session with that socket, and waits until
``/v2/health/ready`` answers 200 — or raises ``BackendError`` with the server's refusal (``failure.txt``) and
the last lines of its log. A redeploy of a running name starts the new server first and stops the old one
after the new one is ready (unless a fixed port forces the old one to stop first).

Serving outlives the control plane: the processes run in their own session, and their pid, port and
configuration are kept in ``<home>/deployments/<name>/current.json``, so a restarted control plane still
answers ``status`` and can ``undeploy``. This module imports neither onnxruntime, torch nor numpy.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falaj.core.errors import BackendError, ValidationError
from falaj.core.plugin import BackendConfig, ServingRuntime
from falaj.plugins.onnx_serving.settings import _NAME, DeploymentSpec, ServingSettings, SpecError

SERVER_MODULE = "falaj.plugins.onnx_serving.server"
FAILURE_FILE = "failure.txt"
LOG_FILE = "server.log"
STATE_FILE = "current.json"
KEEP_GENERATIONS = 3
LOG_TAIL_LINES = 25


@dataclass
class _Served:
    name: str
    run_dir: Path
    host: str
    port: int
    endpoint: str
    pid: int
    process: subprocess.Popen[bytes] | None
    state: str  # starting | ready | stopped | failed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "host": self.host,
            "port": self.port,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "state": self.state,
        }


def _probe(host: str, port: int, path: str, timeout: float) -> int | None:
    """The HTTP status of GET ``path``, or None if nothing answered in time."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _endpoint_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class OnnxServingRuntime(ServingRuntime):
    """Serves deployments with ONNX Runtime, one data-plane process (group) per deployment."""

    #: The data plane's executor (``model.EXECUTORS``), the package it needs, and the settings that belong
    #: to the other runtime (refused here with the reason rather than silently ignored).
    EXECUTOR = "onnxruntime"
    PACKAGE = "onnxruntime"
    FOREIGN_SETTINGS: Mapping[str, str] = {
        "device": "the torch runtime's; ONNX Runtime runs where its 'providers' say",
    }

    def __init__(self, config: BackendConfig) -> None:
        if importlib.util.find_spec(self.PACKAGE) is None:
            raise ValueError(f"the {self.EXECUTOR} serving runtime needs the {self.PACKAGE!r} package on this node")
        self.config = config
        try:
            self._refuse_foreign(config.settings)
            self.defaults = ServingSettings.from_mapping(config.settings)
        except SpecError as exc:
            raise ValueError(f"backend settings: {exc}") from exc
        self.root = Path(config.home) / "deployments"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._served: dict[str, _Served] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- the ServingRuntime interface ----------------------------------------------------------------------
    def deploy(self, deployment: Mapping[str, Any]) -> str:
        try:
            if isinstance(deployment, Mapping):
                self._refuse_foreign(deployment.get("settings"))
            spec = DeploymentSpec.parse(deployment, self.defaults)
        except SpecError as exc:
            raise ValidationError(f"deployment spec: {exc}") from exc
        with self._lock(spec.name):
            previous = self._current(spec.name)
            if previous is not None and previous.state in ("starting", "ready"):
                if spec.settings.port and previous.port == spec.settings.port:
                    self._stop(previous)  # the port is taken by the running one: no overlap possible
                elif not self._alive(previous):
                    previous.state = "failed"
            served = self._start(spec)
            self._served[spec.name] = served
            self._save_state(served)
            try:
                self._wait_ready(served, spec.settings.ready_timeout_s)
            except BaseException:
                if served.process is not None and served.process.poll() is None:
                    self._stop(served)
                shutil.rmtree(served.run_dir / "artifacts", ignore_errors=True)
                served.state = "failed"
                if previous is not None and previous.state == "ready":
                    self._served[spec.name] = previous  # the running version keeps serving
                    self._save_state(previous)
                else:
                    self._save_state(served)
                raise
            served.state = "ready"
            self._save_state(served)
            if previous is not None and previous.state in ("starting", "ready") and previous.pid != served.pid:
                self._stop(previous)
            self._prune(spec.name, keep=served.run_dir)
            return served.endpoint

    def undeploy(self, name: str) -> None:
        with self._lock(name):
            served = self._current(name)
            if served is None or served.state in ("stopped",):
                return
            self._stop(served)
            self._save_state(served)

    def status(self, name: str) -> str:
        served = self._current(name)
        if served is None:
            return "stopped"
        if served.state in ("stopped", "failed"):
            return served.state
        if served.state == "starting" and served.process is not None:
            return "starting"  # deploy is waiting for it
        if not self._alive(served):
            served.state = "failed"
            return "failed"
        return "ready" if _probe(served.host, served.port, "/v2/health/ready", 2.0) == 200 else "starting"

    # -- extras ---------------------------------------------------------------------------------------------
    def endpoint(self, name: str) -> str | None:
        """The endpoint of a running deployment, if any."""
        served = self._current(name)
        return served.endpoint if served is not None and served.state in ("starting", "ready") else None

    def run_dir(self, name: str) -> Path | None:
        """The folder of a deployment's current server: configuration, log, verified files, metrics."""
        served = self._current(name)
        return served.run_dir if served is not None else None

    def close(self) -> None:
        """Stop every deployment this runtime object started (tests and embedding; serving normally outlives it)."""
        for name in list(self._served):
            self.undeploy(name)

    # -- internals ------------------------------------------------------------------------------------------
    def _refuse_foreign(self, settings: Any) -> None:
        if isinstance(settings, Mapping):
            for key, why in self.FOREIGN_SETTINGS.items():
                if key in settings:
                    raise SpecError(f"setting {key!r} does not apply to the {self.EXECUTOR} runtime: it is {why}")

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _state_path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
            raise ValueError(f"not a deployment name: {str(name)[:80]!r}")
        return self.root / name / STATE_FILE

    def _save_state(self, served: _Served) -> None:
        path = self._state_path(served.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(served.to_json()), "utf-8")
        os.replace(tmp, path)

    def _current(self, name: str) -> _Served | None:
        served = self._served.get(name)
        if served is not None:
            return served
        try:
            data = json.loads(self._state_path(name).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        served = _Served(
            name=name,
            run_dir=Path(data["run_dir"]),
            host=str(data["host"]),
            port=int(data["port"]),
            endpoint=str(data["endpoint"]),
            pid=int(data["pid"]),
            process=None,
            state=str(data["state"]),
        )
        self._served[name] = served
        return served

    def _start(self, spec: DeploymentSpec) -> _Served:
        settings = spec.settings
        generation = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        run_dir = self.root / spec.name / generation
        run_dir.mkdir(parents=True, mode=0o700)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise BackendError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
        port = int(sock.getsockname()[1])
        config = {
            "deployment": spec.to_json(),
            "run_dir": str(run_dir),
            "fd": sock.fileno(),
            "parent_pid": os.getpid(),
            "executor": self.EXECUTOR,
        }
        config_path = run_dir / "config.json"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            with (run_dir / LOG_FILE).open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", SERVER_MODULE, "--config", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),),
                    start_new_session=True,
                    cwd=run_dir,
                    env=env,
                )
        finally:
            sock.close()
        host = _endpoint_host(settings.host)
        return _Served(
            name=spec.name,
            run_dir=run_dir,
            host=host.strip("[]"),
            port=port,
            endpoint=f"http://{host}:{port}",
            pid=process.pid,
            process=process,
            state="starting",
        )

    def _wait_ready(self, served: _Served, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert served.process is not None
            code = served.process.poll()
            if code is not None:
                served.state = "failed"
                raise BackendError(self._failure(served, f"exited with code {code}"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(served)
                served.state = "failed"
                raise BackendError(self._failure(served, f"did not answer ready within {timeout:g} s"))
            if _probe(served.host, served.port, "/v2/health/ready", min(1.0, max(0.05, remaining))) == 200:
                return
            time.sleep(0.05)

    def _failure(self, served: _Served, what: str) -> str:
        reason = ""
        with contextlib.suppress(OSError):
            reason = (served.run_dir / FAILURE_FILE).read_text("utf-8").strip()
        log_path = served.run_dir / LOG_FILE
        tail = _log_tail(log_path)
        message = f"serving deployment {served.name!r} failed to start: the server {what}"
        if reason:
            message += f": {reason}"
        if tail:
            message += f"\n--- last lines of {log_path} ---\n{tail}"
        return message

    def _alive(self, served: _Served) -> bool:
        if served.process is not None:
            return served.process.poll() is None
        return self._is_ours(served)

    def _is_ours(self, served: _Served) -> bool:
        """Whether ``served.pid`` still is the server started for ``served.run_dir`` (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{served.pid}/cmdline").read_bytes()
        except OSError:
            try:
                os.kill(served.pid, 0)
            except OSError:
                return False
            return sys.platform != "linux"
        return str(served.run_dir / "config.json").encode() in cmdline

    def _stop(self, served: _Served) -> None:
        timeout = self.defaults.stop_timeout_s
        if served.process is not None:
            if served.process.poll() is None:
                self._signal(served.pid, signal.SIGTERM)
                try:
                    served.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(served.pid, signal.SIGKILL)
                    served.process.wait(timeout)
        elif self._is_ours(served):
            self._signal(served.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._is_ours(served) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._is_ours(served):
                self._signal(served.pid, signal.SIGKILL)
        else:  # not running, or the pid now belongs to another program: signal nothing
            served.state = "stopped"
            shutil.rmtree(served.run_dir / "artifacts", ignore_errors=True)
            return
        # A worker the supervisor left behind would still hold the socket: end the whole group.
        self._signal(served.pid, signal.SIGKILL, group_only=True)
        served.state = "stopped"
        shutil.rmtree(served.run_dir / "artifacts", ignore_errors=True)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals, group_only: bool = False) -> None:
        try:
            os.killpg(pid, sig)  # the server leads its own session and process group
        except (ProcessLookupError, PermissionError):
            if not group_only:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def _prune(self, name: str, keep: Path) -> None:
        """Remove old generations' folders (configuration, log), keeping the latest few."""
        folder = self.root / name
        generations = sorted((p for p in folder.iterdir() if p.is_dir() and p != keep), reverse=True)
        for old in generations[KEEP_GENERATIONS - 1 :]:
            shutil.rmtree(old, ignore_errors=True)


class TorchServingRuntime(OnnxServingRuntime):
    """Serves deployments with torch: the artifact's torch program on a GPU, or on the CPU where there is none.

    The data plane, protocol, batching, routing, verification and metrics are the ONNX runtime's; only the
    executor differs (``torch_model.py``). The ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``)
    is checked here for its form and on the node, when the server loads the model, for CUDA being there:
    a deploy asking for a CUDA device the node lacks fails with the reason.
    """

    EXECUTOR = "torch"
    PACKAGE = "torch"
    FOREIGN_SETTINGS: Mapping[str, str] = {
        "providers": "the onnxruntime runtime's (ONNX Runtime execution providers); torch runs where 'device' says",
    }
