"""The data-plane server: one deployment's variants behind the Open Inference Protocol (V2) over REST.

Run by the runtime as ``python -m falaj.plugins.onnx_serving.server --config FILE`` in its own process.
The configuration names the executor (``onnxruntime`` or ``torch``, see ``model.py``): everything but
loading and running the model is the same for both.
Before it loads anything it verifies every variant (``verify.py``: signature with a trusted key, every file
re-hashed against the manifest while it is copied into the server's private folder); any failure is logged
as ``refusing to start: ...``, written to ``failure.txt`` beside the configuration, and the process exits 2.

The HTTP layer is a plain ASGI 3 callable served by uvicorn (with httptools and uvloop when they are
installed): no framework router, middleware or validation layer sits on the request path. Measured on a
2-core machine with 32 connections, a trivial V2-shaped POST answered 22,400 requests/s as a raw ASGI app
on uvicorn with httptools/uvloop, 9,800 as a Litestar route on the same server, and 5,200 with uvicorn's
pure-Python h11 parser and asyncio loop.

Routes::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /v2/falaj/stats                       per-variant metrics and the SRM check, JSON
    GET  /metrics                              the same for Prometheus
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from falaj.plugins.onnx_serving.batching import Batcher, InferenceFailed, Outputs, Overloaded
from falaj.plugins.onnx_serving.metrics import (
    VariantMetrics,
    merge_snapshots,
    prometheus_families,
    srm_check,
)
from falaj.plugins.onnx_serving.model import EXECUTORS, LoadedModel, ModelLoadError, load_model
from falaj.plugins.onnx_serving.protocol import (
    InferRequest,
    ProtocolError,
    bind_inputs,
    decompress,
    encode_infer_response,
    error_body,
    parse_infer,
)
from falaj.plugins.onnx_serving.routing import Router
from falaj.plugins.onnx_serving.settings import DeploymentSpec, SpecError, VariantSpec
from falaj.plugins.onnx_serving.verify import VerificationError, verify_variant

log = logging.getLogger("falaj.onnx_serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONFIG_ENV = "FALAJ_ONNX_SERVING_CONFIG"
SERVER_NAMES = {"onnxruntime": "falaj-onnxruntime", "torch": "falaj-torch"}
BODY_READ_TIMEOUT_S = 30.0
MAX_CONCURRENCY = 512
EXTENSIONS = ["binary_tensor_data", "falaj_traffic_split", "falaj_stats"]
FAILURE_FILE = "failure.txt"
SNAPSHOT_EVERY_S = 1.0
_JSON = [(b"content-type", b"application/json")]


class _ClientGone(Exception):
    pass


@dataclass
class Variant:
    """A loaded variant: its model, queue and metrics (one per worker process)."""

    spec: VariantSpec
    model: LoadedModel
    metrics: VariantMetrics
    key_id: str
    batcher: Batcher | None = None
    pending: int = 0  # shadow copies in flight

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def shadow(self) -> bool:
        return self.spec.shadow


def variant_folder(run_dir: Path, index: int, spec: VariantSpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{spec.model}-{spec.version}")
    return run_dir / "artifacts" / f"{index}-{safe}"


def _write_failure(run_dir: Path, reason: str) -> None:
    with contextlib.suppress(OSError):
        (run_dir / FAILURE_FILE).write_text(reason + "\n", "utf-8")


def _signers_file(run_dir: Path) -> Path:
    return run_dir / "verified.json"


def verify_all(spec: DeploymentSpec, run_dir: Path) -> dict[str, str]:
    """Verify and copy every variant; return label -> the trusted key whose signature verified."""
    signers: dict[str, str] = {}
    for index, variant in enumerate(spec.variants):
        name = f"variant {variant.model} version {variant.version}"
        log.info("verifying %s from %s", name, variant.artifact_path)
        try:
            verified = verify_variant(variant, variant_folder(run_dir, index, variant))
        except VerificationError as exc:
            raise VerificationError(f"{name}: {exc}") from exc
        log.info(
            "%s: %d files (%d bytes) match the manifest; signature by %s verifies",
            name,
            verified.files,
            verified.size,
            verified.key_id,
        )
        signers[variant.label] = verified.key_id
    _signers_file(run_dir).write_text(json.dumps(signers), "utf-8")
    return signers


def load_variants(
    spec: DeploymentSpec, run_dir: Path, signers: dict[str, str], executor: str = "onnxruntime"
) -> list[Variant]:
    variants = []
    for index, vs in enumerate(spec.variants):
        try:
            model = load_model(variant_folder(run_dir, index, vs), spec.settings, executor)
        except ModelLoadError as exc:
            raise ModelLoadError(f"variant {vs.model} version {vs.version}: {exc}") from exc
        metrics = VariantMetrics(vs.label, vs.model, str(vs.version), "shadow" if vs.shadow else "primary", vs.weight)
        variants.append(Variant(vs, model, metrics, signers.get(vs.label, "")))
        log.info(
            "loaded %s version %s (%s%s): inputs %s, outputs %s, batchable %s, full batch %s ms, runs %s",
            vs.model,
            vs.version,
            model.platform,
            f" on {model.parameters['device']}" if "device" in model.parameters else "",
            [i.metadata() for i in model.inputs],
            [o.metadata() for o in model.outputs],
            model.batchable,
            None if model.run_ms is None else round(model.run_ms, 4),
            "on the event loop" if model.inline else "in a thread",
        )
    return variants


class ServingApp:
    """The ASGI application of one deployment in one worker process."""

    def __init__(
        self,
        spec: DeploymentSpec,
        run_dir: Path,
        variants: list[Variant] | None = None,
        signers: dict[str, str] | None = None,
        executor: str = "onnxruntime",
    ) -> None:
        self.spec = spec
        self.executor_name = executor
        self.name = spec.name
        self.run_dir = run_dir
        self.settings = spec.settings
        self.variants: list[Variant] = variants or []
        self._signers = signers or {}
        self.router: Router[Variant] | None = None
        self.ready = False
        self.rejected = 0
        self.intake = 0  # requests being read and checked, not yet queued
        self.started = time.time()
        self._executor: ThreadPoolExecutor | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._meta: dict[str | None, bytes] = {}
        self._server_meta = orjson.dumps(
            {"name": SERVER_NAMES[executor], "version": _version(), "extensions": EXTENSIONS}
        )

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def startup(self) -> None:
        if not self.variants:
            self.variants = load_variants(self.spec, self.run_dir, self._signers, self.executor_name)
        threaded = [v for v in self.variants if not v.model.inline]
        if threaded:
            self._executor = ThreadPoolExecutor(max_workers=len(threaded), thread_name_prefix="falaj-infer")
        for v in self.variants:
            v.batcher = Batcher(
                v.model.run,
                input_names=[i.name for i in v.model.inputs],
                max_batch_size=self.settings.max_batch_size,
                max_queue_delay_s=self.settings.max_queue_delay_ms / 1000.0,
                max_queue_rows=self.settings.max_queue_rows,
                batchable=v.model.batchable,
                idle=self._idle if self.settings.adaptive_delay else None,
                executor=None if v.model.inline else self._executor,
                on_batch=self._batch_hook(v),
            )
            v.batcher.start()
        self.router = Router(self.variants, self.spec.sticky_salt)
        for v in self.variants:
            self.router.add_alias(f"{v.spec.model}:{v.spec.version}", v)
        default = max(self.router.primaries, key=lambda v: v.weight)
        self._meta[None] = self._model_metadata(default, all_versions=True)
        for v in self.variants:
            self._meta[v.label] = self._model_metadata(v, all_versions=False)
        if self.settings.workers > 1:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._write_snapshots())
        gc.collect()
        gc.freeze()  # what startup built (sessions, metadata, modules) is never scanned again by the collector
        self.ready = True
        log.info("serving %s (%d variants) in process %d", self.name, len(self.variants), os.getpid())

    async def shutdown(self) -> None:
        self.ready = False
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        for v in self.variants:
            if v.batcher is not None:
                await v.batcher.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.settings.workers > 1:
            self._write_snapshot()

    def _idle(self) -> bool:
        return self.intake == 0

    def _batch_hook(self, v: Variant) -> Callable[[int, int, Outputs, float], None]:
        names = v.model.output_names
        metrics = v.metrics

        def hook(rows: int, requests: int, outputs: Outputs, seconds: float) -> None:
            metrics.observe_batch(rows, requests, names, outputs, seconds)

        return hook

    def _model_metadata(self, v: Variant, all_versions: bool) -> bytes:
        versions = [x.label for x in self.variants] if all_versions else [v.label]
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": versions,
            "platform": v.model.platform,
            "inputs": [i.metadata() for i in v.model.inputs],
            "outputs": [o.metadata() for o in v.model.outputs],
        }
        if v.model.parameters:  # the torch executor's device; nothing for ONNX Runtime
            meta["parameters"] = v.model.parameters
        return orjson.dumps(meta)

    # -- ASGI --------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except _ClientGone:
                return
            except Exception:
                log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
                with contextlib.suppress(Exception):  # the answer may have started already
                    await _send(send, 500, error_body("internal server error"), _JSON)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("refusing to start: %s", exc)
                    _write_failure(self.run_dir, str(exc))
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/v2/models/"):
            await self._models(scope, receive, send, path[11:], method)
            return
        if method != "GET":
            if path in ("/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/v2/falaj/stats"):
                await _send(send, 405, error_body(f"{method} is not allowed on {path}"), _JSON)
            else:
                await _send(send, 404, error_body(f"no route {path}"), _JSON)
            return
        if path in ("/v2", "/v2/"):
            await _send(send, 200, self._server_meta, _JSON)
        elif path == "/v2/health/live":
            await _send(send, 200, b'{"live":true}', _JSON)
        elif path == "/v2/health/ready":
            await _send(
                send, 200 if self.ready else 503, b'{"ready":%s}' % (b"true" if self.ready else b"false"), _JSON
            )
        elif path == "/v2/falaj/stats":
            await _send(send, 200, orjson.dumps(self.stats(), option=orjson.OPT_SERIALIZE_NUMPY), _JSON)
        elif path == "/metrics":
            body, content_type = self.prometheus()
            await _send(send, 200, body, [(b"content-type", content_type.encode())])
        else:
            await _send(send, 404, error_body(f"no route {path}"), _JSON)

    async def _models(self, scope: Scope, receive: Receive, send: Send, rest: str, method: str) -> None:
        parts = rest.split("/")
        if parts[0] != self.name:
            await _send(send, 404, error_body(f"unknown model {parts[0]!r}: this server serves {self.name!r}"), _JSON)
            return
        parts = parts[1:]
        label: str | None = None
        if len(parts) >= 2 and parts[0] == "versions":
            label = parts[1]
            parts = parts[2:]
            if self.router is None or self.router.by_label(label) is None:
                versions = ", ".join(v.label for v in self.variants)
                await _send(
                    send, 404, error_body(f"model {self.name!r} has no version {label!r} (versions: {versions})"), _JSON
                )
                return
        action = parts[0] if len(parts) == 1 else "" if not parts else None
        if action == "infer":
            if method != "POST":
                await _send(send, 405, error_body("infer takes POST"), _JSON)
                return
            await self._infer(scope, receive, send, label)
            return
        if action not in ("", "ready"):
            await _send(send, 404, error_body(f"no route {scope['path']}"), _JSON)
            return
        if method != "GET":
            await _send(send, 405, error_body(f"{method} is not allowed on {scope['path']}"), _JSON)
            return
        if action == "ready":
            body = orjson.dumps({"name": self.name, **({"version": label} if label else {}), "ready": self.ready})
            await _send(send, 200 if self.ready else 503, body, _JSON)
            return
        found = self.router.by_label(label) if (label is not None and self.router is not None) else None
        meta = self._meta.get(found.label if found is not None else None)
        if meta is None:
            await _send(send, 503, error_body("the model is not loaded yet"), _JSON)
            return
        await _send(send, 200, meta, _JSON)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, label: str | None) -> None:
        started = time.perf_counter()
        if not self.ready or self.router is None:
            await _send(send, 503, error_body("the model is not ready"), _JSON)
            return
        self.intake += 1  # on its way to a queue: the batchers wait for it (see Batcher's ``idle``)
        try:
            taken = await self._take_request(scope, receive, send, label)
        finally:
            self.intake -= 1
        if taken is None:
            return
        variant, request, future = taken
        metrics = variant.metrics
        try:
            outputs = await future
        except InferenceFailed as exc:
            metrics.errors["failed"] += 1
            await _send(send, 500, error_body(str(exc)), _JSON)
            return
        except Overloaded as exc:
            metrics.errors["overloaded"] += 1
            await _send(send, 503, error_body(str(exc)), _JSON)
            return
        try:
            payload, headers = encode_infer_response(self.name, variant.label, request, variant.model.outputs, outputs)
        except Exception as exc:
            metrics.errors["failed"] += 1
            log.exception("cannot encode the answer of %s", variant.label)
            await _send(send, 500, error_body(f"cannot encode the answer: {exc}"), _JSON)
            return
        metrics.requests += 1
        metrics.latency.observe(time.perf_counter() - started)
        await _send(send, 200, payload, headers)

    async def _take_request(
        self, scope: Scope, receive: Receive, send: Send, label: str | None
    ) -> tuple[Variant, InferRequest, asyncio.Future[Outputs]] | None:
        """Read, parse, route and check a request, and queue it; None when an error was answered."""
        assert self.router is not None
        header_length: int | None = None
        route_key: str | None = None
        encoding: str | None = None
        declared = 0
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif key == b"inference-header-content-length":
                if not value.isdigit():
                    self.rejected += 1
                    await _send(send, 400, error_body("Inference-Header-Content-Length must be an integer"), _JSON)
                    return None
                header_length = int(value)
            elif key == b"x-falaj-route-key":
                route_key = value.decode("utf-8", errors="replace")
            elif key == b"content-encoding" and value.lower() != b"identity":
                encoding = value.decode("latin-1").strip().lower()
        limit = self.settings.max_body_bytes
        try:
            # A sender that trickles its body cannot hold a connection and its buffer forever.
            async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                body = None if declared > limit else await _read_body(receive, limit)
        except TimeoutError:
            self.rejected += 1
            await _send(
                send, 408, error_body(f"the request body did not arrive within {BODY_READ_TIMEOUT_S:g} s"), _JSON
            )
            return None
        if body is None:
            self.rejected += 1
            await _send(send, 400, error_body(f"the request body is larger than the limit of {limit} bytes"), _JSON)
            return None
        try:
            if encoding is not None:
                body = decompress(body, encoding, limit)
            request = parse_infer(body, header_length)
        except ProtocolError as exc:
            self.rejected += 1
            await _send(send, exc.status, error_body(str(exc)), _JSON)
            return None
        routed = label is None
        if routed:
            key = route_key if route_key is not None else request.route_key
            variant = self.router.choose(key)
            if key is None:
                # The sample-ratio check counts independent draws only: a keyed (sticky) request always goes
                # where its key hashes, so one busy key would look like a broken split.
                variant.metrics.routed += 1
        else:
            found = self.router.by_label(label or "")
            assert found is not None
            variant = found
        metrics = variant.metrics
        model = variant.model
        try:
            feeds, rows = bind_inputs(request, model.inputs, model.outputs, model.batchable)
        except ProtocolError as exc:
            metrics.errors["invalid"] += 1
            await _send(send, exc.status, error_body(str(exc)), _JSON)
            return None
        assert variant.batcher is not None
        try:
            future = variant.batcher.submit(feeds, rows)
        except Overloaded as exc:
            metrics.errors["overloaded"] += 1
            await _send(send, 503, error_body(str(exc)), _JSON)
            return None
        if self.router.shadows and not variant.shadow:
            self._mirror(request)
        return variant, request, future

    def _mirror(self, request: InferRequest) -> None:
        """Send a copy of a request a primary variant answers to every shadow; their answers are only measured."""
        assert self.router is not None
        limit = self.settings.shadow_max_pending
        for shadow in self.router.shadows:
            metrics = shadow.metrics
            metrics.shadow_copies += 1
            if shadow.pending >= limit:
                metrics.shadow_dropped += 1
                continue
            try:
                feeds, rows = bind_inputs(request, shadow.model.inputs, shadow.model.outputs, shadow.model.batchable)
            except ProtocolError:
                metrics.errors["invalid"] += 1
                continue
            assert shadow.batcher is not None
            try:
                future = shadow.batcher.submit(feeds, rows)
            except Overloaded:
                metrics.shadow_dropped += 1
                continue
            shadow.pending += 1
            future.add_done_callback(self._shadow_done(shadow, time.perf_counter()))

    @staticmethod
    def _shadow_done(shadow: Variant, started: float) -> Callable[[asyncio.Future[Outputs]], None]:
        def done(future: asyncio.Future[Outputs]) -> None:
            shadow.pending -= 1
            if future.cancelled():
                return
            if future.exception() is not None:
                shadow.metrics.errors["failed"] += 1
                return
            shadow.metrics.requests += 1
            shadow.metrics.latency.observe(time.perf_counter() - started)

        return done

    # -- metrics -----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "rejected": self.rejected,
            "variants": [v.metrics.to_json() for v in self.variants],
        }

    def _metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def _write_snapshot(self) -> None:
        folder = self._metrics_dir()
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        os.replace(tmp, folder / f"{os.getpid()}.json")

    async def _write_snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            try:
                self._write_snapshot()
            except OSError as exc:
                log.warning("cannot write the metrics snapshot: %s", exc)

    def _all_snapshots(self) -> list[dict[str, Any]]:
        snaps = [self.snapshot()]
        if self.settings.workers > 1 and self._metrics_dir().is_dir():
            mine = f"{os.getpid()}.json"
            for path in sorted(self._metrics_dir().glob("*.json")):
                if path.name == mine:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    snaps.append(orjson.loads(path.read_bytes()))
        return snaps

    def _merged(self) -> tuple[dict[str, VariantMetrics], int, dict[str, Any]]:
        snaps = self._all_snapshots()
        merged = merge_snapshots(snaps)
        rejected = sum(int(s.get("rejected", 0)) for s in snaps)
        srm: dict[str, Any] = {"applicable": False, "srm": False}
        if self.router is not None:
            observed = {label: merged[label].routed for label in self.router.shares() if label in merged}
            srm = srm_check(observed, self.router.shares())
        return merged, rejected, srm

    def stats(self) -> dict[str, Any]:
        merged, rejected, srm = self._merged()
        variants = []
        for v in self.variants:
            summary = merged[v.label].summary() if v.label in merged else {}
            summary.update(
                {
                    "shadow": v.shadow,
                    "signed_by": v.key_id,
                    "platform": v.model.platform,
                    **({"device": v.model.parameters["device"]} if "device" in v.model.parameters else {}),
                    "batchable": v.model.batchable,
                    "execution": "event-loop" if v.model.inline else "thread",
                    "full_batch_ms_at_load": None if v.model.run_ms is None else round(v.model.run_ms, 4),
                    **({"shadow_stats": summary.pop("shadow")} if isinstance(summary.get("shadow"), dict) else {}),
                }
            )
            variants.append(summary)
        return {
            "deployment": self.name,
            "tenant": self.spec.tenant,
            "environment": self.spec.environment,
            "workers": self.settings.workers,
            "max_batch_size": self.settings.max_batch_size,
            "max_queue_delay_ms": self.settings.max_queue_delay_ms,
            "uptime_s": round(time.time() - self.started, 3),
            "rejected": rejected,
            "variants": variants,
            "srm": srm,
        }

    def prometheus(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        merged, rejected, srm = self._merged()
        name = self.name

        class _Collector:
            def collect(self) -> Any:
                return prometheus_families(name, merged, rejected, srm)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())  # type: ignore[arg-type]
        return generate_latest(registry), CONTENT_TYPE_LATEST


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit``."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else None
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    try:
        from falaj.core import __version__ as falaj_version
    except Exception:  # pragma: no cover
        falaj_version = "?"
    return str(falaj_version)


# -- process entry points ------------------------------------------------------------------------------------
def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def read_config(path: Path) -> tuple[DeploymentSpec, Path, dict[str, Any]]:
    raw = json.loads(path.read_text("utf-8"))
    spec = DeploymentSpec.parse(raw["deployment"])
    run_dir = Path(raw.get("run_dir") or path.parent)
    executor = raw.setdefault("executor", "onnxruntime")
    if executor not in EXECUTORS:
        raise SpecError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
    return spec, run_dir, raw


def create_worker_app() -> ServingApp:
    """The app of one worker when ``workers > 1`` (uvicorn imports it in each worker process)."""
    _configure_logging()
    spec, run_dir, raw = read_config(Path(os.environ[CONFIG_ENV]))
    signers = json.loads(_signers_file(run_dir).read_text("utf-8"))
    return ServingApp(spec, run_dir, signers=signers, executor=raw["executor"])


def _listening_socket(raw: dict[str, Any], spec: DeploymentSpec) -> socket.socket:
    fd = raw.get("fd")
    if isinstance(fd, int):
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(True)
        return sock
    host, port = spec.settings.host, spec.settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                log.warning("the deploying process %d exited: stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="falaj-parent-watch", daemon=True).start()


def serve(config_path: Path) -> int:
    """Verify, load and serve one deployment; returns the exit code."""
    import uvicorn

    _configure_logging()
    try:
        spec, run_dir, raw = read_config(config_path)
    except (OSError, ValueError, KeyError, SpecError) as exc:
        log.error("refusing to start: the configuration %s is unusable: %s", config_path, exc)
        _write_failure(config_path.parent, f"the configuration is unusable: {exc}")
        return 2
    settings = spec.settings
    if settings.exit_with_parent and isinstance(raw.get("parent_pid"), int):
        _watch_parent(int(raw["parent_pid"]))
    try:
        signers = verify_all(spec, run_dir)
    except VerificationError as exc:
        log.error("refusing to start: %s", exc)
        _write_failure(run_dir, str(exc))
        return 2
    except Exception as exc:  # an unreadable folder, a full disk: still a clear refusal
        log.exception("refusing to start: verification failed")
        _write_failure(run_dir, f"verification failed: {type(exc).__name__}: {exc}")
        return 2
    try:
        variants = load_variants(spec, run_dir, signers, raw["executor"])
    except ModelLoadError as exc:
        log.error("refusing to start: %s", exc)
        _write_failure(run_dir, str(exc))
        return 3
    sock = _listening_socket(raw, spec)
    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d with %d worker(s)", host, port, settings.workers)
    common: dict[str, Any] = {
        "lifespan": "on",
        "log_level": "warning",
        "access_log": settings.access_log,
        "loop": settings.loop,
        "http": settings.http,
        "ws": "none",
        "interface": "asgi3",
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": 5,
        "backlog": 2048,
        # Bounded memory: at most this many connections in flight (each may buffer up to max_body_bytes);
        # past it uvicorn answers 503 at once instead of queueing without limit.
        "limit_concurrency": MAX_CONCURRENCY,
    }
    if settings.workers == 1:
        app = ServingApp(spec, run_dir, variants, signers, raw["executor"])
        server = uvicorn.Server(uvicorn.Config(app, **common))
        server.run(sockets=[sock])
        return 0 if server.started else 3
    del variants  # each worker loads its own sessions; loading here proved that they load
    from uvicorn.supervisors import Multiprocess

    os.environ[CONFIG_ENV] = str(config_path)
    config = uvicorn.Config(
        "falaj.plugins.onnx_serving.server:create_worker_app", factory=True, workers=settings.workers, **common
    )
    Multiprocess(config, sockets=[sock]).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Falaj serving data plane (Open Inference Protocol V2)")
    parser.add_argument("--config", required=True, type=Path, help="the JSON configuration the runtime wrote")
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
