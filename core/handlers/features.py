"""The feature store's governed actions: definitions, materialization, pushes and historical retrieval.

Stores are plugins; this module decides what they receive. Every write carries only rows the decision allowed
(residency checked by the pipeline, consent filtered here), every definition is versioned by its digest, and
materializations and retrievals emit OpenLineage run events. pyarrow and DuckDB are imported inside the
handlers that move data, so the kernel starts without the ``features`` extra.
"""

from __future__ import annotations

import bisect
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from falaj.core.actions import (
    ActionKind,
    EntityApply,
    FeatureRetrieve,
    FeatureServiceApply,
    FeatureViewApply,
    FeatureViewMaterialize,
    FeatureViewPush,
)
from falaj.core.datasets import file_digest
from falaj.core.domain import Backend, Entity, FeatureService, FeatureView, LineageEdge, Materialization
from falaj.core.errors import BackendError, CheckDenied, ConflictError, NotFoundError, ValidationError
from falaj.core.features import registry as reg
from falaj.core.handlers.base import HandlerContext, Outcome, add_lineage, after_commit, handles, typed
from falaj.core.policy.engine import strictest
from falaj.core.policy.facts import latest_dataset

#: Rows per online write during materialization; progress is checkpointed after each chunk.
CHUNK_ROWS = 20_000


