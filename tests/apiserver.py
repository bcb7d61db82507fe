"""Start the real `falaj serve` process on loopback for a test, on SQLite or a fresh PostgreSQL database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Server:
    client: httpx.Client
    token: str  # the operator admin's token
    home: Path
    url: str
    env: dict[str, str]

    def tenant(self, slug: str, admin: str = "alice") -> str:
        """Create a tenant with its first admin; return the admin's token."""
        r = self.client.post(
            "/api/v1/tenants",
            headers=auth(self.token),
            json={"slug": slug, "display_name": slug.title(), "admin": admin},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])

    def principal(self, tenant: str, admin_token: str, name: str, *roles: str) -> str:
        """Create a principal with roles and return a fresh API token for it."""
        h = auth(admin_token)
        r = self.client.post(
            f"/api/v1/tenants/{tenant}/principals", headers=h, json={"name": name, "roles": list(roles)}
        )
        assert r.status_code == 201, r.text
        r = self.client.post(f"/api/v1/tenants/{tenant}/tokens", headers=h, json={"principal": name})
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


@contextmanager
def running_server(
    request: Any, tmp_path: Path, database: str, env_extra: dict[str, str] | None = None, workers: int = 1
) -> Iterator[Server]:
    env = dict(os.environ, FALAJ_HOME=str(tmp_path / "home"), **(env_extra or {}))
    env.pop("FALAJ_DATABASE_URL", None)
    cleanup = None
    if database == "postgres":
        from tests.conftest import fresh_pg_database

        template = request.getfixturevalue("pg_template")
        if template is None:
            pytest.skip("PostgreSQL unavailable")
        name, url = fresh_pg_database(template)
        env["FALAJ_DATABASE_URL"] = url
        cleanup = name
    init = subprocess.run(
        [sys.executable, "-m", "falaj.api.cli", "init", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stderr
    token = json.loads(init.stdout)["token"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "falaj.api.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=30)
    try:
        for _ in range(400):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("server did not start: " + (proc.stdout.read(4000).decode() if proc.stdout else ""))
        yield Server(client, token, tmp_path / "home", base, env)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if cleanup:
            from tests.conftest import drop_pg_database

            drop_pg_database(cleanup)
