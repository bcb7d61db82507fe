"""REST API under concurrent load: Falaj's governed server vs a bare Litestar app on the same routes.

One run sets up a fresh installation (``falaj init``), starts the real ``falaj serve`` and, beside it, a
bare Litestar app (this file, ``--serve-bare``) served by uvicorn with the same worker count and options,
on the same database. The bare app has the same route shapes and does the same database work without
authentication, policy, audit or operation records:

- GET ``--get-path`` (default: one backend by name): Falaj authenticates the bearer token, authorizes and
  reads the backend row; the bare app reads the same row with a SQLAlchemy session and returns its fields.
- POST ``/api/v1/tenants/{tenant}/consents`` (``--post consent``, the default): Falaj runs the governed
  ``consent.record`` (a data steward's token; authenticate, validate, RBAC, policy, handler, operation
  record, hash-chained audit append, commit); the bare app inserts the same ``consent_records`` row.
  ``--post consent-action`` sends the same action to ``/actions/consent.record``; ``--post cost`` uses
  ``cost.record`` on ``/actions/cost.record`` (admin token, one insert). Every POST has a subject (or
  resource) unique to the request, so it can be repeated forever.

Each round runs, in this order: bare GET, Falaj GET, bare POST, Falaj POST (and, with ``--post-rate R``, the
two POSTs again at a fixed R requests/s, open loop); each for ``--duration``
seconds after a warm-up, with ``--connections`` keep-alive connections from a load generator in its own
process (bench/_loadgen.py: wrk when on PATH, else aiohttp, else a raw asyncio client). Reported: medians
over rounds of requests/s, p50 and p99, errors (any non-2xx or socket error), and the ratios against the
targets (GET >= 0.5x the bare app's requests/s; governed POST p99 <= 20 ms on SQLite).

    python bench/api_load.py [--connections 50] [--duration 10] [--rounds 3] [--workers 1]
                             [--database sqlite|postgres] [--json OUT]
                             [--get-path PATH] [--post consent|consent-action|cost] [--post-connections N]
                             [--client auto|wrk|aiohttp|raw|httpx] [--pin]

The load is a closed loop: with N connections the mean latency is N / throughput (Little's law), so a p99
under 20 ms with 50 connections needs more than 2,500 requests/s; ``--post-connections`` runs the POSTs
with fewer connections to measure the latency of a lightly loaded server, and ``--post-rate`` (default 100)
measures it open loop: requests are sent when due at a fixed rate, whatever the answers, and each latency
counts from when its request was due (no coordinated omission).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _loadgen import CLIENTS, available_client, run_load  # noqa: E402
from litestar import Litestar, Response, get, post  # noqa: E402  (module level: handler hints resolve here)

TENANT = "operator"
BACKEND = "bench-store"
STEWARD = "bench-dpo"
PURPOSES = ("analytics", "training", "monitoring", "feature-serving", "marketing")
DEFAULT_GET = "/api/v1/tenants/{tenant}/backends/{name}"
BARE_DB_ENV = "FALAJ_BENCH_BARE_DB"
MAX_BODY = 1024 * 1024  # as falaj.api.rest.app
GET_TARGET, POST_P99_LIMIT_MS = 0.5, 20.0


# -- the bare peer ------------------------------------------------------------------------------------------
def _backend_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "plugin": row.plugin,
        "region": row.region,
        "node_class": row.node_class,
        "settings": row.settings,
        "enabled": row.enabled,
        "created_at": row.created_at.isoformat(),
    }


def create_bare_app() -> Any:
    """The bare peer: Litestar, the same routes and database work, no auth, no policy, no audit."""
    from decimal import Decimal

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from falaj.core.db import create_db_engine, read_only
    from falaj.core.domain import Backend, ConsentRecord, CostRecord, Tenant
    from falaj.core.domain.base import utcnow
    from falaj.core.plugin import create_plugin_manager

    # The same engine tuning as the control plane (SQLite: WAL, synchronous=NORMAL, BEGIN IMMEDIATE for
    # writes; PostgreSQL: the same pool), so that only the governance differs.
    engine = create_db_engine(os.environ[BARE_DB_ENV])
    reader = read_only(engine)
    registry = create_plugin_manager()

    def tenant_id(session: Session, slug: str) -> str | None:
        return session.scalar(select(Tenant.id).where(Tenant.slug == slug))

    @get("/readyz", sync_to_thread=True)
    def readyz() -> dict[str, str]:
        with reader.connect() as conn:
            conn.execute(select(Tenant.id).where(Tenant.slug == "")).first()
        return {"status": "ready"}

    @get("/api/v1/tenants/{tenant:str}/backends/{name:str}", sync_to_thread=True)
    def get_backend(tenant: str, name: str) -> Response[Any]:
        with Session(reader) as session:
            row = session.scalar(
                select(Backend)
                .join(Tenant, Tenant.id == Backend.tenant_id)
                .where(Tenant.slug == tenant, Backend.name == name)
            )
            if row is None:
                return Response({"detail": f"no backend {name!r}"}, status_code=404)
            return Response(_backend_json(row))

    @get("/api/v1/tenants/{tenant:str}/backends", sync_to_thread=True)
    def list_backends(tenant: str, limit: int = 50) -> dict[str, Any]:
        with Session(reader) as session:
            rows = session.scalars(
                select(Backend)
                .join(Tenant, Tenant.id == Backend.tenant_id)
                .where(Tenant.slug == tenant)
                .order_by(Backend.name)
                .limit(max(1, min(limit, 500)))
            ).all()
            return {"items": [_backend_json(r) for r in rows], "next_cursor": None}

    @get("/api/v1/plugins", sync_to_thread=True)
    def list_plugins() -> list[dict[str, Any]]:
        return [dict(p.__dict__) for p in registry.plugins.values()]

    def insert_consent(tenant: str, data: dict[str, Any], status: int) -> Response[Any]:
        with Session(engine) as session, session.begin():
            tid = tenant_id(session, tenant)
            if tid is None:
                return Response({"detail": f"no tenant {tenant!r}"}, status_code=404)
            row = ConsentRecord(
                tenant_id=tid,
                subject_id=data["subject_id"],
                purpose=data["purpose"],
                granted_at=utcnow(),
                evidence=data.get("evidence", {}),
            )
            session.add(row)
            session.flush()
            body = {"consent_id": row.id, "subject_id": row.subject_id, "purpose": row.purpose}
        return Response({"outcome": "succeeded", "data": body}, status_code=status)

    def insert_cost(tenant: str, data: dict[str, Any]) -> Response[Any]:
        with Session(engine) as session, session.begin():
            tid = tenant_id(session, tenant)
            if tid is None:
                return Response({"detail": f"no tenant {tenant!r}"}, status_code=404)
            row = CostRecord(tenant_id=tid, resource=data["resource"], amount=Decimal(str(data["amount"])))
            session.add(row)
            session.flush()
            body = {"cost_id": row.id, "resource": row.resource}
        return Response({"outcome": "succeeded", "data": body}, status_code=200)

    @post("/api/v1/tenants/{tenant:str}/consents", sync_to_thread=True, request_max_body_size=MAX_BODY)
    def record_consent(tenant: str, data: dict[str, Any]) -> Response[Any]:
        return insert_consent(tenant, data, 201)

    @post("/api/v1/tenants/{tenant:str}/actions/{kind:str}", sync_to_thread=True, request_max_body_size=MAX_BODY)
    def execute_action(tenant: str, kind: str, data: dict[str, Any]) -> Response[Any]:
        if kind == "consent.record":
            return insert_consent(tenant, data, 200)
        if kind == "cost.record":
            return insert_cost(tenant, data)
        return Response({"detail": f"the bare app does not do {kind!r}"}, status_code=422)

    return Litestar(
        route_handlers=[readyz, get_backend, list_backends, list_plugins, record_consent, execute_action],
        request_max_body_size=MAX_BODY,
        debug=False,
    )


def serve_bare(host: str, port: int, workers: int, db: str, log_level: str) -> None:
    import uvicorn

    os.environ[BARE_DB_ENV] = db
    # The options `falaj serve` passes (api/cli/main.py), the rest left at uvicorn's defaults as there.
    uvicorn.run(
        "api_load:create_bare_app",
        factory=True,
        app_dir=str(HERE),
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


# -- orchestration -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_impl() -> dict[str, str]:
    """What uvicorn's ``auto`` resolves to in this environment (both servers use ``auto``)."""
    import importlib.util

    return {
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }


@contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path, cpus: set[int] | None) -> Iterator[str]:
    import httpx

    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[2:4]} exited {proc.returncode}: {log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after 60 s: {log.read_text()[-3000:]}")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check(response: Any, what: str) -> Any:
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:500]}")
    return response.json()


def prepare(falaj: str, admin: str) -> str:
    """Register the backend to GET and a data steward to record consent; return the steward's token.

    Set-up goes through the generic action route (``/actions/{kind}``, the same governed actions as the
    resource routes), so that it does not depend on any one resource route.
    """
    import httpx

    auth = {"Authorization": f"Bearer {admin}"}
    actions = f"/api/v1/tenants/{TENANT}/actions"
    with httpx.Client(base_url=falaj, headers=auth, timeout=30) as c:
        backend = {"name": BACKEND, "kind": "storage", "plugin": "local", "region": "me-central-1"}
        check(c.post(f"{actions}/backend.register", json=backend), "backend.register")
        steward = {"name": STEWARD, "roles": ["data-steward"]}
        check(c.post(f"{actions}/principal.create", json=steward), "principal.create")
        issued = check(c.post(f"{actions}/token.issue", json={"principal": STEWARD}), "token.issue")
    return str(issued["secret"])


def post_spec(kind: str, side: str, round_: int, admin: str, steward: str) -> tuple[str, str, str]:
    """(path, token, body template) of the POST; ``{n}`` in the body is unique per request."""
    if kind in ("consent", "consent-action"):
        purpose = PURPOSES[round_ % len(PURPOSES)]
        body = json.dumps(
            {"subject_id": f"{side}-r{round_}-{{n}}", "purpose": purpose, "evidence": {"source": "bench"}},
            separators=(",", ":"),
        )
        if kind == "consent-action":
            return f"/api/v1/tenants/{TENANT}/actions/consent.record", steward, body
        return f"/api/v1/tenants/{TENANT}/consents", steward, body
    body = json.dumps({"resource": f"{side}/r{round_}/{{n}}", "amount": "1.5"}, separators=(",", ":"))
    return f"/api/v1/tenants/{TENANT}/actions/cost.record", admin, body


