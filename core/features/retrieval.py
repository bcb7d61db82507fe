"""Historical (point-in-time-correct) retrieval for a purpose, shared by ``feature.retrieve`` and training.

The offline stores do the joins; this module decides what they see: which features (a service's pinned view
versions, or references), which entity rows (subject entities without valid consent for the purpose are
left out and counted) and which subjects' feature rows may match. On-demand views are computed here, by the
same transformation code the online path runs.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from falaj.core.actions import FeatureRetrieve
from falaj.core.domain import Dataset
from falaj.core.errors import BackendError, ValidationError
from falaj.core.features import registry as reg
from falaj.core.features.arrow import to_utc
from falaj.core.handlers.base import HandlerContext
from falaj.core.policy.facts import latest_dataset


def selections_for(ctx: HandlerContext, feature_service: str | None, features: list[str]) -> list[reg.Selection]:
    if feature_service:
        service = reg.latest_service(ctx.session, ctx.tenant.id, feature_service)
        return reg.service_selection(ctx.session, ctx.tenant.id, service)
    return reg.parse_refs(ctx.session, ctx.tenant.id, features)


def entity_table(
    ctx: HandlerContext, rows: list[dict[str, Any]] | None, dataset: str | None
) -> tuple[pa.Table, Dataset | None]:
    """The entity rows, and the dataset they come from (it is governed like any source: the decision judged its
    residency and consent, and ``join`` filters its rows by its own subject column)."""
    if rows is not None:
        if not rows:
            raise ValidationError("entity_rows is empty")
        try:
            return pa.Table.from_pylist(rows), None
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ValidationError(f"entity_rows: the rows' values do not form columns of one type each: {exc}") from exc
    from falaj.core.features.sources import read_table, source_path

    assert dataset is not None
    ds = latest_dataset(ctx.session, ctx.tenant.id, dataset)
    if ds is None:
        raise ValidationError(f"no active dataset named {dataset!r} to take entity rows from")
    return read_table(source_path(ds.uri, ctx.plane.settings.data_dir / ctx.tenant.slug, ds.digest)), ds


def join(
    ctx: HandlerContext,
    selections: list[reg.Selection],
    entities: pa.Table,
    *,
    purpose: str,
    timestamp_column: str,
    full_feature_names: bool,
    entity_source: Dataset | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The point-in-time join, consent-filtered: the result table and what was done (counts, views)."""
    if timestamp_column not in entities.column_names:
        raise ValidationError(f"the entity rows have no timestamp column {timestamp_column!r}")
    try:
        entities = entities.set_column(
            entities.column_names.index(timestamp_column), timestamp_column, to_utc(entities.column(timestamp_column))
        )
    except (TypeError, pa.ArrowInvalid) as exc:
        raise ValidationError(f"entity timestamp column {timestamp_column!r}: {exc}") from exc
    # Which views' data flows, through on-demand views too.
    stored: list[reg.Selection] = []
    on_demand: list[reg.Selection] = []
    for sel in selections:
        (on_demand if sel.view.kind == "on_demand" else stored).append(sel)
    internal: list[reg.Selection] = []
    for sel in on_demand:
        for src in sel.view.sources:
            parent = reg.view_version(ctx.session, ctx.tenant.id, src["view"], src["version"])
            internal.append(reg.Selection(parent, tuple(f["name"] for f in parent.features)))
    datasets = [d for s in [*stored, *internal] for d in reg.source_datasets(ctx.session, s.view)]
    allowed: set[str] | None = None
    excluded_rows = 0
    if entity_source is not None and reg.consent_scoped(ctx.plane, [entity_source]):
        # The entity rows are personal data of their own: only consenting subjects' rows are used.
        column = entity_source.subject_column
        if column is None or column not in entities.column_names:
            raise ValidationError(
                f"entity dataset {entity_source.name!r} rests on consent but names no subject column in its rows"
            )
        allowed = reg.consented(ctx.session, ctx.tenant.id, purpose, datetime.now(UTC))
        keep = pc.fill_null(
            pc.is_in(pc.cast(entities.column(column), pa.string()), value_set=pa.array(sorted(allowed), pa.string())),
            False,
        )
        excluded_rows += entities.num_rows - (pc.sum(keep).as_py() or 0)
        entities = entities.filter(keep)
    if reg.consent_scoped(ctx.plane, datasets):
        allowed = (
            allowed if allowed is not None else reg.consented(ctx.session, ctx.tenant.id, purpose, datetime.now(UTC))
        )
        for sel in [*stored, *internal]:
            key = reg.subject_key(sel.view)
            if key is not None and key in entities.column_names:
                keep = pc.is_in(
                    pc.cast(entities.column(key), pa.string()), value_set=pa.array(sorted(allowed), pa.string())
                )
                keep = pc.fill_null(keep, False)
                excluded_rows += entities.num_rows - pc.sum(keep).as_py() if entities.num_rows else 0
                entities = entities.filter(keep)
    names: list[str] = []
    columns: list[pa.ChunkedArray] = []

    def add(name: str, column: Any) -> None:
        if name in names or name in entities.column_names:
            raise ValidationError(f"two columns would be called {name!r}: use full_feature_names")
        names.append(name)
        columns.append(column)

    stored_cols = _run_stores(ctx, stored, entities, timestamp_column, allowed, full=full_feature_names)
    for sel in stored:
        for f in sel.features:
            add(f"{sel.view.name}__{f}" if full_feature_names else f, stored_cols[(sel.view.name, f)])
    if on_demand:
        from falaj.core.features.transforms import validate_transform

        source_cols = _run_stores(ctx, internal, entities, timestamp_column, allowed, full=True)
        for sel in on_demand:
            inputs: dict[str, Any] = {}
            dtypes: dict[str, str] = {}
            for src in sel.view.sources:
                parent = reg.view_version(ctx.session, ctx.tenant.id, src["view"], src["version"])
                for f in parent.features:
                    inputs[f["name"]] = source_cols[(parent.name, f["name"])]
                    dtypes[f["name"]] = f["dtype"]
            for field in sel.view.transform.get("request_fields", []):
                if field["name"] not in entities.column_names:
                    raise ValidationError(
                        f"on-demand view {sel.view.name!r} needs request field {field['name']!r} in the entity rows"
                    )
                inputs[field["name"]] = entities.column(field["name"])
                dtypes[field["name"]] = field["dtype"]
            transform = validate_transform(dtypes, sel.view.transform["outputs"])
            out = transform.apply(inputs)
            for f in sel.features:
                add(f"{sel.view.name}__{f}" if full_feature_names else f, out.column(f))
    result = entities
    for name, column in zip(names, columns, strict=True):
        result = result.append_column(name, column)
    subject_columns = sorted(
        {c for c in [entity_source.subject_column if entity_source else None] if c}
        | {k for sel in [*stored, *internal] if (k := reg.subject_key(sel.view))}
    )
    info = {
        "subject_columns": [c for c in subject_columns if c in result.column_names],
        "rows": result.num_rows,
        "excluded_rows": excluded_rows,
        "consent_filtered": allowed is not None,
        "views": [f"{s.view.name} v{s.view.version}" for s in selections],
    }
    return result, info


