"""ONNX serving under concurrent load: Falaj's V2 server against the in-process limit and a peer server.

One run builds a small tabular model (30 features -> 64 hidden -> 2 classes, an MLP written with the
``onnx`` helper API, weights in an external-data sidecar), signs it with a fresh ECDSA key, and measures:

- **in-process limit**: ONNX Runtime in this process, same session options as the server
  (1 intra-op thread, no spinning), ``session.run`` back to back at several batch sizes: rows/s;
- **Falaj**: the ``onnxruntime`` serving runtime deploys it (signature and file verification, its own
  process, dynamic batching ``--max-batch-size`` rows / ``--max-queue-delay-ms``), loaded over V2 REST;
- **peer**: MLServer (``--peer-python``, a separate virtualenv) serving the same ONNX file with adaptive
  batching on (same batch size and delay). MLServer has no official ONNX runtime in its 1.x releases, so the
  peer runs a minimal custom ``MLModel`` around ``onnxruntime.InferenceSession`` with the same session options
  (the documented way to serve a format MLServer does not ship); both its ``parallel_workers`` settings
  (0: inference in the server process, 1: in a worker process) are measured and the faster one is the peer.

Loads (``--loads``, each ``KIND:ROWS:CONNECTIONS``), closed loop from a load generator in its own process
(bench/_loadgen.py: wrk when on PATH), each for ``--duration`` seconds after a warm-up:

- ``json:1:8`` and ``json:1:32``: V2 JSON, one row per request (the latency-bound online case), with 8 and
  32 keep-alive connections;
- ``json:32:32``: V2 JSON, 32 rows per request (a micro-batch from a caller);
- ``binary:32:32`` and ``binary:256:32``: Falaj only: 32 or 256 rows with the binary tensor extension (raw
  float32 after a JSON header), which MLServer's REST server does not implement.

Every configuration is checked for a correct answer (against numpy) before it is measured; the peer servers
run one at a time (each started for its turn in a round and stopped after it), so no idle server shares the
two cores with the one being measured. Reported: medians over ``--rounds`` rounds of requests/s, rows/s,
p50 and p99; Falaj against the peer (target: at least 2x the throughput at equal or lower p99) and Falaj's
rows/s against the in-process limit (target: within 5x).

    python bench/serving_load.py [--rounds 3] [--duration 8] [--loads json:1:8,json:1:32,json:32:32,binary:32:32] \
        [--peer-python /tmp/peer-venv/bin/python] [--json OUT]

The peer's virtualenv (kept out of the project's): ``python3 -m venv /tmp/peer-venv &&
/tmp/peer-venv/bin/pip install mlserver==1.7.1 onnxruntime "uvloop<0.22"`` (MLServer 1.7.1's inference
worker pool calls ``asyncio.get_event_loop()`` in a fresh process, which uvloop 0.22+ refuses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _loadgen import available_client, run_load  # noqa: E402

FEATURES, HIDDEN, CLASSES = 30, 64, 2
NAME = "tabular"
PEER_MODEL = "tabular"

PEER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """ONNX Runtime behind MLServer: same session options as Falaj's server."""

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        results = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(self._outputs, results)],
        )
