"""HTTP load generator for the API benchmark, run in its own process so it does not share the server's loop.

``N`` keep-alive connections send requests back to back (closed loop) for a warm-up, then for a fixed
measured duration; every response's status is checked (anything outside 2xx, and every connection error
or timeout, counts as an error) and every request's latency is recorded. POST bodies are made unique per
request by replacing ``{n}`` in the body template with ``<run token>-<connection>-<counter>``.

Clients, fastest first (``--client auto`` takes the first available):

- ``wrk``: the C load generator, if it is on PATH; a generated Lua script sets the headers, makes the
  unique bodies, counts non-2xx responses and prints requests, duration and latency percentiles as JSON.
- ``aiohttp``: if installed.
- ``raw``: a minimal HTTP/1.1 keep-alive client on asyncio streams (standard library only).
- ``httpx``: ``httpx.AsyncClient`` with a pool of ``N`` connections (only when named: it is the slowest,
  and a client slower than the server measures the client).

    python bench/_loadgen.py --url http://127.0.0.1:8080/healthz --connections 50 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CLIENTS = ("auto", "wrk", "aiohttp", "raw", "httpx")
TIMEOUT_S = 30.0
MAX_SAMPLES = 5  # error samples kept for the report


def available_client(preferred: str = "auto") -> str:
    """The client ``preferred`` resolves to here (``auto``: wrk, else aiohttp, else the raw asyncio client)."""
    if preferred != "auto":
        if preferred == "wrk" and shutil.which("wrk") is None:
            raise SystemExit("wrk is not on PATH")
        if preferred in ("aiohttp", "httpx") and importlib.util.find_spec(preferred) is None:
            raise SystemExit(f"{preferred} is not installed")
        return preferred
    if shutil.which("wrk"):
        return "wrk"
    if importlib.util.find_spec("aiohttp") is not None:
        return "aiohttp"
    return "raw"


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (``q`` in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def run_load(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    connections: int = 50,
    duration: float = 10.0,
    warmup: float = 2.0,
    client: str = "auto",
    threads: int = 1,
    cpus: set[int] | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Load ``url`` from a separate process and return requests/s, p50, p99 (ms) and the error count.

    ``body`` is a template: ``{n}`` is replaced by a token unique to each request. ``cpus`` pins the
    client process to those CPUs. ``threads`` is wrk's thread count (the asyncio clients use one loop).
    """
    client = available_client(client)
    if rate is not None and client == "wrk":
        client = "raw"  # wrk sends as fast as it can; a fixed arrival rate needs the asyncio client
    spec = {
        "url": url,
        "method": method.upper(),
        "headers": headers or {},
        "body": body,
        "connections": connections,
        "duration": duration,
        "warmup": warmup,
        "client": client,
        "threads": threads,
        "rate": rate,
    }

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    if client == "wrk":
        return _run_wrk(spec, pin)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=warmup + duration + 120,
        preexec_fn=pin if cpus else None,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- wrk ------------------------------------------------------------------------------------------------
def _lua_string(text: str) -> str:
    """A Lua string literal: printable ASCII as is, every other byte as a decimal escape."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _wrk_script(spec: dict[str, Any], token: str) -> str:
    lines = [f"wrk.method = {_lua_string(spec['method'])}"]
    for name, value in spec["headers"].items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    body = spec["body"]
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines.append(
        """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
non2xx = 0
samples = ""
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if non2xx <= 3 then samples = samples .. status .. " " .. string.sub(body or "", 1, 200) .. "\\n" end
  end
end
"""
    )
    if body is not None and "{n}" in body:
        head, _, tail = body.partition("{n}")
        lines.append(
            f"""
local head, tail, token = {_lua_string(head)}, {_lua_string(tail)}, {_lua_string(token)}
local counter = 0
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. token .. "-" .. tid .. "-" .. counter .. tail)
end
"""
        )
    elif body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    lines.append(
        """
local function jsonstr(s)
  return '"' .. string.gsub(string.gsub(s, '[%c"\\\\]', function(c) return string.format("\\\\u%04x", string.byte(c)) end), "%s+$", "") .. '"'
end
function done(summary, latency, requests)
  local bad, text = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    text = text .. t:get("samples")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, ' ..
    '"non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d, "samples": %s}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    bad, e.connect, e.read, e.write, e.timeout, e.status, jsonstr(text)))
