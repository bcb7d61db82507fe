"""``falaj features``: define, materialize, push, read and stream features; every step a governed action."""

from __future__ import annotations

import json
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import click

from falaj.api.cli.main import _plane, _print_result, _token, cli, console, tenant_option, token_option


@cli.group()
def features() -> None:
    """The feature store: entities, views, services, materialization, online and historical reads, streams."""


def _execute(kind: str, tenant: str, token: str | None, payload: dict[str, Any], as_json: bool) -> Any:
    from falaj.core.actions import Action

    plane = _plane()
    try:
        result = plane.execute(Action(kind=kind, tenant=tenant, principal=_token(token), payload=payload))
    finally:
        plane.close()
    _print_result(result, as_json)
    if not result.ok:
        sys.exit(1)
    return result


def _load_definitions(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from exc
    if not isinstance(data, dict) or not set(data) <= {"entities", "feature_views", "feature_services"}:
        raise click.BadParameter(
            "a definitions file holds lists under entities, feature_views and feature_services", param_hint="FILE"
        )
    return data


@features.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@tenant_option
@token_option
def apply(file: Path, tenant: str, token: str | None) -> None:
    """Apply a definitions file (JSON or TOML): entities, then feature views, then feature services.

    Each definition is its own governed action; an identical definition changes nothing, a changed one becomes
    the next version. Stops at the first refusal, saying why.
    """
    from falaj.core.actions import Action

    data = _load_definitions(file)
    plane = _plane()
    credential = _token(token)
    try:
        for key, kind in (
            ("entities", "entity.apply"),
            ("feature_views", "feature_view.apply"),
            ("feature_services", "feature_service.apply"),
        ):
            for item in data.get(key, []):
                result = plane.execute(Action(kind=kind, tenant=tenant, principal=credential, payload=item))
                name = item.get("name", "?") if isinstance(item, dict) else "?"
                if not result.ok:
                    console.print(f"[red]{result.outcome}[/] {kind} {name}: {result.message()}")
                    sys.exit(1)
                version = result.data.get("version")
                state = "changed" if result.data.get("changed") else "unchanged"
                console.print(f"[green]{kind}[/] {name} v{version} ({state})")
    finally:
        plane.close()


@features.command("materialize")
@click.argument("view")
@tenant_option
@token_option
@click.option("--full", is_flag=True, help="From the beginning, not from the view's watermark.")
@click.option("--start", default=None, help="Window start (ISO time, UTC if naive).")
@click.option("--end", default=None, help="Window end, exclusive (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def materialize(
    view: str, tenant: str, token: str | None, full: bool, start: str | None, end: str | None, as_json: bool
) -> None:
    """Materialize VIEW into its online store (checked against its schema and expectations first)."""
    payload: dict[str, Any] = {"name": view, "mode": "full" if full else "incremental"}
    if start:
        payload["start"] = start
    if end:
        payload["end"] = end
    _execute("feature_view.materialize", tenant, token, payload, as_json)


@features.command("push")
@click.argument("view")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@tenant_option
@token_option
@click.option("--to", type=click.Choice(["online", "offline", "both"]), default="both", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def push(view: str, file: Path, tenant: str, token: str | None, to: str, as_json: bool) -> None:
    """Push rows from FILE (JSON lines, each with an event_id) into VIEW."""
    rows = []
    for n, line in enumerate(file.read_text("utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"line {n} is not JSON: {exc}", param_hint="FILE") from exc
    if not rows:
        raise click.BadParameter("no rows in the file", param_hint="FILE")
    _execute("feature_view.push", tenant, token, {"name": view, "rows": rows, "to": to}, as_json)


@features.command("online")
@tenant_option
@token_option
@click.option("--service", "feature_service", default=None, help="Feature service to read.")
@click.option("--feature", "features_", multiple=True, help="view:feature (repeatable), instead of a service.")
@click.option("--entities", "entities_text", required=True, help="JSON list of entity rows, or @FILE.")
@click.option("--purpose", default="feature-serving", show_default=True)
def online(
    tenant: str,
    token: str | None,
    feature_service: str | None,
    features_: tuple[str, ...],
    entities_text: str,
    purpose: str,
) -> None:
    """Read the latest features for entity rows, with per-view status and freshness."""
    from falaj.core.errors import FalajError, ReadDenied

    text = Path(entities_text[1:]).read_text("utf-8") if entities_text.startswith("@") else entities_text
    try:
        entities = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--entities") from exc
    if not isinstance(entities, list):
        raise click.BadParameter("a JSON list of objects", param_hint="--entities")
    plane = _plane()
    try:
        answer = plane.features.read(
            _token(token),
            tenant,
            entities=entities,
            purpose=purpose,
            features=list(features_),
            feature_service=feature_service,
        )
    except ReadDenied as exc:
        raise click.ClickException(f"denied ({exc.check}): {exc.reason}") from exc
    except FalajError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        plane.close()
    console.print_json(json.dumps(answer, default=str))


@features.command("historical")
@tenant_option
@token_option
@click.option("--service", "feature_service", default=None, help="Feature service to join.")
@click.option("--feature", "features_", multiple=True, help="view:feature (repeatable), instead of a service.")
@click.option("--entity-dataset", default=None, help="Registered dataset holding the entity rows.")
@click.option("--entities", "entities_text", default=None, help="JSON list of entity rows, or @FILE.")
@click.option("--timestamp-column", default="event_timestamp", show_default=True)
@click.option("--purpose", required=True, help="What the data is for (consent is checked for it).")
@click.option("--out", "destination", default=None, help="Export folder name (the result is written as Parquet).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def historical(
    tenant: str,
    token: str | None,
    feature_service: str | None,
    features_: tuple[str, ...],
    entity_dataset: str | None,
    entities_text: str | None,
    timestamp_column: str,
    purpose: str,
    destination: str | None,
    as_json: bool,
) -> None:
    """Point-in-time-correct training data for a purpose (only consented subjects)."""
    payload: dict[str, Any] = {"purpose": purpose, "timestamp_column": timestamp_column}
    if feature_service:
        payload["feature_service"] = feature_service
    if features_:
        payload["features"] = list(features_)
    if entity_dataset:
        payload["entity_dataset"] = entity_dataset
    if entities_text:
        text = Path(entities_text[1:]).read_text("utf-8") if entities_text.startswith("@") else entities_text
        try:
            payload["entity_rows"] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--entities") from exc
    if destination:
        payload["destination"] = destination
    _execute("feature.retrieve", tenant, token, payload, as_json)


@features.command("stream")
@click.argument("view")
@tenant_option
@token_option
@click.option("--source", "source_backend", required=True, help="stream_source backend (e.g. nats-jetstream).")
@click.option("--stream", "stream_name", required=True, help="Stream name at the source.")
@click.option("--subject", required=True, help="Subject (filter) to consume.")
@click.option("--durable", required=True, help="Durable consumer name: a restart resumes where it stopped.")
@click.option("--dead-letter", "dead_letter", required=True, help="Subject for messages that can never be stored.")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--max-deliver", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--purpose", default="feature-serving", show_default=True)
def stream(
    view: str,
    tenant: str,
    token: str | None,
    source_backend: str,
    stream_name: str,
    subject: str,
    durable: str,
    dead_letter: str,
    batch: int,
    max_deliver: int,
    purpose: str,
) -> None:
    """Consume a stream into VIEW until interrupted (SIGINT/SIGTERM): at least once, exactly once in effect."""
    from falaj.core.errors import FalajError
    from falaj.core.features.stream import run_stream

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    plane = _plane()
    subscription = {
        "name": durable,
        "stream": stream_name,
        "subject": subject,
        "dead_letter_subject": dead_letter,
        "batch": batch,
        "max_deliver": max_deliver,
    }
    console.print(f"consuming {subject} from {stream_name} into {view} (durable {durable}); Ctrl-C stops")
    try:
        ingestor = run_stream(plane, _token(token), tenant, view, source_backend, subscription, stop, purpose)
    except FalajError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        plane.close()
    console.print(f"stopped: {ingestor.stats}")


@features.command("lineage")
@tenant_option
@token_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
def lineage(tenant: str, token: str | None, limit: int) -> None:
    """The tenant's latest OpenLineage run events (materializations, retrievals): needs `feature_view.read`."""
    from falaj.core.errors import ReadDenied

    plane = _plane()
    namespace = f"falaj://{tenant}"
    try:
        events = plane.read(
            _token(token),
            tenant,
            "feature_view",
            lambda _s, _t: [e for e in plane.lineage.events() if e.get("job", {}).get("namespace") == namespace],
        )[-limit:]
    except ReadDenied as exc:
        raise click.ClickException(f"denied ({exc.check}): {exc.reason}") from exc
    finally:
        plane.close()
    for e in events:
        job = e.get("job", {})
        console.print(
            f"{e.get('eventTime', '')}  {e.get('eventType', ''):8}  {job.get('namespace', '')}  {job.get('name', '')}"
        )
