"""``falaj``: set up an installation, run governed actions, verify and export the audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from falaj.core.config import Settings
from falaj.core.errors import FalajError

if TYPE_CHECKING:
    from falaj.core.actions import TokenCredential

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _plane(settings: Settings | None = None) -> Any:
    from falaj.core.pipeline import ControlPlane

    try:
        return ControlPlane.open(settings or _settings())
    except FalajError as exc:
        raise click.ClickException(str(exc)) from exc


def _token(token: str | None) -> TokenCredential:
    from falaj.core.actions import TokenCredential

    if not token:
        raise click.UsageError("an API token is needed: pass --token or set FALAJ_TOKEN")
    return TokenCredential(token)


token_option = click.option("--token", envvar="FALAJ_TOKEN", help="API token (or FALAJ_TOKEN).", show_envvar=True)
tenant_option = click.option("--tenant", envvar="FALAJ_TENANT", required=True, help="Tenant slug (or FALAJ_TENANT).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="falaj")
def cli() -> None:
    """Falaj: the governance-first control plane for the machine-learning lifecycle.

    State lives under FALAJ_HOME (default ./.falaj); FALAJ_DATABASE_URL selects PostgreSQL instead of
    the embedded SQLite file.
    """


@cli.command()
@click.option("--tenant", default="operator", show_default=True, help="Slug of the operator tenant.")
@click.option("--display-name", default="Operator", show_default=True, help="Display name of the tenant.")
@click.option("--admin", default="admin", show_default=True, help="Name of the first admin principal.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(tenant: str, display_name: str, admin: str, as_json: bool) -> None:
    """Create the database, run migrations, create keys, the first tenant and its admin.

    Prints the admin's API token once: store it in a secret manager.
    """
    from falaj.core.bootstrap import initialise

    settings = _settings()
    try:
        boot = initialise(settings, tenant=tenant, display_name=display_name, admin=admin)
    except FalajError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tenant": boot.tenant,
                    "admin": boot.admin,
                    "token": boot.token,
                    "audit_key_id": boot.audit_key_id,
                    "home": str(settings.home),
                }
            )
        )
        return
    console.print(f"[green]Initialised[/] {settings.home} (database {_redact(settings.database_url)})")
    console.print(f"Operator tenant [bold]{boot.tenant}[/], admin [bold]{boot.admin}[/]")
    console.print(f"Audit signing key {boot.audit_key_id}")
    console.print("Admin API token (shown once, store it now):")
    click.echo(boot.token)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List every plugin: name, source, version, what it provides and its state."""
    from falaj.core.plugin import create_plugin_manager

    registry = create_plugin_manager()
    rows = sorted(registry.plugins.values(), key=lambda p: (p.source != "builtin", p.name))
    if as_json:
        click.echo(json.dumps([p.__dict__ for p in rows], indent=2))
        return
    table = Table(title="Falaj plugins")
    for column in ("name", "source", "version", "provides", "state"):
        table.add_column(column)
    for p in rows:
        state = "[green]active[/]" if p.state == "active" else f"[red]failed[/]: {p.error}"
        table.add_row(p.name, p.source, p.version, ", ".join(p.provides) or "-", state)
    console.print(table)


@cli.command()
def actions() -> None:
    """List the action kinds and the payload fields each one takes."""
    from falaj.core.actions import PAYLOADS, ActionKind

    table = Table(title="Action kinds")
    table.add_column("kind")
    table.add_column("payload fields")
    for kind in ActionKind:
        fields = PAYLOADS[kind].model_fields
        table.add_row(
            kind.value,
            ", ".join((f.alias or name) + ("" if f.is_required() else "?") for name, f in fields.items()),
        )
    console.print(table)