def smoke(bare: str, falaj: str, get_path: str, post: tuple[str, str, str], admin: str) -> list[str]:
    """One request of each kind on each side before loading them: all must be 2xx. Returns warnings."""
    import httpx

    warnings = []
    got = {}
    for name, base, token in (("bare", bare, None), ("falaj", falaj, admin)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        got[name] = check(httpx.get(base + get_path, headers=headers, timeout=30), f"{name} GET {get_path}")
    if isinstance(got["bare"], dict) and isinstance(got["falaj"], dict):
        bare_keys, falaj_keys = set(got["bare"]), set(got["falaj"])
        if bare_keys != falaj_keys:
            warnings.append(
                f"GET fields differ: only Falaj {sorted(falaj_keys - bare_keys)}, only bare {sorted(bare_keys - falaj_keys)}"
            )
    path, token, body = post
    for name, base in (("bare", bare), ("falaj", falaj)):
        check(
            httpx.post(
                base + path,
                content=body.replace("{n}", f"smoke-{name}"),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=30,
            ),
            f"{name} POST {path}",
        )
    return warnings


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from _support import database, pg_available

    if args.database == "postgres" and not pg_available():
        raise SystemExit("PostgreSQL is not reachable (FALAJ_TEST_POSTGRES_URL)")
    client = available_client(args.client)
    ncpu = os.cpu_count() or 1
    client_cpus = server_cpus = None
    if args.pin and ncpu >= 2:
        client_cpus, server_cpus = {ncpu - 1}, set(range(ncpu - 1))
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="falaj-api-load-") as tmp,
        database(args.database, Path(tmp)) as url,
        ExitStack() as stack,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
        env.update(FALAJ_HOME=str(Path(tmp) / "home"), FALAJ_DATABASE_URL=url)
        init = subprocess.run(
            [sys.executable, "-m", "falaj.api.cli", "init", "--json", "--tenant", TENANT],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if init.returncode != 0:
            raise RuntimeError(f"falaj init failed: {init.stderr[-2000:]}")
        admin = json.loads(init.stdout)["token"]
        falaj_cmd = [sys.executable, "-m", "falaj.api.cli", "serve", "--host", "127.0.0.1"]
        falaj_port, bare_port = free_port(), free_port()
        falaj = stack.enter_context(
            server(
                [*falaj_cmd, "--port", str(falaj_port), "--workers", str(args.workers), "--log-level", "warning"],
                env,
                falaj_port,
                Path(tmp) / "falaj.log",
                server_cpus,
            )
        )
        steward = prepare(falaj, admin)
        bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--port", str(bare_port)]
        bare = stack.enter_context(
            server(
                [*bare_cmd, "--workers", str(args.workers), "--db", url],
                env,
                bare_port,
                Path(tmp) / "bare.log",
                server_cpus,
            )
        )
        get_path = args.get_path.format(tenant=TENANT, name=BACKEND)
        warnings = smoke(bare, falaj, get_path, post_spec(args.post, "smoke", 0, admin, steward), admin)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for r in range(args.rounds):
            plan = [
                ("bare", "GET", bare, get_path, None, None),
                ("falaj", "GET", falaj, get_path, admin, None),
            ]
            for side, base in (("bare", bare), ("falaj", falaj)):
                path, token, body = post_spec(args.post, side, r, admin, steward)
                plan.append((side, "POST", base, path, None if side == "bare" else token, body))
            if args.post_rate:
                for side, base in (("bare", bare), ("falaj", falaj)):
                    path, token, body = post_spec(args.post, f"{side}-rate", r, admin, steward)
                    plan.append((side, "POST@rate", base, path, None if side == "bare" else token, body))
            for side, method, base, path, token, body in plan:
                fixed = method == "POST@rate"
                out = run_load(
                    base + path,
                    method="POST" if fixed else method,
                    headers={"Authorization": f"Bearer {token}"} if token else {},
                    body=body,
                    connections=args.connections if fixed or method == "GET" else args.post_connections,
                    rate=args.post_rate if fixed else None,
                    duration=args.duration,
                    warmup=args.warmup,
                    client=client,
                    threads=args.client_threads,
                    cpus=client_cpus,
                )
                out.update(round=r + 1, side=side, op=method, path=path)
                results.append(out)
                print(
                    f"round {r + 1}/{args.rounds} {side:5} {method:4} {out['rps']:9.1f} req/s  p50 {out['p50_ms']:7.2f} ms"
                    f"  p99 {out['p99_ms']:7.2f} ms  errors {out['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
                if out["errors"]:
                    print(f"  {out['error_kinds']} {out['error_samples'][:2]}", file=sys.stderr)
        stack.close()  # stop both servers before verifying the chain
        verify = subprocess.run(
            [sys.executable, "-m", "falaj.api.cli", "audit", "verify"], env=env, capture_output=True, text=True
        )
    summary: dict[str, Any] = {}
    for side in ("bare", "falaj"):
        for op in ("GET", "POST", "POST@rate"):
            rows = [x for x in results if x["side"] == side and x["op"] == op]
            if not rows:
                continue
            summary[f"{side}_{op.lower().replace('@', '_')}"] = {
                "rps": round(median([x["rps"] for x in rows]), 1),
                "p50_ms": round(median([x["p50_ms"] for x in rows]), 3),
                "p99_ms": round(median([x["p99_ms"] for x in rows]), 3),
                "errors": sum(x["errors"] for x in rows),
                "requests": sum(x["requests"] for x in rows),
            }
    per_round = [
        round(f["rps"] / b["rps"], 3)
        for b, f in zip(
            [x for x in results if x["side"] == "bare" and x["op"] == "GET"],
            [x for x in results if x["side"] == "falaj" and x["op"] == "GET"],
            strict=True,
        )
    ]
    # Each round's Falaj GET is paired with the bare GET just before it; the median of those ratios is the
    # figure (the ratio of the two medians is kept too: on a noisy machine the two can differ).
    get_ratio = median(per_round)
    post_p99 = summary["falaj_post"]["p99_ms"]
    errors = sum(s["errors"] for s in summary.values())
    return {
        "config": {
            "database": args.database,
            "connections": args.connections,
            "post_connections": args.post_connections,
            "post_rate": args.post_rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "workers": args.workers,
            "get_path": get_path,
            "post": args.post,
            "client": results[0]["client"] if results else client,
            "pinned": {"client": sorted(client_cpus), "servers": sorted(server_cpus)} if client_cpus else None,
            "cpus": ncpu,
            "uvicorn": uvicorn_impl(),
            "python": platform.python_version(),
            "note": f"client, Falaj server and bare server share this {ncpu}-core machine over loopback; "
            "the load generator runs in its own process, servers not under load sit idle",
        },
        "summary": summary,
        "ratios": {
            "get_rps_falaj_over_bare": round(get_ratio, 3),
            "get_rps_ratio_per_round": per_round,
            "get_rps_ratio_of_medians": round(summary["falaj_get"]["rps"] / summary["bare_get"]["rps"], 3),
            "get_target": GET_TARGET,
            "get_met": get_ratio >= GET_TARGET,
            "post_p99_ms_falaj": post_p99,
            "post_p99_limit_ms": POST_P99_LIMIT_MS,
            "post_met": post_p99 <= POST_P99_LIMIT_MS,
            "post_p99_ms_bare": summary["bare_post"]["p99_ms"],
            "post_rate_per_s": args.post_rate,
            "post_rate_p99_ms_falaj": summary.get("falaj_post_rate", {}).get("p99_ms"),
            "post_rate_p99_ms_bare": summary.get("bare_post_rate", {}).get("p99_ms"),
            "post_rate_met": bool(args.post_rate)
            and summary.get("falaj_post_rate", {}).get("p99_ms", math.inf) <= POST_P99_LIMIT_MS,
        },
        "errors": errors,
        "warnings": warnings,
        "audit_verify": {"ok": verify.returncode == 0, "output": (verify.stdout + verify.stderr).strip()[-500:]},
        "runs": results,
    }


def print_report(report: dict[str, Any]) -> None:
    cfg, s, r = report["config"], report["summary"], report["ratios"]
    conns = f"{cfg['connections']} connections" + (
        f" ({cfg['post_connections']} for POST)" if cfg["post_connections"] != cfg["connections"] else ""
    )
    print(
        f"\n{cfg['database']}: {conns}, {cfg['duration_s']:g} s per run after "
        f"{cfg['warmup_s']:g} s warm-up, {cfg['rounds']} round(s), {cfg['workers']} worker(s), client {cfg['client']}, "
        f"uvicorn {cfg['uvicorn']['http']}/{cfg['uvicorn']['loop']}"
    )
    print(f"note: {cfg['note']}" + (f"; pinned {cfg['pinned']}" if cfg["pinned"] else ""))
    print(f"GET {cfg['get_path']}   POST {report['runs'][-1]['path'] if report['runs'] else ''}\n")
    print(
        "| route | bare req/s | bare p50 (ms) | bare p99 (ms) | Falaj req/s | Falaj p50 (ms) | Falaj p99 (ms) | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    names = {
        "get": "GET",
        "post": "POST (closed loop)",
        "post_rate": f"POST at {cfg.get('post_rate')} req/s (open loop)",
    }
    for op in ("get", "post", "post_rate"):
        if f"bare_{op}" not in s:
            continue
        b, f = s[f"bare_{op}"], s[f"falaj_{op}"]
        print(
            f"| {names[op]} | {b['rps']:,.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {f['rps']:,.0f} | "
            f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {b['errors'] + f['errors']} |"
        )
    verdict = {True: "met", False: "NOT met"}
    print(
        f"\nGET: Falaj/bare requests/s = {r['get_rps_falaj_over_bare']:.2f}x (median of rounds "
        f"{r['get_rps_ratio_per_round']}; ratio of medians {r['get_rps_ratio_of_medians']:.2f}x); "
        f"target >= {r['get_target']}x: {verdict[r['get_met']]}"
    )
    print(
        f"POST: Falaj p99 = {r['post_p99_ms_falaj']:.2f} ms (bare {r['post_p99_ms_bare']:.2f} ms); limit "
        f"{r['post_p99_limit_ms']:g} ms" + (": " + verdict[r["post_met"]] if cfg["database"] == "sqlite" else "")
    )
    falaj_post = s["falaj_post"]
    if falaj_post["rps"]:
        print(
            f"      closed loop: mean latency = connections / throughput (Little's law) = "
            f"{cfg['post_connections'] / falaj_post['rps'] * 1000:.1f} ms at Falaj's POST rate; a p99 under "
            f"{r['post_p99_limit_ms']:g} ms with {cfg['post_connections']} connection(s) needs more than "
            f"{cfg['post_connections'] / r['post_p99_limit_ms'] * 1000:,.0f} requests/s"
        )
    if r.get("post_rate_p99_ms_falaj") is not None:
        print(
            f"POST at a fixed {r['post_rate_per_s']:g} requests/s from {cfg['connections']} connections (open loop, "
            f"latency from when each request was due): Falaj p99 = {r['post_rate_p99_ms_falaj']:.2f} ms (bare "
            f"{r['post_rate_p99_ms_bare']:.2f} ms); limit {r['post_p99_limit_ms']:g} ms"
            + (": " + verdict[r["post_rate_met"]] if cfg["database"] == "sqlite" else "")
        )
    print(
        f"errors: {report['errors']}; audit verify after the run: {'ok' if report['audit_verify']['ok'] else 'FAILED'}"
    )
    for w in report["warnings"]:
        print(f"warning: {w}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured run")
    parser.add_argument("--post-connections", type=int, help="connections for the POST runs (default: --connections)")
    parser.add_argument(
        "--post-rate",
        type=float,
        default=100.0,
        help="also run the POSTs open loop at this many requests/s over --connections (0: skip)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, for both servers")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--get-path", default=DEFAULT_GET, help="GET route; {tenant} and {name} (the registered backend) are filled in"
    )
    parser.add_argument(
        "--post",
        choices=["consent", "consent-action", "cost"],
        default="consent",
        help="the governed POST: consent.record on /consents (default) or on /actions/consent.record, "
        "or cost.record on /actions/cost.record",
    )
    parser.add_argument("--client", choices=CLIENTS, default="auto", help="load generator (auto: wrk, aiohttp, raw)")
    parser.add_argument("--client-threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--pin", action="store_true", help="pin the client to the last CPU, the servers to the rest")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # The bare peer's own process (started by the benchmark).
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8090, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="warning", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        if not args.db:
            parser.error("--serve-bare needs --db URL")
        serve_bare("127.0.0.1", args.port, args.workers, args.db, args.log_level)
        return
    if args.post_connections is None:
        args.post_connections = args.connections
    report = run(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
