"""Streamed uploads (artifacts, signature bundles), compliance report downloads and the report schema.

Uploads are authorized before a byte is written, streamed to a staging file under
``FALAJ_HOME/uploads/<tenant>/`` while being hashed and counted (never held whole in memory), checked
against the digest the client sent, and only then handed to a governed action that moves them into the
storage plugin. The staging file is removed whatever happens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import orjson
from litestar import Request, Response, get, put
from litestar.exceptions import ClientException
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import File
from sqlalchemy import select

from falaj.api.rest.models import ActionResult, errors
from falaj.api.rest.problems import ApiProblem
from falaj.api.rest.reads import governed_read
from falaj.core.domain import ComplianceReportRecord, new_id
from falaj.core.errors import NotFoundError

MAX_UPLOAD = int(os.environ.get("FALAJ_MAX_UPLOAD_BYTES", str(2 * 1024**3)))  # 2 GiB by default
MAX_BUNDLE = 1024 * 1024  # a sigstore bundle is a few kilobytes
_REPR_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):")


def _expected_digest(request: Request[Any, Any, Any]) -> str:
    """The SHA-256 the client claims for the body: ``Repr-Digest`` (RFC 9530) or ``X-Content-SHA256`` (hex)."""
    hex_header = request.headers.get("x-content-sha256")
    if hex_header:
        value = hex_header.strip().lower().removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return "sha256:" + value
        raise ApiProblem(400, "invalid-request", "X-Content-SHA256 must be 64 hex digits")
    repr_digest = request.headers.get("repr-digest") or request.headers.get("content-digest")
    if repr_digest:
        match = _REPR_DIGEST.search(repr_digest)
        if match:
            try:
                raw = base64.b64decode(match.group(1), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) == 32:
                return "sha256:" + raw.hex()
        raise ApiProblem(400, "invalid-request", "Repr-Digest must be sha-256=:<base64 of 32 bytes>:")
    raise ApiProblem(
        400,
        "invalid-request",
        "send the body's SHA-256: X-Content-SHA256: <hex> or Repr-Digest: sha-256=:<base64>: (RFC 9530)",
    )


async def _stream_to(request: Request[Any, Any, Any], path: Path, limit: int) -> tuple[str, int]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiProblem(413, "too-large", f"the body is {declared} bytes; the limit is {limit}")
    digest, size = hashlib.sha256(), 0
    async with await anyio.open_file(path, "wb") as out:
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiProblem(413, "too-large", f"the body passed the limit of {limit} bytes")
                digest.update(chunk)
                await out.write(chunk)
        except ClientException as exc:
            if exc.status_code == 413:
                raise ApiProblem(413, "too-large", f"the body passed the limit of {limit} bytes") from None
            raise
    return "sha256:" + digest.hexdigest(), size


@put(
    "/api/v1/tenants/{tenant:str}/artifacts/uploads",
    operation_id="uploadArtifact",
    tags=["models"],
    summary="Stream an artifact (a tar of a model folder, or one file) into a storage backend",
    description="The body is streamed to disk while hashed; send its SHA-256 in `X-Content-SHA256` (hex) or "
    "`Repr-Digest` (RFC 9530). Needs `artifact.upload`; then the governed action `artifact.upload` stores it "
    "and answers the artifact digest to register a model version with. 413 past the size limit "
    "(FALAJ_MAX_UPLOAD_BYTES).",
    request_max_body_size=None,
    status_code=201,
    responses=errors(),
)
async def upload_artifact(
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    storage_backend: Annotated[str, Parameter(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,119}$")],
    layout: FromQuery[Literal["tar", "file"]] = "tar",
    filename: Annotated[str | None, Parameter(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,119}$")] = None,
) -> Response[ActionResult]:
    from falaj.api.rest.app import run_action

    expected = _expected_digest(request)
    plane = request.app.state.plane
    await anyio.to_thread.run_sync(lambda: governed_read(request, tenant, "artifact", lambda s, t: t, verb="upload"))
    folder = plane.settings.uploads_dir / tenant
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True, mode=0o700))
    upload_id = new_id()
    staged = folder / f"{upload_id}.part"
    try:
        digest, size = await _stream_to(request, staged, MAX_UPLOAD)
        if size == 0:
            raise ApiProblem(422, "validation", "the body is empty")
        if digest != expected:
            raise ApiProblem(422, "validation", f"the body's SHA-256 is {digest}, not {expected} as sent")
        payload: dict[str, Any] = {
            "storage_backend": storage_backend,
            "upload_id": upload_id,
            "sha256": digest,
            "size": size,
            "layout": layout,
        }
        if filename is not None:
            payload["filename"] = filename
        return await anyio.to_thread.run_sync(
            lambda: run_action(request, "artifact.upload", tenant, payload, created=True)
        )
    finally:
        staged.unlink(missing_ok=True)


@put(
    "/api/v1/tenants/{tenant:str}/models/{model:str}/versions/{version:int}/signature",
    operation_id="uploadSignature",
    tags=["models"],
    summary="Attach a signature bundle made offline with a registered key",
    description="The body is a sigstore bundle (JSON, at most 1 MiB), streamed and size-checked; it must verify "
    "against the stored artifact with the key `key_id` (query). Runs `artifact.sign`.",
    request_max_body_size=None,
    status_code=200,
    responses=errors(),
)
async def upload_signature(
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    model: FromPath[str],
    version: Annotated[int, Parameter(ge=1, le=2**31 - 1)],
    key_id: Annotated[str, Parameter(min_length=1, max_length=71)],
) -> Response[ActionResult]:
    from falaj.api.rest.app import run_action

    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BUNDLE:
                raise ApiProblem(413, "too-large", f"a signature bundle is at most {MAX_BUNDLE} bytes")
            chunks.append(chunk)
    except ClientException as exc:
        if exc.status_code == 413:
            raise ApiProblem(413, "too-large", f"a signature bundle is at most {MAX_BUNDLE} bytes") from None
        raise
    try:
        bundle = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise ApiProblem(400, "invalid-request", f"the body is not JSON: {exc}") from None
    if not isinstance(bundle, dict):
        raise ApiProblem(422, "validation", "the body must be a sigstore bundle (a JSON object)")
    payload = {"model": model, "version": version, "key_id": key_id, "signature_bundle": bundle}
    return await anyio.to_thread.run_sync(lambda: run_action(request, "artifact.sign", tenant, payload))


@get(
    "/api/v1/tenants/{tenant:str}/models/{model:str}/versions/{version:int}/artifact",
    operation_id="getArtifactManifest",
    tags=["models"],
    summary="The files of a model version's artifact: path, SHA-256 and size of each",
    description="Needs `model_version.read`. Read from the storage backend; each file is the one the signature covers.",
    sync_to_thread=True,
    responses=errors(400, 401, 403, 404, 422, 502),
)
def artifact_manifest(
    request: Request[Any, Any, Any],
    tenant: FromPath[str],
    model: Annotated[str, Parameter(max_length=120)],
    version: Annotated[int, Parameter(ge=1, le=2**31 - 1)],
) -> dict[str, Any]:
    from falaj.core.artifacts import read_manifest
    from falaj.core.domain import Backend, Model, ModelVersion
    from falaj.core.errors import FalajError

    plane = request.app.state.plane

    def query(session: Any, t: Any) -> dict[str, Any]:
        row = session.execute(
            select(ModelVersion, Backend)
            .join(Model, Model.id == ModelVersion.model_id)
            .join(Backend, Backend.id == ModelVersion.storage_backend_id)
            .where(Model.tenant_id == t.id, Model.name == model, ModelVersion.version == version)
        ).first()
        if row is None:
            raise NotFoundError(f"model {model[:120]!r} has no version {version} in tenant {tenant!r}")
        mv, backend = row
        try:
            manifest = read_manifest(plane.backend_instance(t.slug, backend), t.slug, mv.artifact_digest)
        except FalajError as exc:
            raise ApiProblem(502, "backend", f"the artifact could not be read: {exc}") from None
        return {
            "model": model,
            "version": version,
            "artifact_digest": mv.artifact_digest,
            "storage_backend": backend.name,
            "files": [{"path": path, **entry} for path, entry in sorted(manifest["files"].items())],
        }

    return governed_read(request, tenant, "model_version", query)  # type: ignore[no-any-return]


@get(
    "/api/v1/tenants/{tenant:str}/training-runs/{run_id:str}/status",
    operation_id="getTrainingStatus",
    tags=["training-runs"],
    summary="Live status of a training run from its compute backend: state, metrics so far, outputs",
    description="Needs `training.read`. Asks the backend now (the run's row is updated by the governed "
    "actions that depend on it: registration and cancellation).",
    sync_to_thread=True,
    responses=errors(400, 401, 403, 404, 422, 502),
)
def training_status(
    request: Request[Any, Any, Any], tenant: FromPath[str], run_id: Annotated[str, Parameter(max_length=32)]
) -> dict[str, Any]:
    from falaj.core.domain import TrainingRun
    from falaj.core.errors import FalajError

    plane = request.app.state.plane

    def query(session: Any, t: Any) -> dict[str, Any]:
        run = session.get(TrainingRun, run_id)
        if run is None or run.tenant_id != t.id:
            raise NotFoundError(f"no training run {run_id[:32]!r} in tenant {tenant!r}")
        try:
            status = plane.training_status(session, t.slug, run)
        except FalajError as exc:
            raise ApiProblem(502, "backend", f"the compute backend did not answer: {exc}") from None
        return {
            "run_id": run.id,
            "name": run.name,
            "state": status.state,
            "metrics": dict(status.metrics),
            "message": status.message,
            "outputs": {k: v for k, v in status.outputs.items() if k != "artifact_path"},
        }

    return governed_read(request, tenant, "training", query)  # type: ignore[no-any-return]


def _report(request: Request[Any, Any, Any], tenant: str, report_id: str) -> ComplianceReportRecord:
    def query(session: Any, t: Any) -> ComplianceReportRecord:
        row = session.get(ComplianceReportRecord, report_id)
        if row is None or row.tenant_id != t.id:
            raise NotFoundError(f"no report {report_id[:40]!r} in tenant {tenant!r}")
        session.expunge(row)
        return row  # type: ignore[no-any-return]

    return governed_read(request, tenant, "report", query)  # type: ignore[no-any-return]


@get(
    "/api/v1/tenants/{tenant:str}/reports/{report_id:str}/content",
    operation_id="downloadReport",
    tags=["reports"],
    summary="Download an exported compliance report (JSON, CSV zip or PDF)",
    description="Needs `report.read`. `Repr-Digest` carries the SHA-256 the detached signature covers.",
    sync_to_thread=True,
    media_type="application/octet-stream",
    responses=errors(400, 401, 403, 404, 422),
)
def download_report(request: Request[Any, Any, Any], tenant: FromPath[str], report_id: FromPath[str]) -> File:
    from falaj.core.reports import EXTENSIONS, MEDIA_TYPES

    row = _report(request, tenant, report_id)
    path = Path(row.path)
    if not path.is_file():
        raise ApiProblem(404, "not-found", f"the file of report {report_id} is gone from {path.parent}")
    digest = base64.b64encode(bytes.fromhex(row.sha256)).decode("ascii")
    return File(
        path,
        filename=f"falaj-report-{tenant}-{row.id}{EXTENSIONS[row.format]}",
        media_type=MEDIA_TYPES[row.format],
        headers={"Repr-Digest": f"sha-256=:{digest}:"},
    )


@get(
    "/api/v1/tenants/{tenant:str}/reports/{report_id:str}/signature",
    operation_id="getReportSignature",
    tags=["reports"],
    summary="The detached Ed25519 signature of an exported report",
    description="Verify with `falaj report verify FILE --signature SIG --public-key KEY`.",
    sync_to_thread=True,
    responses=errors(400, 401, 403, 404, 422),
)
def report_signature(
    request: Request[Any, Any, Any], tenant: FromPath[str], report_id: FromPath[str]
) -> dict[str, Any]:
    return dict(_report(request, tenant, report_id).signature)


@get(
    "/api/v1/schemas/compliance-report.json",
    operation_id="complianceReportSchema",
    tags=["reports"],
    summary="The JSON Schema of the JSON compliance report",
    exclude_from_auth=True,
    security=[{}],
)
async def report_schema() -> dict[str, Any]:
    from falaj.core.reports import json_schema

    return json_schema()


INTEGRATION_ROUTES = [
    upload_artifact,
    upload_signature,
    artifact_manifest,
    training_status,
    download_report,
    report_signature,
    report_schema,
]