def _run_stores(
    ctx: HandlerContext,
    selections: list[reg.Selection],
    entities: pa.Table,
    timestamp_column: str,
    allowed: set[str] | None,
    *,
    full: bool,
) -> dict[tuple[str, str], Any]:
    """Each offline store joins its views; answers (view, feature) -> column, rows in entity order."""
    by_store: dict[str, list[reg.Selection]] = defaultdict(list)
    for sel in selections:
        if sel.view.offline_backend_id is None:
            raise ValidationError(f"feature view {sel.view.name!r} has no offline store")
        by_store[sel.view.offline_backend_id].append(sel)
    out: dict[tuple[str, str], Any] = {}
    for backend_id, sels in by_store.items():
        store = reg.store(ctx.plane, ctx.session, ctx.tenant.slug, backend_id, "offline")
        requests = [(reg.view_def(s.view, ctx.tenant.slug), list(s.features)) for s in sels]
        for vdef, _ in requests:
            missing = [k for k in vdef.key_names if k not in entities.column_names]
            if missing:
                raise ValidationError(f"the entity rows lack join keys {missing} of feature view {vdef.name!r}")
        try:
            table = store.historical(
                requests,
                entities,
                timestamp_column=timestamp_column,
                allowed_subjects=allowed,
                full_feature_names=True,
            )
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        except Exception as exc:
            raise BackendError(f"offline store could not join: {exc}") from exc
        if table.num_rows != entities.num_rows:
            raise BackendError(
                f"offline store answered {table.num_rows} rows for {entities.num_rows} entity rows: rows were lost"
            )
        for sel in sels:
            for f in sel.features:
                out[(sel.view.name, f)] = table.column(f"{sel.view.name}__{f}")
    return out