@cli.command("do")
@click.argument("kind")
@tenant_option
@token_option
@click.option("--payload", "payload_text", default="{}", help="JSON object, or @FILE to read it from a file.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def do(kind: str, tenant: str, token: str | None, payload_text: str, as_json: bool) -> None:
    """Run one governed action, e.g. `falaj do dataset.register --tenant acme --payload @ds.json`."""
    from falaj.core.actions import Action

    payload = _read_payload(payload_text)
    plane = _plane()
    try:
        result = plane.execute(Action(kind=kind, tenant=tenant, principal=_token(token), payload=payload))
    finally:
        plane.close()
    _print_result(result, as_json)
    if result.secret:
        click.echo(result.secret)
    if not result.ok:
        sys.exit(1)


@cli.group()
def policy() -> None:
    """Inspect the policy bundle and explain decisions."""


@policy.command("explain")
@click.argument("kind")
@tenant_option
@token_option
@click.option("--payload", "payload_text", default="{}", help="JSON object, or @FILE.")
def policy_explain(kind: str, tenant: str, token: str | None, payload_text: str) -> None:
    """Dry-run an action: print each check's outcome and the rule that decided. Writes nothing."""
    from falaj.core.actions import Action

    plane = _plane()
    try:
        decision = plane.explain(
            Action(kind=kind, tenant=tenant, principal=_token(token), payload=_read_payload(payload_text))
        )
    finally:
        plane.close()
    _print_decision(decision)
    if not decision.allowed:
        sys.exit(1)


@policy.command("test")
@click.option(
    "--cases",
    "cases_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of case files (default: tests/ of the policy bundle).",
)
@click.option("--verbose", "-v", is_flag=True, help="Print every case, not only failures.")
def policy_test(cases_dir: Path | None, verbose: bool) -> None:
    """Run the policy case files against the bundle and end with `N passed, M failed`.

    Uses FALAJ_POLICY_DIR when set, else the bundle shipped with Falaj; needs no database.
    """
    from falaj.core.policy import PolicyError, load_bundle
    from falaj.core.policy.bundle import default_policy_dir
    from falaj.core.policy.testing import run_all

    settings = _settings()
    folder = settings.policy_dir or default_policy_dir()
    try:
        bundle = load_bundle(folder)
        results = run_all(bundle, cases_dir or folder / "tests")
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    for r in results:
        if verbose or not r.passed:
            mark = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
            console.print(f"{mark} {r.file}: {r.name}" + ("" if r.passed else f" — {r.detail}"), highlight=False)
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    click.echo(f"{passed} passed, {failed} failed")
    if failed or not results:
        sys.exit(1)


@policy.command("show")
def policy_show() -> None:
    """Print the bundle in force: digest, version, rule sets, regions, purposes, approval rules."""
    plane = _plane()
    try:
        plane.sync_bundle(force=True)
        b = plane.bundle
    finally:
        plane.close()
    console.print(f"bundle {b.manifest.get('bundle', {}).get('name', '?')} {b.version}  digest {b.digest}")
    console.print(f"source: {b.source}")
    console.print("rule sets: " + ", ".join(sorted(b.rulesets)))
    console.print("UAE regions: " + ", ".join(sorted(r for r, v in b.regions.items() if v.country == "AE")))
    console.print("purposes: " + ", ".join(sorted(b.purposes)))
    console.print("approvals: " + ", ".join(f"{e}={r.quorum}" for e, r in sorted(b.approvals.items())))


@cli.group()
def audit() -> None:
    """Verify and export the tamper-evident audit log."""


@audit.command("verify")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Verify an export folder instead of the live database.",
)
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With --export: the audit public key you trust (default: this installation's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(export_dir: Path | None, public_key: Path | None, as_json: bool) -> None:
    """Check every event's hash and link, the chain head and every signed checkpoint.

    Exits 1 and names the first bad sequence number if anything was edited, deleted, inserted, reordered
    or truncated.
    """
    from falaj.core.audit.verifier import verify_export

    if export_dir is not None:
        key_path = public_key or _settings().keys_dir / "audit-ed25519.pub.pem"
        if not key_path.exists():
            raise click.UsageError("pass --public-key: the audit public key you trust")
        report = verify_export(export_dir, key_path.read_bytes())
    else:
        # Only the audit log is needed: no plugins, no policy engine, so the command starts fast.
        from falaj.core.audit import AuditLog
        from falaj.core.db import create_db_engine

        settings = _settings()
        # Verification needs only the public keys, never the (encrypted) private key.
        public_keys = sorted(settings.keys_dir.glob("*.pub.pem"))
        if not public_keys:
            raise click.ClickException(f"no audit public key in {settings.keys_dir}: run `falaj init` first")
        log = AuditLog(None, settings.home / "audit", settings.checkpoint_every, public_keys)
        engine = create_db_engine(settings.database_url)
        try:
            total = log.head(engine)[0]
            with _progress() as progress:
                task = progress.add_task("verifying audit chain", total=total)
                report = log.verify(engine, progress=lambda n: progress.advance(task, n))
                progress.update(task, completed=total)
        finally:
            engine.dispose()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    elif report.ok:
        console.print(
            f"[green]OK[/]: {report.events} events, {report.checkpoints_verified} signed checkpoints verified"
            + (f" (latest at seq {report.latest_checkpoint})" if report.latest_checkpoint else "")
        )
    else:
        console.print(f"[red]TAMPERED[/]: first bad seq {report.first_bad_seq}: {report.problem}")
    if not report.ok:
        sys.exit(1)


@audit.command("export")
@tenant_option
@token_option
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="New folder to copy the export to.",
)
def audit_export(tenant: str, token: str | None, out: Path) -> None:
    """Export the log, the signed checkpoints, a signed manifest and a standalone verifier (governed).

    The export is written under FALAJ_HOME/exports/<tenant>/ and copied to --out. An auditor verifies it
    offline with `python verify.py FOLDER --public-key KEY.pem` (needs only `cryptography`), using the audit
    public key obtained from the operator.
    """
    import shutil
    from datetime import UTC, datetime

    from falaj.core.actions import Action

    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty: choose a new folder")
    name = "audit-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    plane = _plane()
    try:
        result = plane.execute(
            Action(kind="audit.export", tenant=tenant, principal=_token(token), payload={"destination": name})
        )
    finally:
        plane.close()
    if result.ok:
        shutil.copytree(result.data["destination"], out, dirs_exist_ok=True)
        result.data["copied_to"] = str(out.resolve())
    _print_result(result, False)
    if not result.ok:
        sys.exit(1)