'''


# -- the model ------------------------------------------------------------------------------------------------
def build_artifact(root: Path) -> tuple[dict[str, Any], Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from falaj.core import signing
    from falaj.plugins.onnx_serving.examples import write_mlp
    from falaj.plugins.onnx_serving.verify import folder_manifest, manifest_digest

    folder = root / "model"
    weights = write_mlp(folder, n_features=FEATURES, hidden=HIDDEN, classes=CLASSES, seed=42)
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = signing.key_id(public)
    manifest = folder_manifest(folder)
    variant = {
        "model": NAME,
        "version": 1,
        "weight": 100,
        "shadow": False,
        "artifact_path": str(folder),
        "manifest": manifest,
        "artifact_digest": manifest_digest(manifest),
        "signatures": [{"key_id": kid, "bundle": signing.sign_folder(folder, private, None)}],
        "trusted_keys": {kid: public.decode()},
    }
    return variant, weights


def rows_of(n: int, seed: int = 1) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(size=(n, FEATURES)), 4).astype(np.float32)


def json_body(x: np.ndarray) -> str:
    data = ",".join(f"{v:.4f}" for v in x.ravel().tolist())
    return f'{{"inputs":[{{"name":"input","shape":[{x.shape[0]},{FEATURES}],"datatype":"FP32","data":[{data}]}}]}}'


def binary_body(x: np.ndarray) -> tuple[bytes, int]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return header + raw, len(header)


# -- (a) the in-process limit ------------------------------------------------------------------------------------
def in_process_limit(model_path: Path, batch_sizes: list[int], seconds: float) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    out: dict[str, float] = {}
    for batch in batch_sizes:
        feeds = {"input": rows_of(batch)}
        for _ in range(50):
            session.run(None, feeds)
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(50):
                session.run(None, feeds)
            calls += 50
        out[str(batch)] = round(calls * batch / elapsed, 1)
    return out


# -- servers -------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_falaj(home: Path, variant: dict[str, Any], args: argparse.Namespace) -> tuple[Any, str]:
    from falaj.core.plugin import BackendConfig
    from falaj.plugins.onnx_serving import OnnxServingRuntime

    runtime = OnnxServingRuntime(
        BackendConfig("bench", "onnxruntime", "serving", "local", "cpu-smb", "bench", home, {"exit_with_parent": True})
    )
    endpoint = runtime.deploy(
        {
            "name": NAME,
            "tenant": "bench",
            "environment": "bench",
            "variants": [variant],
            "sticky_salt": "00",
            "settings": {
                "workers": args.workers,
                "max_batch_size": args.max_batch_size,
                "max_queue_delay_ms": args.max_queue_delay_ms,
                "intra_op_threads": 1,
                "http": args.http,
                "loop": args.loop,
            },
        }
    )
    return runtime, endpoint


def start_peer(
    python: str, root: Path, model_folder: Path, args: argparse.Namespace, parallel_workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    folder = root / f"mlserver-pw{parallel_workers}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model_folder, folder)
    (folder / "onnx_runtime.py").write_text(PEER_RUNTIME)
    port, grpc, metrics = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": grpc,
                "metrics_port": metrics,
                "parallel_workers": parallel_workers,
                "host": "127.0.0.1",
                "debug": False,
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": PEER_MODEL,
                "implementation": "onnx_runtime.OnnxModel",
                "max_batch_size": args.max_batch_size,
                "max_batch_time": args.max_queue_delay_ms / 1000.0,
                "parameters": {"uri": "./model.onnx", "version": "1"},
            }
        )
    )
    cli = str(Path(python).with_name("mlserver"))
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [cli, "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{endpoint}/v2/models/{PEER_MODEL}/ready", 90, proc)
    except RuntimeError:
        stop_process(proc)
        raise RuntimeError(f"MLServer did not start: {(folder / 'server.log').read_text()[-2000:]}") from None
    return proc, endpoint


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def check_answer(url: str, x: np.ndarray, weights: Any) -> None:
    request = urllib.request.Request(url, data=json_body(x).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        body = json.loads(r.read())
    out = body["outputs"][0]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, weights.predict(x), rtol=1e-4, atol=1e-5)


# -- load ----------------------------------------------------------------------------------------------------------
def lua_bytes(data: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in data) + '"'


def wrk_binary(
    url: str, body: bytes, header_length: int, connections: int, duration: float, warmup: float
) -> dict[str, Any]:
    """wrk with a fixed binary body (bench/_loadgen.py sends text bodies only)."""
    script = f"""
wrk.method = "POST"
wrk.body = {lua_bytes(body)}
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header_length}"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
non2xx = 0
function response(status, headers, body) if status ~= 200 then non2xx = non2xx + 1 end end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non2xx") end
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "bad": %d, "errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "binary.lua"
        path.write_text(script)

        def run(seconds: float) -> dict[str, Any]:
            cmd = [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout=30s",
                "-s",
                str(path),
                url,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
            found = re.search(r"^WRKJSON (.*)$", proc.stdout, re.M)
            if not found:
                raise RuntimeError(f"wrk failed: {proc.stdout[-1000:]} {proc.stderr[-1000:]}")
            return dict(json.loads(found.group(1)))

        if warmup > 0:
            run(warmup)
        out = run(duration)
    seconds = out["duration_us"] / 1e6
    return {
        "rps": round(out["requests"] / seconds, 1),
        "p50_ms": round(out["p50_us"] / 1000, 3),
        "p99_ms": round(out["p99_us"] / 1000, 3),
        "errors": out["bad"] + out["errors"],
    }


def parse_load(text: str) -> tuple[str, int, int]:
    """``json:ROWS:CONNECTIONS`` or ``binary:ROWS:CONNECTIONS``."""
    kind, rows, connections = text.split(":")
    if kind not in ("json", "binary"):
        raise SystemExit(f"unknown load kind {kind!r} in {text!r}")
    return kind, int(rows), int(connections)


def load_name(load: tuple[str, int, int]) -> str:
    kind, rows, connections = load
    return f"{kind}-{rows}row{'s' if rows > 1 else ''}-c{connections}"


def measure(url: str, load: tuple[str, int, int], args: argparse.Namespace) -> dict[str, Any]:
    kind, rows, connections = load
    x = rows_of(rows)
    if kind == "binary":
        body, hlen = binary_body(x)
        result = wrk_binary(url, body, hlen, connections, args.duration, args.warmup)
    else:
        r = run_load(
            url,
            method="POST",
            body=json_body(x),
            connections=connections,
            duration=args.duration,
            warmup=args.warmup,
            client=args.client,
        )
        result = {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    result["rows_per_s"] = round(result["rps"] * rows, 1)
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: round(statistics.median(r[k] for r in runs), 3)
        for k in ("rps", "rows_per_s", "p50_ms", "p99_ms", "loadavg_before")
    } | {
        "errors": sum(r["errors"] for r in runs),
        "rounds": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1, help="Falaj server processes")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--client", default="auto")
    parser.add_argument("--http", default="auto", help="Falaj's HTTP parser: auto, httptools, h11")
    parser.add_argument("--loop", default="auto", help="Falaj's event loop: auto, uvloop, asyncio")
    parser.add_argument("--peer-python", default="/tmp/peer-venv/bin/python", help="python of MLServer's venv")
    parser.add_argument("--peer-workers", default="0,1", help="MLServer parallel_workers settings to try")
    parser.add_argument(
        "--loads",
        default="json:1:8,json:1:32,json:32:32,binary:32:32,binary:256:32",
        help="comma-separated KIND:ROWS:CONNECTIONS (KIND json or binary; binary is Falaj only)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    loads = [parse_load(x) for x in args.loads.split(",") if x]

    tmp = Path(tempfile.mkdtemp(prefix="falaj-serving-bench-"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "client": available_client(args.client),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "falaj_workers": args.workers,
        "falaj_http": args.http,
        "falaj_loop": args.loop,
    }
    runtime = None
    peer: subprocess.Popen[bytes] | None = None
    try:
        variant, weights = build_artifact(tmp)
        model_folder = Path(variant["artifact_path"])
        print("in-process limit (rows/s by batch size) ...", flush=True)
        sizes = sorted(
            {1, 32, 256, 1024, args.max_batch_size, *(max(rows, args.max_batch_size) for _, rows, _ in loads)}
        )
        results["in_process_rows_per_s"] = in_process_limit(model_folder / "model.onnx", sizes, 1.5)
        print(json.dumps(results["in_process_rows_per_s"]), flush=True)

        runtime, endpoint = start_falaj(tmp / "falaj-home", variant, args)
        falaj_url = f"{endpoint}/v2/models/{NAME}/infer"
        check_answer(falaj_url, rows_of(3, seed=9), weights)

        peer_configs: list[int] = []
        if Path(args.peer_python).exists() and Path(args.peer_python).with_name("mlserver").exists():
            peer_configs = [int(p) for p in args.peer_workers.split(",") if p]
            results["peer_problem"] = None
        else:
            results["peer_problem"] = f"no MLServer at {args.peer_python} (see this file's docstring to install it)"
            print(results["peer_problem"], flush=True)

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

        def record(load: tuple[str, int, int], name: str, url: str, round_no: int) -> None:
            before = os.getloadavg()[0]  # the machine's 1-minute load before: other work skews a round
            r = measure(url, load, args)
            r["loadavg_before"] = round(before, 2)
            runs.setdefault(load_name(load), {}).setdefault(name, []).append(r)
            print(f"round {round_no} {load_name(load):20s} {name:28s} {json.dumps(r)}", flush=True)

        for round_no in range(1, args.rounds + 1):
            for load in loads:
                record(load, "falaj", falaj_url, round_no)
            for pw in peer_configs:  # one peer server at a time, started for the round and stopped after it
                name = f"mlserver(parallel_workers={pw})"
                try:
                    peer, peer_endpoint = start_peer(args.peer_python, tmp, model_folder, args, pw)
                    url = f"{peer_endpoint}/v2/models/{PEER_MODEL}/infer"
                    check_answer(url, rows_of(3, seed=9), weights)
                except Exception as exc:  # report it and go on with what runs
                    results["peer_problem"] = f"{name}: {type(exc).__name__}: {exc}"
                    print(results["peer_problem"], flush=True)
                    continue
                try:
                    for load in loads:
                        if load[0] == "json":
                            record(load, name, url, round_no)
                finally:
                    stop_process(peer)
                    peer = None
        with urllib.request.urlopen(f"{endpoint}/v2/falaj/stats", timeout=10) as r:
            stats = json.loads(r.read())
        v = stats["variants"][0]
        results["falaj_server_stats"] = {"batch": v["batch"], "latency_ms": v["latency_ms"], "errors": v["errors"]}

        table: dict[str, dict[str, Any]] = {
            load: {name: median_of(rs) for name, rs in by_name.items()} for load, by_name in runs.items()
        }
        results["medians"] = table
        limits = results["in_process_rows_per_s"]
        limit_best = max(limits.values())
        rows_of_load = {load_name(load): load[1] for load in loads}
        verdicts: dict[str, Any] = {}
        for load, by_name in table.items():
            falaj = by_name["falaj"]
            # the batch the server runs for this load: max_batch_size rows, or one bigger request alone
            batch = max(rows_of_load[load], args.max_batch_size)
            ratio = limits[str(batch)] / falaj["rows_per_s"]
            entry: dict[str, Any] = {
                "server_batch_rows": batch,
                "in_process_limit_at_that_batch": limits[str(batch)],
                "limit_over_falaj_rows": round(ratio, 2),
                "best_limit_over_falaj_rows": round(limit_best / falaj["rows_per_s"], 2),
                "target_within_5x_of_limit": ratio <= 5,
            }
            peer_names = [n for n in by_name if n != "falaj"]
            if peer_names:
                best = max(peer_names, key=lambda n: by_name[n]["rps"])
                other = by_name[best]
                entry |= {
                    "peer": best,
                    "throughput_ratio": round(falaj["rps"] / other["rps"], 2),
                    "p99_falaj_ms": falaj["p99_ms"],
                    "p99_peer_ms": other["p99_ms"],
                    "target_2x_at_lower_p99": falaj["rps"] >= 2 * other["rps"] and falaj["p99_ms"] <= other["p99_ms"],
                }
            verdicts[load] = entry
        results["verdicts"] = verdicts
        print("\nmedians over", args.rounds, "rounds:")
        for load, by_name in table.items():
            for name, m in by_name.items():
                print(
                    f"  {load:20s} {name:28s} {m['rps']:>10.1f} req/s {m['rows_per_s']:>11.1f} rows/s "
                    f"p50 {m['p50_ms']:>7.2f} ms  p99 {m['p99_ms']:>7.2f} ms  errors {m['errors']}"
                )
        print("in-process limit rows/s:", results["in_process_rows_per_s"])
        print("verdicts:", json.dumps(verdicts, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if peer is not None:
            stop_process(peer)
        if runtime is not None:
            runtime.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