def historical(ctx: HandlerContext, p: FeatureRetrieve) -> tuple[dict[str, Any], list[str]]:
    selections = selections_for(ctx, p.feature_service, p.features)
    entities, entity_source = entity_table(ctx, p.entity_rows, p.entity_dataset)
    table, info = join(
        ctx,
        selections,
        entities,
        purpose=p.purpose,
        timestamp_column=p.timestamp_column,
        full_feature_names=p.full_feature_names,
        entity_source=entity_source,
    )
    result: dict[str, Any] = {**info, "purpose": p.purpose, "columns": table.column_names}
    if p.destination:
        folder = ctx.export_folder(p.destination)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "features.parquet"
        write_parquet(table, path)
        write_subjects_sidecar(path, info["subject_columns"])
        result["path"] = str(path)
    elif table.num_rows > 10_000:
        raise ValidationError(f"{table.num_rows} rows are too many to return inline: name a destination")
    else:
        result["data"] = _jsonable(table)
    inputs = [f"feature_view.{s.view.name}.v{s.view.version}" for s in selections]
    return result, inputs


def write_parquet(table: pa.Table, path: Path) -> None:
    """Atomically; dictionary encoding only for strings (keys, categories), fast zstd."""
    tmp = path.with_suffix(".tmp")
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=strings)
    tmp.replace(path)


def _jsonable(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, datetime):
                row[k] = v.isoformat()
            elif isinstance(v, float) and v != v:  # NaN is not JSON
                row[k] = None
    return rows


def write_subjects_sidecar(path: Path, columns: list[str]) -> None:
    """Beside a file of feature rows, which of its columns name data subjects: erasure reads it."""
    import json

    path.with_name(path.name + ".subjects.json").write_text(json.dumps({"subject_columns": columns}))


def erase_from_files(root: Path, pattern: str, subject_id: str) -> list[dict[str, Any]]:
    """Remove ``subject_id``'s rows from every feature file under ``root`` matching ``pattern`` that has a
    subject sidecar (CSV training views, Parquet exports); returns what was removed where."""
    import json

    from falaj.core.datasets import erase_subject

    out: list[dict[str, Any]] = []
    for sidecar in sorted(root.glob(pattern + ".subjects.json")):
        data = sidecar.with_name(sidecar.name.removesuffix(".subjects.json"))
        if not data.is_file():
            continue
        columns = json.loads(sidecar.read_text()).get("subject_columns", [])
        removed = 0
        if data.suffix == ".csv":
            for column in columns:
                _, n = erase_subject(data.as_uri(), column, subject_id, root)
                removed += n
        elif data.suffix == ".parquet" and columns:
            table = pq.read_table(data)
            keep = pa.array([True] * table.num_rows)
            for column in columns:
                if column in table.column_names:
                    hit = pc.fill_null(pc.equal(pc.cast(table.column(column), pa.string()), subject_id), False)
                    keep = pc.and_(keep, pc.invert(hit))
            kept = table.filter(keep)
            removed = table.num_rows - kept.num_rows
            if removed:
                write_parquet(kept, data)
        if removed:
            out.append({"file": str(data.relative_to(root)), "rows_removed": removed})
    return out