def _chunk_rows() -> int:
    raw = os.environ.get("FALAJ_MATERIALIZE_CHUNK_ROWS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else CHUNK_ROWS


#: Largest historical result returned inline (bigger ones need a destination).
MAX_INLINE_RESULT_ROWS = 10_000


def _features_extra() -> None:
    try:
        import duckdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the extra is part of every supported install
        raise BackendError(
            f"the feature store needs the 'features' extra (pip install 'falaj[features]'): {exc}"
        ) from exc


def _current(ctx: HandlerContext, model: Any, name: str, digest: str, label: str) -> tuple[Any, Outcome | None]:
    """The definition in force under ``name``, and the answer to give when ``digest`` is its digest already
    (re-applying an identical definition changes nothing)."""
    current = reg.latest(ctx.session, model, ctx.tenant.id, name)
    if current is not None and current.digest == digest:
        return current, Outcome({label: name, "version": current.version, "changed": False})
    return current, None


def _store_version(ctx: HandlerContext, row: Any, current: Any) -> None:
    """Add the next version of a definition (the current view version, if any, is superseded); online reads in
    this process plan afresh once the action has committed."""
    if isinstance(current, FeatureView):
        current.status = "superseded"
    ctx.session.add(row)
    ctx.session.flush()
    after_commit(ctx, ctx.plane.features.invalidate)


# -- definitions ------------------------------------------------------------------------------------------
@handles(ActionKind.ENTITY_APPLY)
def apply_entity(ctx: HandlerContext) -> Outcome:
    """Define an entity; an identical definition is a no-op, a changed one the next version."""
    p: EntityApply = typed(ctx, EntityApply)
    definition = {
        "join_keys": [k.model_dump() for k in p.join_keys],
        "subject": p.subject,
        "description": p.description,
    }
    digest = reg.definition_digest(definition)
    current, same = _current(ctx, Entity, p.name, digest, "entity")
    if same is not None:
        return same
    row = Entity(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=current.version + 1 if current else 1,
        join_keys=definition["join_keys"],
        subject=p.subject,
        description=p.description,
        digest=digest,
        applied_by=ctx.principal.id,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return Outcome({"entity": p.name, "version": row.version, "changed": True})


@handles(ActionKind.FEATURE_VIEW_APPLY)
def apply_feature_view(ctx: HandlerContext) -> Outcome:
    """Define a batch view over a source dataset, or an on-demand view over other views; versioned."""
    p: FeatureViewApply = typed(ctx, FeatureViewApply)
    if p.outputs:
        return _apply_on_demand(ctx, p)
    _features_extra()
    from falaj.core.features import quality
    from falaj.core.features.sources import read_schema, source_path

    assert p.source_dataset is not None and p.offline_store is not None
    ds = latest_dataset(ctx.session, ctx.tenant.id, p.source_dataset)
    if ds is None:
        raise NotFoundError(f"no active dataset named {p.source_dataset!r}: register it first")
    entities = [reg.latest_entity(ctx.session, ctx.tenant.id, n) for n in p.entities]
    keys = [k for e in entities for k in e.join_keys]
    key_names = [k["name"] for k in keys]
    if len(set(key_names)) != len(key_names):
        raise ValidationError(f"the entities' join keys overlap: {key_names}")
    clash = {f.name for f in p.features} & ({*key_names, p.timestamp_field, p.created_timestamp_field or ""})
    if clash:
        raise ValidationError(f"feature names {sorted(clash)} are also join keys or timestamp fields")
    offline = ctx.backend(p.offline_store, "feature_store")
    reg.check_capability(ctx.plane, offline, "offline")
    online: Backend | None = None
    if p.online_store is not None:
        online = ctx.backend(p.online_store, "feature_store")
        reg.check_capability(ctx.plane, online, "online")
        if online.region != offline.region:
            raise ValidationError(
                f"a view's stores sit in one region: offline store {offline.name!r} is in {offline.region}, "
                f"online store {online.name!r} in {online.region}"
            )
    entity_snapshot = [
        {"name": e.name, "version": e.version, "join_keys": e.join_keys, "subject": e.subject} for e in entities
    ]
    subject_key = next((e.join_keys[0]["name"] for e in entities if e.subject), None)
    subject_column = ds.subject_column or subject_key
    if subject_key is not None and ds.subject_column is not None and ds.subject_column != subject_key:
        raise ValidationError(
            f"the source's subject column {ds.subject_column!r} must be the subject entity's key {subject_key!r}: "
            "consent and erasure must find the same person in both"
        )
    draft = FeatureView(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=0,
        kind="batch",
        entities=entity_snapshot,
        features=[f.model_dump() for f in p.features],
        ttl_seconds=p.ttl_seconds,
    )
    vdef = reg.view_def(draft, ctx.tenant.slug)
    try:
        expectations = quality.validate_expectations(vdef, p.expectations)
    except ValueError as exc:
        raise ValidationError(f"expectations: {exc}") from exc
    path = source_path(ds.uri, ctx.plane.settings.data_dir / ctx.tenant.slug, ds.digest)
    columns = _column_map(vdef, p.timestamp_field, p.created_timestamp_field)
    schema = read_schema(path)
    differences = quality.check_schema(vdef, schema, columns)
    if subject_column is not None and subject_column not in schema.names:
        differences.append(f"subject column {subject_column!r} is missing from the source")
    if differences:
        raise ValidationError(
            f"source dataset {ds.name} v{ds.version} does not fit the view: " + "; ".join(differences)
        )
    definition = {
        "kind": "batch",
        "entities": entity_snapshot,
        "features": draft.features,
        "source": ds.name,
        "timestamp_field": p.timestamp_field,
        "created_timestamp_field": p.created_timestamp_field,
        "subject_column": subject_column,
        "ttl_seconds": p.ttl_seconds,
        "offline_store": offline.id,
        "online_store": online.id if online else None,
        "expectations": [e.model_dump(mode="json") for e in expectations],
        "description": p.description,
        "owner": p.owner,
    }
    digest = reg.definition_digest(definition)
    current, same = _current(ctx, FeatureView, p.name, digest, "feature_view")
    if same is not None:
        return same
    row = FeatureView(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=_next_version(ctx, p.name),
        kind="batch",
        entities=entity_snapshot,
        features=draft.features,
        ttl_seconds=p.ttl_seconds,
        source_dataset_id=ds.id,
        timestamp_field=p.timestamp_field,
        created_timestamp_field=p.created_timestamp_field,
        subject_column=subject_column,
        offline_backend_id=offline.id,
        online_backend_id=online.id if online else None,
        expectations=definition["expectations"],
        classification=ds.classification,
        residency=[ds.residency],
        description=p.description,
        owner=p.owner,
        digest=digest,
        applied_by=ctx.principal.id,
    )
    _store_version(ctx, row, current)
    stored = reg.view_def(row, ctx.tenant.slug)
    for backend in (offline, online):
        if backend is None:
            continue
        try:
            ctx.plane.backend_instance(ctx.tenant.slug, backend).apply(stored)
        except Exception as exc:
            raise BackendError(f"feature store {backend.name!r} could not prepare the view: {exc}") from exc
    add_lineage(ctx, ("dataset", ds.id), ("feature_view", row.id), "feeds")
    return Outcome(
        {
            "feature_view": p.name,
            "version": row.version,
            "changed": True,
            "classification": row.classification,
            "residency": row.residency,
            "subject_column": subject_column,
        }
    )


def _next_version(ctx: HandlerContext, name: str) -> int:
    top = ctx.session.scalar(
        select(FeatureView.version)
        .where(FeatureView.tenant_id == ctx.tenant.id, FeatureView.name == name)
        .order_by(FeatureView.version.desc())
        .limit(1)
    )
    return (top or 0) + 1


def _apply_on_demand(ctx: HandlerContext, p: FeatureViewApply) -> Outcome:
    _features_extra()
    from falaj.core.features.transforms import validate_transform

    sources = [reg.latest_view(ctx.session, ctx.tenant.id, n) for n in p.sources]
    inputs: dict[str, str] = {}
    for src in sources:
        if src.kind != "batch":
            raise ValidationError(f"on-demand view sources must be batch views; {src.name!r} is {src.kind}")
        for f in src.features:
            if f["name"] in inputs:
                raise ValidationError(f"feature {f['name']!r} comes from two sources: name each once")
            inputs[f["name"]] = f["dtype"]
    for r in p.request_fields:
        if r.name in inputs:
            raise ValidationError(f"request field {r.name!r} is also a source feature")
        inputs[r.name] = r.dtype
    outputs = [o.model_dump() for o in p.outputs]
    try:
        validate_transform(inputs, outputs)
    except ValueError as exc:
        raise ValidationError(f"outputs: {exc}") from exc
    entities: list[dict[str, Any]] = []
    for src in sources:
        for e in src.entities:
            if e not in entities:
                entities.append(e)
    datasets = [d for s in sources for d in reg.source_datasets(ctx.session, s)]
    definition = {
        "kind": "on_demand",
        "sources": [{"view": s.name, "version": s.version} for s in sources],
        "request_fields": [r.model_dump() for r in p.request_fields],
        "outputs": outputs,
        "description": p.description,
        "owner": p.owner,
    }
    digest = reg.definition_digest(definition)
    current, same = _current(ctx, FeatureView, p.name, digest, "feature_view")
    if same is not None:
        return same
    row = FeatureView(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=_next_version(ctx, p.name),
        kind="on_demand",
        entities=entities,
        features=[{"name": o["name"], "dtype": o["dtype"]} for o in outputs],
        sources=definition["sources"],
        transform={"outputs": outputs, "request_fields": definition["request_fields"]},
        classification=strictest(ctx.plane.bundle, (d.classification for d in datasets)) if datasets else None,
        residency=sorted({d.residency for d in datasets}),
        description=p.description,
        owner=p.owner,
        digest=digest,
        applied_by=ctx.principal.id,
    )
    _store_version(ctx, row, current)
    for src in sources:
        add_lineage(ctx, ("feature_view", src.id), ("feature_view", row.id), "derives")
    return Outcome({"feature_view": p.name, "version": row.version, "changed": True, "kind": "on_demand"})


@handles(ActionKind.FEATURE_SERVICE_APPLY)
def apply_feature_service(ctx: HandlerContext) -> Outcome:
    """Name a group of features, pinned to the current view versions; versioned like views."""
    p: FeatureServiceApply = typed(ctx, FeatureServiceApply)
    selections = reg.parse_refs(ctx.session, ctx.tenant.id, p.features)
    names = [f for s in selections for f in s.features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"features {dupes} come from more than one view: a service holds each name once")
    items = [{"view": s.view.name, "version": s.view.version, "features": list(s.features)} for s in selections]
    digest = reg.definition_digest({"features": items, "description": p.description, "owner": p.owner})
    current, same = _current(ctx, FeatureService, p.name, digest, "feature_service")
    if same is not None:
        return same
    row = FeatureService(
        tenant_id=ctx.tenant.id,
        name=p.name,
        version=current.version + 1 if current else 1,
        features=items,
        description=p.description,
        owner=p.owner,
        digest=digest,
        applied_by=ctx.principal.id,
    )
    _store_version(ctx, row, current)
    return Outcome({"feature_service": p.name, "version": row.version, "changed": True, "features": items})


def _column_map(vdef: Any, timestamp_field: str, created_field: str | None) -> dict[str, str]:
    """View column -> source column."""
    out = {k: k for k in vdef.key_names} | {f: f for f in vdef.feature_names}
    out["event_ts"] = timestamp_field
    if created_field:
        out["created_ts"] = created_field
    return out


# -- materialization --------------------------------------------------------------------------------------
def _checkpoint_path(ctx: HandlerContext, row: FeatureView) -> Path:
    return ctx.plane.settings.home / "materializations" / ctx.tenant.slug / f"{row.name}__v{row.version}.json"


@handles(ActionKind.FEATURE_VIEW_MATERIALIZE)
def materialize(ctx: HandlerContext) -> Outcome:
    """Source -> offline store (checked against the view's schema and expectations) -> latest per key ->
    online store, in checkpointed chunks: a crashed materialization is resumed by the next one."""
    p: FeatureViewMaterialize = typed(ctx, FeatureViewMaterialize)
    _features_extra()
    row = reg.latest_view(ctx.session, ctx.tenant.id, p.name)
    if row.kind != "batch":
        raise ValidationError(f"{p.name!r} is an on-demand view: it is computed at read time, not materialized")
    # One materialization of a view at a time, across processes (a row lock on PostgreSQL; SQLite's writer lock
    # already serializes actions): two would share the checkpoint and race on the watermark.
    ctx.session.execute(select(FeatureView.id).where(FeatureView.id == row.id).with_for_update())
    emitter = ctx.plane.lineage
    namespace = f"falaj://{ctx.tenant.slug}"
    job = f"materialize.{row.name}"
    ds_name = _dataset_label(ctx, row)
    emitter.emit("START", run_id=ctx.operation_id, namespace=namespace, job=job, inputs=[ds_name])
    try:
        out = _materialize(ctx, p, row)
    except Exception as exc:
        emitter.emit("FAIL", run_id=ctx.operation_id, namespace=namespace, job=job, inputs=[ds_name], error=str(exc))
        raise
    outputs = [f"feature_view.{row.name}.v{row.version}"]
    after_commit(
        ctx,
        lambda: emitter.emit(
            "COMPLETE", run_id=ctx.operation_id, namespace=namespace, job=job, inputs=[ds_name], outputs=outputs
        ),
    )
    return out


def _dataset_label(ctx: HandlerContext, row: FeatureView) -> str:
    datasets = reg.source_datasets(ctx.session, row)
    return f"dataset.{datasets[0].name}.v{datasets[0].version}" if datasets else "dataset.unknown"


def _materialize(ctx: HandlerContext, p: FeatureViewMaterialize, row: FeatureView) -> Outcome:
    import pyarrow as pa

    from falaj.core.features import quality
    from falaj.core.features.arrow import conform, key_tuples
    from falaj.core.features.sources import read_table, source_path

    # The view reads its source dataset by name: the latest active version now, whose schema must still fit
    # (the decision judged that same version: registry.current_source).
    ds = reg.current_source(ctx.session, row)
    if ds is None:
        raise ConflictError(f"the source dataset of {row.name!r} is retired or gone: apply the view to a new source")
    if ds.id != row.source_dataset_id:
        seen = ctx.session.scalar(
            select(LineageEdge.id).where(
                LineageEdge.source_id == ds.id, LineageEdge.target_id == row.id, LineageEdge.relation == "feeds"
            )
        )
        if seen is None:
            add_lineage(ctx, ("dataset", ds.id), ("feature_view", row.id), "feeds")
    row.classification, row.residency = ds.classification, [ds.residency]
    vdef = reg.view_def(row, ctx.tenant.slug)
    offline = reg.store(ctx.plane, ctx.session, ctx.tenant.slug, row.offline_backend_id, "offline")
    online = (
        reg.store(ctx.plane, ctx.session, ctx.tenant.slug, row.online_backend_id, "online")
        if row.online_backend_id
        else None
    )
    now = datetime.now(UTC)
    end = _utc(p.end) or now
    if end > now + timedelta(minutes=5):
        raise ValidationError(
            f"the window's end {end.isoformat()} is in the future: the watermark would pass data not yet seen"
        )
    start = _utc(p.start) if p.start else (None if p.mode == "full" else _utc(row.watermark))
    if start is not None and start >= end:
        raise ValidationError(f"nothing to materialize: the window starts at {start.isoformat()}, after its end")
    # 1. the source, checked against the view
    path = source_path(ds.uri, ctx.plane.settings.data_dir / ctx.tenant.slug, None)
    # The file's digest (checked against the registered one) is computed while DuckDB reads it: hashlib and
    # DuckDB both work outside the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(file_digest, path)
        source = read_table(path)
        source_digest = hashing.result()
    if ds.digest is not None and source_digest != ds.digest:
        raise ValidationError(
            f"the dataset's file {path.name} changed since it was registered ({ds.digest}): "
            "register the new content as a new dataset version"
        )
    columns = _column_map(vdef, row.timestamp_field or "", row.created_timestamp_field)
    differences = quality.check_schema(vdef, source.schema, columns)
    if row.subject_column and row.subject_column not in source.column_names:
        differences.append(f"subject column {row.subject_column!r} is missing from the source")
    if differences:
        raise CheckDenied("source-schema", differences, "the source no longer matches the feature view")
    renamed = {v: source.column(s) for v, s in columns.items()}
    if row.subject_column:
        renamed["subject_id"] = source.column(row.subject_column).cast(pa.string())
    table = conform(vdef, pa.table(renamed))
    failures = quality.run_expectations(vdef, table, quality.validate_expectations(vdef, row.expectations), now)
    if failures:
        raise CheckDenied("data-quality", [f.message for f in failures], "the view's expectations")
    # 2. the offline store keeps the source's history (idempotent per source digest)
    try:
        offline.write_source(vdef, table, source_digest=source_digest)
    except Exception as exc:
        raise BackendError(f"offline store could not take the source: {exc}") from exc
    # 3. latest per key in the window -> online store, consent-filtered
    allowed: set[str] | None = None
    excluded = 0
    if reg.consent_scoped(ctx.plane, [ds]) and row.subject_column:
        subjects = {s for s in table.column("subject_id").to_pylist() if s is not None}
        allowed = reg.consented(ctx.session, ctx.tenant.id, p.purpose, now, subjects)
        excluded = len(subjects - allowed)
    written = 0
    resumed_from = 0
    rows_latest = 0
    latest = table
    if online is not None:
        checkpoint = _checkpoint_path(ctx, row)
        state = {
            "source_digest": source_digest,
            "start": _iso(start),
            "allowed": reg.definition_digest(sorted(allowed)) if allowed is not None else None,
        }
        last_key: tuple[Any, ...] | None = None
        if checkpoint.exists():
            try:
                saved = json.loads(checkpoint.read_text())
            except ValueError:
                saved = {}
            same = {k: saved.get(k) for k in state} == state
            # A run that named no end resumes the crashed one's window; one that named another end starts over.
            if same and (p.end is None or saved.get("end") == _iso(end)) and saved.get("end"):
                end = datetime.fromisoformat(saved["end"])
                if saved.get("last_key") is not None:
                    last_key = _decode_key(saved["last_key"])
                    resumed_from = int(saved.get("chunks_done", 0))
        state["end"] = _iso(end)
        latest = offline.latest(vdef, start=start, end=end, allowed_subjects=allowed)
        # Keys in a fixed order; a resumed run starts after the last key the crashed one wrote (by key, not by
        # position: rows pushed or erased meanwhile cannot shift what counts as done).
        latest = latest.sort_by([(k, "ascending") for k in vdef.key_names])
        rows_latest = latest.num_rows
        keys = key_tuples(latest, vdef.key_names)
        first = bisect.bisect_right(keys, last_key) if last_key is not None else 0
        chunk = _chunk_rows()
        chunks_done = resumed_from
        crash_after = os.environ.get("FALAJ_FAULT_MATERIALIZE_CRASH_AFTER_CHUNKS")  # fault injection (tests)
        for at in range(first, latest.num_rows, chunk):
            try:
                written += online.write(vdef, latest.slice(at, chunk))
            except Exception as exc:
                raise BackendError(f"online store write failed (rows {at} to {at + chunk}): {exc}") from exc
            chunks_done += 1
            end_row = min(at + chunk, latest.num_rows) - 1
            _save_json(checkpoint, {**state, "chunks_done": chunks_done, "last_key": _encode_key(keys[end_row])})
            if crash_after is not None and chunks_done >= int(crash_after) and end_row + 1 < latest.num_rows:
                os._exit(137)
        after_commit(ctx, lambda: checkpoint.unlink(missing_ok=True))
    # The drift reference: the values serving will see (the latest per key that went online), or the source's
    # rows when the view has no online store.
    # Drift against the previous materialization of this view (any version): its profile is the reference.
    previous = ctx.session.scalar(
        select(Materialization)
        .join(FeatureView, FeatureView.id == Materialization.feature_view_id)
        .where(
            FeatureView.tenant_id == ctx.tenant.id,
            FeatureView.name == row.name,
            Materialization.status == "succeeded",
        )
        .order_by(Materialization.created_at.desc())
        .limit(1)
    )
    reference = previous.profile if previous is not None and previous.profile else None
    profile = quality.profile(vdef, latest if online is not None else table, reference=reference)
    drift: dict[str, Any] = {}
    if reference is not None:
        try:
            drift = quality.drift(reference, profile)
        except (KeyError, ValueError, TypeError):  # a reference from a different view layout
            drift = {}
        profile = {**profile, "drift": {"reference": previous.id if previous else None, "features": drift}}
    record = Materialization(
        tenant_id=ctx.tenant.id,
        feature_view_id=row.id,
        mode=p.mode,
        status="succeeded",
        window_start=start,
        window_end=end,
        source_digest=source_digest,
        rows_read=table.num_rows,
        entities_written=written,
        excluded_subjects=excluded,
        profile=profile,
        requested_by=ctx.principal.id,
        started_at=now,
        finished_at=datetime.now(UTC),
    )
    ctx.session.add(record)
    if online is not None:
        row.watermark = end
    ctx.session.flush()
    return Outcome(
        {
            "feature_view": row.name,
            "version": row.version,
            "materialization": record.id,
            "mode": p.mode,
            "window": {"start": _iso(start), "end": _iso(end)},
            "rows_read": table.num_rows,
            "entities_in_window": rows_latest,
            "entities_written": written,
            "excluded_subjects": excluded,
            "resumed_from_chunk": resumed_from,
            "drift": {name: d.get("severity") for name, d in drift.items()},
        }
    )


def _encode_key(key: tuple[Any, ...]) -> list[Any]:
    return [{"ts": v.isoformat()} if isinstance(v, datetime) else v for v in key]


def _decode_key(raw: list[Any]) -> tuple[Any, ...]:
    return tuple(datetime.fromisoformat(v["ts"]) if isinstance(v, dict) else v for v in raw)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _save_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- pushes ----------------------------------------------------------------------------------------------
@handles(ActionKind.FEATURE_VIEW_PUSH)
def push(ctx: HandlerContext) -> Outcome:
    """Write pushed rows to the view's stores; a redelivered row (same event id) changes nothing."""
    p: FeatureViewPush = typed(ctx, FeatureViewPush)
    _features_extra()
    from falaj.core.features.push import prepare_rows

    row = reg.latest_view(ctx.session, ctx.tenant.id, p.name)
    if row.kind != "batch":
        raise ValidationError(f"{p.name!r} is an on-demand view: push to its source views")
    vdef = reg.view_def(row, ctx.tenant.slug)
    table, problems, _ = prepare_rows(vdef, row, p.rows)
    if problems:
        raise ValidationError(
            "; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else "")
        )
    datasets = reg.source_datasets(ctx.session, row)
    if reg.consent_scoped(ctx.plane, datasets):
        subjects = {s for s in table.column("subject_id").to_pylist() if s is not None}
        allowed = reg.consented(ctx.session, ctx.tenant.id, p.purpose, datetime.now(UTC), subjects)
        refused = sorted(subjects - allowed)
        if refused:
            raise CheckDenied(
                "consent",
                [f"{len(refused)} row subject(s) lack valid consent for {p.purpose!r}: their rows may not be stored"],
                "consent.toml: legal basis consent = filter",
            )
    if p.to == "online" and not row.online_backend_id:
        raise ValidationError(f"feature view {p.name!r} has no online store: push to 'offline' or 'both'")
    table, dropped = _drop_erased(ctx, table)
    result: dict[str, Any] = {
        "feature_view": row.name,
        "version": row.version,
        "rows": table.num_rows,
        "erased_rows_dropped": dropped,
    }
    if p.to in ("offline", "both"):
        offline = reg.store(ctx.plane, ctx.session, ctx.tenant.slug, row.offline_backend_id, "offline")
        try:
            pushed = offline.push(vdef, table)
        except Exception as exc:
            raise BackendError(f"offline store refused the rows: {exc}") from exc
        result.update(written=pushed.written, duplicates=pushed.duplicates)
    if p.to in ("online", "both") and row.online_backend_id:
        online = reg.store(ctx.plane, ctx.session, ctx.tenant.slug, row.online_backend_id, "online")
        try:
            result["online_updated"] = online.write(vdef, table)
        except Exception as exc:
            raise BackendError(f"online store refused the rows: {exc}") from exc
    return Outcome(result)


def _drop_erased(ctx: HandlerContext, table: Any) -> tuple[Any, int]:
    """Rows about subjects erased after the rows' event time are never written again (a redelivered message, a
    late replay): erasure is final for the data it covered. Data about such a subject from after the erasure
    (a new relationship) is written as usual, subject to consent."""
    import pyarrow as pa

    from falaj.core.datasets import subject_hash
    from falaj.core.domain import ErasureRequest

    subjects = {s for s in table.column("subject_id").to_pylist() if s is not None}
    if not subjects:
        return table, 0
    hashes = {subject_hash(s): s for s in subjects}
    erased: dict[str, datetime] = {}
    for hashed, completed in ctx.session.execute(
        select(ErasureRequest.subject_id, ErasureRequest.completed_at).where(
            ErasureRequest.tenant_id == ctx.tenant.id,
            ErasureRequest.status == "completed",
            ErasureRequest.subject_id.in_(list(hashes)),
        )
    ):
        subject = hashes[hashed]
        if completed is not None and (subject not in erased or completed > erased[subject]):
            erased[subject] = _utc(completed) or completed
    if not erased:
        return table, 0
    keep = [
        not (s in erased and ts <= erased[s])
        for s, ts in zip(table.column("subject_id").to_pylist(), table.column("event_ts").to_pylist(), strict=True)
    ]
    kept = table.filter(pa.array(keep))
    return kept, table.num_rows - kept.num_rows


# -- historical retrieval ----------------------------------------------------------------------------------
@handles(ActionKind.FEATURE_RETRIEVE)
def retrieve(ctx: HandlerContext) -> Outcome:
    """Point-in-time-correct training data for a purpose, with only consented subjects."""
    p: FeatureRetrieve = typed(ctx, FeatureRetrieve)
    _features_extra()
    from falaj.core.features.retrieval import historical

    emitter = ctx.plane.lineage
    namespace = f"falaj://{ctx.tenant.slug}"
    job = f"retrieve.{p.feature_service or 'features'}"
    emitter.emit("START", run_id=ctx.operation_id, namespace=namespace, job=job)
    try:
        result, inputs = historical(ctx, p)
    except Exception as exc:
        emitter.emit("FAIL", run_id=ctx.operation_id, namespace=namespace, job=job, error=str(exc))
        raise
    outputs = [f"export.{p.destination}"] if p.destination else []
    after_commit(
        ctx,
        lambda: emitter.emit(
            "COMPLETE", run_id=ctx.operation_id, namespace=namespace, job=job, inputs=inputs, outputs=outputs
        ),
    )
    return Outcome(result)