@cli.group()
def report() -> None:
    """Compliance reports: export (governed, signed) and verify."""


def _period(value: str, name: str) -> str:
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date or time (e.g. 2026-11-01)", param_hint=name) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


@report.command("export")
@tenant_option
@token_option
@click.option("--from", "period_start", required=True, help="Start of the period (ISO date or time; UTC if naive).")
@click.option("--to", "period_end", required=True, help="End of the period, exclusive.")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "pdf"]), default="pdf", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="File to write.")
def report_export(tenant: str, token: str | None, period_start: str, period_end: str, fmt: str, out: Path) -> None:
    """Export the tenant's compliance report for a period (governed: report.export).

    Writes FILE and its detached signature FILE.sig.json; check them with `falaj report verify`.
    """
    import shutil

    from falaj.core.actions import Action
    from falaj.core.domain import ComplianceReportRecord

    if out.exists():
        raise click.UsageError(f"{out} exists: choose a new file")
    payload = {
        "period_start": _period(period_start, "--from"),
        "period_end": _period(period_end, "--to"),
        "format": fmt,
    }
    plane = _plane()
    try:
        result = plane.execute(Action(kind="report.export", tenant=tenant, principal=_token(token), payload=payload))
        if result.ok:
            with plane.sessions() as session:
                row = session.get(ComplianceReportRecord, result.data["report_id"])
                assert row is not None
                source = Path(row.path)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out)
            signature = out.with_name(out.name + ".sig.json")
            signature.write_text(json.dumps(result.data["signature"], indent=2) + "\n", encoding="utf-8")
            result.data["written"] = str(out.resolve())
            result.data["signature_file"] = str(signature.resolve())
    finally:
        plane.close()
    _print_result(result, False)
    if not result.ok:
        sys.exit(1)


@report.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--signature",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Detached signature (default: FILE.sig.json).",
)
@click.option(
    "--public-key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The installation's Ed25519 public key (keys/audit-ed25519.pub.pem), obtained from the operator.",
)
def report_verify(file: Path, signature: Path | None, public_key: Path) -> None:
    """Check that a report file is exactly what the installation signed."""
    from falaj.core.reports import verify_report

    sig_path = signature or file.with_name(file.name + ".sig.json")
    if not sig_path.exists():
        raise click.UsageError(f"no signature at {sig_path}: pass --signature")
    try:
        doc = json.loads(sig_path.read_text(encoding="utf-8"))
        verify_report(file.read_bytes(), doc, public_key.read_bytes())
    except (ValueError, TypeError) as exc:
        console.print(f"[red]NOT VERIFIED[/red]: {exc}")
        sys.exit(1)
    console.print(f"[green]verified[/green]: {file} was signed by {doc.get('key_id')} and is unchanged")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the admin REST API (Litestar on uvicorn) for the installation under FALAJ_HOME.

    OpenAPI 3.1 at /schema/openapi.json; /healthz, /readyz and /metrics need no token.
    """
    import uvicorn

    from falaj.core.keys import AuditSigner

    try:
        AuditSigner.load(_settings())  # fail fast, before binding, if the installation is not initialised
    except FalajError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(
        "falaj.api.rest.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


@cli.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the demo keeps its state (default: a new folder under FALAJ_HOME).",
)
def demo(home: Path | None) -> None:
    """Run the governed flow end to end on the embedded default and print a summary."""
    from falaj.api.cli.demo import run_demo

    sys.exit(run_demo(home, console))


# -- helpers ---------------------------------------------------------------------------------------------
def _read_payload(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text("utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc}", param_hint="--payload") from exc
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from exc
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    return payload


def _print_decision(decision: Any) -> None:
    table = Table(title=f"decision: {decision.verdict}  (bundle {decision.bundle_digest[:19]})")
    for column in ("check", "outcome", "reason", "rule"):
        table.add_column(column)
    colours = {"pass": "green", "fail": "red", "pending": "yellow"}
    for c in decision.checks:
        colour = colours.get(str(c.outcome), "white")
        table.add_row(c.check, f"[{colour}]{c.outcome}[/]", c.reason, c.rule or "")
    console.print(table)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "operation_id": result.operation_id,
                    "kind": result.kind,
                    "outcome": result.outcome,
                    "decision": result.decision.as_dict(),
                    "data": result.data,
                    "error": result.error,
                    "audit_seq": result.audit_seq,
                },
                indent=2,
                default=str,
            )
        )
        return
    colour = "green" if result.ok else "red"
    console.print(f"[{colour}]{result.outcome}[/] {result.kind} {result.resource}: {result.message()}")
    if result.ok and result.data:
        console.print_json(json.dumps(result.data, default=str))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    cli(prog_name="falaj")