end
"""
    )
    return "\n".join(lines)


def _run_wrk(spec: dict[str, Any], pin: Callable[[], None]) -> dict[str, Any]:
    connections, threads = int(spec["connections"]), max(1, min(int(spec["threads"]), int(spec["connections"])))
    with tempfile.TemporaryDirectory() as tmp:

        def wrk(seconds: float, token: str) -> dict[str, Any]:
            script = Path(tmp) / f"{token}.lua"
            script.write_text(_wrk_script(spec, token))
            cmd = [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={int(TIMEOUT_S)}s",
                "-s",
                str(script),
                spec["url"],
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, preexec_fn=pin)
            found = re.search(r"^WRKJSON (.*)$", proc.stdout, re.M)
            if proc.returncode != 0 or not found or ".lua:" in proc.stderr:
                raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
            return dict(json.loads(found.group(1)))

        if spec["warmup"] > 0:
            wrk(spec["warmup"], secrets.token_hex(4))
        out = wrk(spec["duration"], secrets.token_hex(4))
    seconds = out["duration_us"] / 1e6
    kinds = Counter(
        {
            k: out[k]
            for k in ("connect", "read", "write", "timeout")
            if out[k]  # socket errors; non-2xx statuses are counted by the script
        }
    )
    if out["non2xx"]:
        kinds["non-2xx"] = out["non2xx"]
    errors = sum(kinds.values())
    return {
        "client": f"wrk ({threads} thread{'s' if threads > 1 else ''})",
        "method": spec["method"],
        "url": spec["url"],
        "connections": connections,
        "duration_s": round(seconds, 3),
        "requests": out["requests"],
        "rps": round(out["requests"] / seconds, 1),
        "p50_ms": round(out["p50_us"] / 1000, 3),
        "p99_ms": round(out["p99_us"] / 1000, 3),
        "mean_ms": round(out["mean_us"] / 1000, 3),
        "max_ms": round(out["max_us"] / 1000, 3),
        "errors": errors,
        "error_kinds": dict(kinds),
        "error_samples": [s for s in out["samples"].split("\n") if s][:MAX_SAMPLES],
    }


# -- asyncio clients ---------------------------------------------------------------------------------------
class _Raw:
    """One HTTP/1.1 keep-alive connection on asyncio streams: Content-Length and chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, chunked, close = None, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    parts.append((await reader.readexactly(size + 2))[:-2])
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                body = b"".join(parts)
            elif length is not None:
                body = await reader.readexactly(length)
            else:
                body, close = await reader.read(), True
            if close:
                self.close()
            return status, body
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    target = url.path + (f"?{url.query}" if url.query else "")
    method, template, client = spec["method"], spec["body"], spec["client"]
    headers = dict(spec["headers"])
    if template is not None:
        headers["Content-Type"] = "application/json"
    token = secrets.token_hex(4)
    connections = int(spec["connections"])
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    samples: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + float(spec["warmup"])
    stop = measure_from + float(spec["duration"])

    def body_for(worker: int, n: int) -> bytes | None:
        if template is None:
            return None
        return template.replace("{n}", f"{token}-{worker}-{n}").encode()

    session: Any = None
    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )

        async def send(_conn: Any, data: bytes | None) -> tuple[int, bytes]:
            async with session.request(method, spec["url"], data=data, headers=headers) as r:
                return r.status, await r.read()

    elif client == "httpx":
        import httpx

        session = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=TIMEOUT_S,
        )

        async def send(_conn: Any, data: bytes | None) -> tuple[int, bytes]:
            r = await session.request(method, spec["url"], content=data, headers=headers)
            return r.status_code, r.content

    else:
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        prefix = f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{fixed}".encode()

        async def send(conn: Any, data: bytes | None) -> tuple[int, bytes]:
            payload = data or b""
            length = f"Content-Length: {len(payload)}\r\n\r\n".encode() if data is not None else b"\r\n"
            async with asyncio.timeout(TIMEOUT_S):  # no extra task per request, unlike wait_for
                return await conn.request(prefix + length + payload)

    rate = spec.get("rate")

    async def worker(index: int) -> None:
        conn = _Raw(host, port) if client == "raw" else None
        n = 0
        try:
            while loop.time() < stop:
                n += 1
                data = body_for(index, n)
                if rate:
                    # Open loop: request k of the whole run is due at start + k / rate, spread over the
                    # connections; latency counts from when it was due, so a slow answer that delays the
                    # next request is charged to that request too (no coordinated omission).
                    due = start + ((n - 1) * connections + index) / float(rate)
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    t0 = time.perf_counter() - (loop.time() - due)
                else:
                    t0 = time.perf_counter()
                try:
                    status, body = await send(conn, data)
                    problem = None if 200 <= status < 300 else f"status {status}"
                except Exception as exc:  # connection reset, timeout, protocol error: an error, then go on
                    status, body, problem = 0, str(exc).encode(), f"{type(exc).__name__}"
                elapsed = time.perf_counter() - t0
                done = loop.time()
                if measure_from <= done <= stop:
                    if problem is None:
                        latencies.append(elapsed)
                    else:
                        kinds[problem] += 1
                        if len(samples) < MAX_SAMPLES:
                            samples.append(f"{problem}: {body[:200].decode(errors='replace')}")
        finally:
            if conn is not None:
                conn.close()

    try:
        await asyncio.gather(*(worker(i) for i in range(connections)))
    finally:
        if session is not None:
            await (session.close() if client == "aiohttp" else session.aclose())
    ordered = sorted(latencies)
    errors = sum(kinds.values())
    seconds = float(spec["duration"])
    return {
        "client": client,
        "method": method,
        "url": spec["url"],
        "connections": connections,
        "rate": rate,
        "duration_s": seconds,
        "requests": len(ordered) + errors,
        "rps": round((len(ordered) + errors) / seconds, 1),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else math.nan,
        "max_ms": round(ordered[-1] * 1000, 3) if ordered else math.nan,
        "errors": errors,
        "error_kinds": dict(kinds),
        "error_samples": samples,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", help="a JSON request spec (how run_load calls this process)")
    parser.add_argument("--url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--body", help="JSON body template; {n} becomes a token unique to each request")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--client", choices=CLIENTS, default="auto")
    args = parser.parse_args(argv)
    if args.spec:
        spec = json.loads(args.spec)
        if spec["client"] == "wrk":
            raise SystemExit("wrk runs from run_load, not inside this process")
        print(json.dumps(asyncio.run(_drive(spec))))
        return
    if not args.url:
        parser.error("--url is required")
    headers = dict(h.split(":", 1) for h in args.header)
    result = run_load(
        args.url,
        method=args.method,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        body=args.body,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        client=args.client,
        threads=args.threads,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
