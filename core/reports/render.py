"""The report's three formats: canonical JSON, a zip of CSV tables, and a PDF for people."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from falaj.core.reports import model as m
from falaj.core.reports.model import ComplianceReport

if TYPE_CHECKING:
    from fpdf import FPDF


# -- JSON ----------------------------------------------------------------------------------------------------------
def report_data(report: ComplianceReport) -> dict[str, Any]:
    """The report as plain JSON data (ISO 8601 times)."""
    return report.model_dump(mode="json")


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8 without ASCII escaping."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def render_json(report: ComplianceReport) -> bytes:
    """The report as canonical JSON: what the schema in ``docs/schemas`` describes."""
    return canonical_json(report_data(report))


# -- CSV tables ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """One CSV member of the zip: a file name, the report section it comes from, header and rows."""

    file: str
    section: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


def _rows(models: Sequence[BaseModel], drop: tuple[str, ...] = (), **extra: Any) -> list[dict[str, Any]]:
    out = []
    for item in models:
        data = {k: v for k, v in item.model_dump(mode="json").items() if k not in drop}
        out.append({**extra, **data})
    return out


def _columns(model: type[BaseModel], drop: tuple[str, ...] = (), first: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (*first, *(name for name in model.model_fields if name not in drop))


def tables(report: ComplianceReport) -> list[Table]:
    """Every table section as flat rows, in the order of the report (nested approvals flattened)."""
    locations, transfers = report.processing_locations, report.cross_border_transfers
    approvals: list[dict[str, Any]] = []
    votes: list[dict[str, Any]] = []
    for dep in report.deployments:
        approvals += _rows(dep.approvals, ("votes",), deployment=dep.name)
        for request in dep.approvals:
            votes += _rows(request.votes, deployment=dep.name, request_id=request.request_id)
    return [
        Table(
            "datasets.csv",
            "processing_inventory",
            _columns(m.DatasetRow),
            _rows(report.processing_inventory),
        ),
        Table("backends.csv", "processing_locations", _columns(m.BackendRow), _rows(locations.backends)),
        Table("training_runs.csv", "processing_locations", _columns(m.TrainingRunRow), _rows(locations.training_runs)),
        Table(
            "deployment_locations.csv",
            "processing_locations",
            _columns(m.DeploymentLocationRow),
            _rows(locations.deployments),
        ),
        Table(
            "transfer_bases.csv",
            "cross_border_transfers",
            _columns(m.TransferBasisRow),
            _rows(transfers.transfer_bases),
        ),
        Table(
            "residency_exceptions.csv",
            "cross_border_transfers",
            _columns(m.ResidencyExceptionRow),
            _rows(transfers.residency_exceptions),
        ),
        Table("consent.csv", "consent", _columns(m.ConsentCountRow), _rows(report.consent.purposes)),
        Table("objections.csv", "consent", _columns(m.ObjectionRow), _rows(report.consent.objections)),
        Table("erasure_requests.csv", "erasure", _columns(m.ErasureRow), _rows(report.erasure)),
        Table("model_versions.csv", "models", _columns(m.ModelVersionRow), _rows(report.models)),
        Table(
            "deployments.csv",
            "deployments",
            _columns(m.DeploymentRow, ("approvals",)),
            _rows(report.deployments, ("approvals",)),
        ),
        Table(
            "approval_requests.csv",
            "deployments",
            _columns(m.ApprovalRow, ("votes",), ("deployment",)),
            approvals,
        ),
        Table(
            "approval_votes.csv",
            "deployments",
            _columns(m.VoteRow, first=("deployment", "request_id")),
            votes,
        ),
        Table("policy_bundles.csv", "policy_bundles", _columns(m.PolicyBundleRow), _rows(report.policy_bundles)),
        Table("denied_actions.csv", "denied_actions", _columns(m.DeniedActionRow), _rows(report.denied_actions.rows)),
        Table(
            "denied_actions_by_kind.csv",
            "denied_actions",
            _columns(m.KindCount),
            _rows(report.denied_actions.by_kind),
        ),
        Table("controls.csv", "controls", _columns(m.ControlRow), _rows(report.controls)),
    ]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One cell: lists joined with "; ", objects as canonical JSON, text that a spreadsheet would run as a
    formula prefixed with an apostrophe (the JSON format keeps the exact value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        text = canonical_json(value).decode("utf-8")
    elif isinstance(value, list):
        text = "; ".join(csv_cell(v) if not isinstance(v, str) else v for v in value)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_bytes(table: Table) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([csv_cell(row.get(column)) for column in table.columns])
    # A byte-order mark, so that spreadsheets read the UTF-8 (Arabic names) correctly.
    return buffer.getvalue().encode("utf-8-sig", errors="replace")


def render_csv_zip(report: ComplianceReport) -> bytes:
    """A zip: ``report.json`` (header, audit result, counts, the table index), then one CSV per table."""
    data = report_data(report)
    members = [(t.file, _csv_bytes(t), t) for t in tables(report)]
    meta = {
        "header": data["header"],
        "audit": data["audit"],
        "counts": {
            "denied_actions": report.denied_actions.count,
            "objections": report.consent.objections_count,
            "consent_withdrawal_actions_in_period": report.consent.withdrawal_actions_in_period,
        },
        "tables": [
            {"file": name, "section": t.section, "columns": list(t.columns), "rows": len(t.rows)}
            for name, _, t in members
        ],
        "csv": "RFC 4180, UTF-8 with a byte-order mark; lists joined with '; '; objects as JSON; text starting "
        "with = + - @ TAB or CR is prefixed with an apostrophe (report JSON holds the exact values)",
    }
    stamp = report.header.generated_at.astimezone(UTC)
    date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
    listing = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8", errors="replace")
    files = [("report.json", listing)]
    files += [(name, body) for name, body, _ in members]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in files:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, body)
    return out.getvalue()


# -- PDF -----------------------------------------------------------------------------------------------------------
#: Core PDF fonts hold Latin-1 only; common typography is mapped, anything else becomes "?".
_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u2022": "\xb7",
        "\u2192": "->",
        "\u00a0": " ",
        "\u200b": "",
        "\ufeff": "",
    }
)
_MAX_CELL = 1200
_MAX_LINES = 30
_LINE = 3.6
_FONT = "Helvetica"


def pdf_text(value: Any, limit: int | None = None) -> str:
    """Text a core PDF font can show: never raises, whatever the string holds."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        value = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    elif isinstance(value, list):
        value = "; ".join(pdf_text(v) for v in value) if value else "-"
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    try:
        text = unicodedata.normalize("NFC", str(value))
    except Exception:
        text = "?"
    out = []
    for ch in text.translate(_TYPOGRAPHY):
        out.append(_latin1(ch))
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[: limit - 40] + " ... (shortened: see the JSON report)"
    return result


def _latin1(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\t":
        return " " if ch == "\t" else ch
    if code < 0x20 or 0x7F <= code < 0xA0:
        return " "
    if code < 0x100:
        return ch
    if unicodedata.combining(ch) or unicodedata.category(ch) == "Cf":
        return ""  # a lone accent, or an invisible format character (bidi controls, zero width)
    decomposed = unicodedata.normalize("NFKD", ch)
    kept = "".join(c for c in decomposed if ord(c) < 0x100 and not unicodedata.combining(c) and ord(c) >= 0x20)
    return kept or "?"


@dataclass(frozen=True)
class _Column:
    title: str
    width: float
    get: Callable[[Any], Any]


def _col(title: str, width: float, field: str | Callable[[Any], Any]) -> _Column:
    if callable(field):
        return _Column(title, width, field)

    def getter(row: Any) -> Any:
        return getattr(row, field)

    return _Column(title, width, getter)


def _verification_line(report: ComplianceReport) -> str:
    v = report.audit.verification
    if v.ok:
        return (
            f"VERIFIED: {v.events} events, {v.checkpoints_verified} signed checkpoints "
            f"(latest at seq {v.latest_checkpoint})"
        )
    return f"FAILED: first bad seq {v.first_bad_seq}: {v.problem}"


def _summary(report: ComplianceReport) -> str:
    locations = report.processing_locations
    counts = (
        (len(report.processing_inventory), "dataset version(s)"),
        (len(locations.backends), "backend(s)"),
        (len(locations.training_runs), "training run(s)"),
        (len(report.cross_border_transfers.transfer_bases), "transfer basis(es)"),
        (report.consent.withdrawal_actions_in_period, "consent withdrawal(s)"),
        (len(report.erasure), "erasure request(s)"),
        (len(report.models), "model version(s)"),
        (len(report.deployments), "deployment(s)"),
        (report.denied_actions.count, "denied action(s)"),
    )
    return ", ".join(f"{n} {what}" for n, what in counts)


SECTION_TITLES = {
    "processing_inventory": "1. Processing inventory",
    "processing_locations": "2. Processing locations",
    "cross_border_transfers": "3. Cross-border transfers",
    "consent": "4. Consent and objections",
    "erasure": "5. Erasure requests",
    "models": "6. Models",
    "deployments": "7. Deployments and approvals",
    "policy_bundles": "8. Policy bundles",
    "denied_actions": "9. Denied actions",
    "audit": "10. Audit log",
    "controls": "11. Controls and UAE PDPL articles",
}


def render_pdf(report: ComplianceReport) -> bytes:
    """A readable PDF: a title block, one heading per section with its tables, page numbers."""
    from fpdf import FPDF

    h = report.header

    class _Doc(FPDF):
        def footer(self) -> None:
            self.set_y(-11)
            self.set_font(_FONT, size=7)
            self.set_text_color(110, 110, 110)
            left = pdf_text(f"Falaj compliance report - {h.tenant} - {h.report_id}")
            self.cell(0, 6, left, align="L")
            self.set_x(self.l_margin)
            self.cell(0, 6, f"Page {self.page_no()} of {{nb}}", align="R")
            self.set_text_color(0, 0, 0)

    pdf = _Doc(orientation="landscape", unit="mm", format="A4")
    pdf.set_margins(12, 12, 12)
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.set_title(pdf_text(f"Compliance report {h.tenant} {h.period_start:%Y-%m-%d} to {h.period_end:%Y-%m-%d}"))
    pdf.set_author("Falaj")
    pdf.set_subject(pdf_text(h.schema_version))
    pdf.set_creator(pdf_text(f"Falaj {h.falaj_version}"))
    pdf.set_creation_date(h.generated_at)
    pdf.add_page()

    pdf.set_font(_FONT, "B", 20)
    pdf.multi_cell(0, 10, "Falaj compliance report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FONT, "", 13)
    pdf.multi_cell(0, 7, pdf_text(f"{h.tenant_name} ({h.tenant})"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _key_values(
        pdf,
        [
            ("Tenant", f"{h.tenant_name} ({h.tenant}), rule set {h.ruleset}"),
            ("Period", f"{pdf_text(h.period_start)} to {pdf_text(h.period_end)} (end exclusive)"),
            ("Generated", h.generated_at),
            ("Report id", h.report_id),
            ("Schema", h.schema_version),
            ("Falaj version", h.falaj_version),
            ("Audit chain", _verification_line(report)),
            ("Audit key", report.audit.audit_key_id),
            ("In this report", _summary(report)),
        ],
    )
    pdf.ln(2)
    pdf.set_font(_FONT, "I", 8)
    pdf.multi_cell(
        0,
        4,
        "Data subjects appear only as SHA-256 hashes of their ids. Inventory sections list what existed at the end "
        "of the period; rows with a time are those of the period. This PDF shows text in Latin-1: characters "
        "outside it (Arabic names, for example) are shown as '?'; the JSON and CSV formats of the same report "
        "carry the exact text, and the detached signature covers the file it was issued for.",
        new_x="LMARGIN",
        new_y="NEXT",
    )

    _section(pdf, "processing_inventory")
    _table(
        pdf,
        report.processing_inventory,
        [
            _col("Dataset", 14, lambda r: f"{r.name} v{r.version}"),
            _col("Class", 8, "classification"),
            _col("Residency", 7, "residency"),
            _col("Legal basis", 9, "legal_basis"),
            _col("Consented purposes", 13, "consented_purposes"),
            _col("Storage (region)", 14, lambda r: f"{pdf_text(r.storage_backend)} ({pdf_text(r.storage_region)})"),
            _col("Subjects", 6, "subjects_indexed"),
            _col("Registered", 12, "registered_at"),
            _col("By", 11, "registered_by"),
            _col("Status", 9, lambda r: r.status + (f" {pdf_text(r.retired_at)}" if r.retired_at else "")),
            _col("Digest", 22, "digest"),
        ],
    )

    locations = report.processing_locations
    _section(pdf, "processing_locations")
    _subheading(pdf, "Backends")
    _table(
        pdf,
        locations.backends,
        [
            _col("Name", 14, "name"),
            _col("Kind", 10, "kind"),
            _col("Plugin", 14, "plugin"),
            _col("Region", 12, "region"),
            _col("Country", 7, "country"),
            _col("Node class", 10, "node_class"),
            _col("Enabled", 7, "enabled"),
            _col("Registered", 14, "registered_at"),
        ],
    )
    _subheading(pdf, "Training runs in the period")
    _table(
        pdf,
        locations.training_runs,
        [
            _col("Run", 14, "name"),
            _col("Backend", 12, "backend"),
            _col("Region", 11, "region"),
            _col("Country", 7, "country"),
            _col("Inputs", 16, "inputs"),
            _col("Status", 9, "status"),
            _col("Requested by", 13, "requested_by"),
            _col("Submitted", 14, "submitted_at"),
        ],
    )
    _subheading(pdf, "Deployments")
    _table(
        pdf,
        locations.deployments,
        [
            _col("Deployment", 16, "name"),
            _col("Environment", 10, "environment"),
            _col("Runtime", 14, "runtime_backend"),
            _col("Region", 12, "region"),
            _col("Country", 7, "country"),
            _col("Status", 10, "status"),
        ],
    )

    transfers = report.cross_border_transfers
    _section(pdf, "cross_border_transfers")
    _subheading(pdf, "Transfer bases")
    _table(
        pdf,
        transfers.transfer_bases,
        [
            _col("Recorded", 13, "recorded_at"),
            _col("By", 11, "recorded_by"),
            _col("To", 5, "destination_country"),
            _col("Basis", 10, "basis"),
            _col("Article", 20, "article"),
            _col("Dataset", 11, lambda r: r.dataset or "all eligible data"),
            _col("Expires", 12, "expires_at"),
            _col("Revoked", 12, "revoked_at"),
            _col("Valid at end", 7, "valid_at_period_end"),
            _col("Evidence", 20, "evidence"),
        ],
    )
    _subheading(pdf, "Residency exceptions (health data)")
    _table(
        pdf,
        transfers.residency_exceptions,
        [
            _col("Recorded", 13, "recorded_at"),
            _col("By", 11, "recorded_by"),
            _col("Dataset", 12, "dataset"),
            _col("To", 5, "destination_country"),
            _col("Exception", 20, "exception"),
            _col("Article", 20, "article"),
            _col("Evidence", 20, "evidence"),
        ],
    )

    consent = report.consent
    _section(pdf, "consent")
    _paragraph(
        pdf,
        f"Consent withdrawals recorded in the period: {consent.withdrawal_actions_in_period}. Objections to "
        f"automated decisions in the period: {consent.objections_count}.",
    )
    _table(
        pdf,
        consent.purposes,
        [
            _col("Scope", 14, lambda r: f"{r.dataset} v{r.dataset_version}" if r.dataset else "whole tenant"),
            _col("Purpose", 12, "purpose"),
            _col("Purpose description", 26, "purpose_description"),
            _col("Records", 7, "records"),
            _col("Valid at end", 8, "granted"),
            _col("Withdrawn", 8, "withdrawn"),
            _col("Granted in period", 9, "granted_in_period"),
            _col("Withdrawals honoured", 10, "withdrawals_honoured"),
        ],
    )
    _subheading(pdf, "Objections")
    _table(
        pdf,
        consent.objections,
        [
            _col("Recorded", 13, "recorded_at"),
            _col("Deployment", 12, "deployment"),
            _col("Subject (hash)", 26, "subject_hash"),
            _col("Reason", 30, "reason"),
            _col("Status", 8, "status"),
        ],
    )

    _section(pdf, "erasure")
    _table(
        pdf,
        report.erasure,
        [
            _col("Request", 14, "request_id"),
            _col("Subject (hash)", 24, "subject_hash"),
            _col("Status", 8, "status"),
            _col("Requested", 13, "requested_at"),
            _col("By", 10, "requested_by"),
            _col("Completed", 13, "completed_at"),
            _col("Verified", 6, "verified"),
            _col("Datasets", 12, "datasets"),
            _col("Rows removed", 7, "rows_removed"),
            _col("Feature stores / views", 8, lambda r: f"{r.feature_stores} / {r.training_views}"),
            _col("Models flagged", 7, "flagged_model_versions"),
        ],
    )

    _section(pdf, "models")
    _table(
        pdf,
        report.models,
        [
            _col("Model", 12, lambda r: f"{r.model} v{r.version}"),
            _col("Artifact digest", 26, "artifact_digest"),
            _col("Storage (region)", 13, lambda r: f"{pdf_text(r.storage_backend)} ({pdf_text(r.storage_region)})"),
            _col("Registered", 13, "registered_at"),
            _col("By", 10, "registered_by"),
            _col("Signer key ids", 24, "signer_key_ids"),
            _col("Signed by", 10, "signed_by"),
            _col("Status / flags", 11, lambda r: "; ".join([r.status, *r.flags])),
        ],
    )

    _section(pdf, "deployments")
    _table(
        pdf,
        report.deployments,
        [
            _col("Deployment", 13, "name"),
            _col("Environment", 9, "environment"),
            _col("Status", 8, "status"),
            _col("Runtime (region)", 14, lambda r: f"{pdf_text(r.runtime_backend)} ({pdf_text(r.runtime_region)})"),
            _col("Requested", 13, "requested_at"),
            _col("By", 10, "requested_by"),
            _col("Traffic", 14, "traffic"),
            _col(
                "Automated decisions / review",
                16,
                lambda r: f"{pdf_text(r.automated_decisions)}; {pdf_text(r.human_review_contact)}",
            ),
            _col("Flags", 10, "flags"),
        ],
    )
    _subheading(pdf, "Approval votes")
    votes: list[tuple[m.DeploymentRow, m.ApprovalRow, m.VoteRow | None]] = []
    for dep in report.deployments:
        for req in dep.approvals:
            votes += [(dep, req, vote) for vote in req.votes] if req.votes else [(dep, req, None)]
    _table(
        pdf,
        votes,
        [
            _col("Deployment", 12, lambda r: r[0].name),
            _col("Request (status, quorum)", 16, lambda r: f"{r[1].request_id[:12]} ({r[1].status}, {r[1].quorum})"),
            _col("Approver", 12, lambda r: r[2].approver if r[2] else "no votes"),
            _col("When", 13, lambda r: r[2].at if r[2] else None),
            _col("Decision", 8, lambda r: r[2].decision if r[2] else None),
            _col("Comment", 40, lambda r: r[2].comment if r[2] else None),
        ],
    )

    _section(pdf, "policy_bundles")
    _table(
        pdf,
        report.policy_bundles,
        [
            _col("Digest", 30, "digest"),
            _col("Activated", 13, "activated_at"),
            _col("Loaded by", 12, "loaded_by"),
            _col("Decisions in period", 9, "decisions_in_period"),
            _col("Source", 24, "source"),
        ],
    )

    denied = report.denied_actions
    _section(pdf, "denied_actions")
    by_kind = ", ".join(f"{k.kind}: {k.count}" for k in denied.by_kind) or "none"
    _paragraph(pdf, f"{denied.count} denied action(s) in the period. By kind: {by_kind}.")
    _table(
        pdf,
        denied.rows,
        [
            _col("When", 13, "at"),
            _col("Principal", 12, "principal"),
            _col("Action", 11, "kind"),
            _col("Resource", 14, "resource"),
            _col("Check", 8, "check"),
            _col("Reason", 38, "reason"),
            _col("Audit seq", 6, "audit_seq"),
        ],
    )

    audit = report.audit
    _section(pdf, "audit")
    cp = audit.latest_checkpoint
    _key_values(
        pdf,
        [
            ("Verification", _verification_line(report)),
            ("Events in the chain", audit.verification.events),
            ("Last seq", audit.verification.last_seq),
            ("Latest checkpoint", f"seq {cp.seq}, {pdf_text(cp.at)}, hash {cp.hash}" if cp else None),
            ("Checkpoint key", cp.key_id if cp else None),
            ("Audit key", audit.audit_key_id),
            ("Tenant events in period", audit.tenant_events_in_period),
            ("Their seq range", f"{audit.first_seq_in_period} to {audit.last_seq_in_period}"),
        ],
    )

    _section(pdf, "controls")
    _table(
        pdf,
        report.controls,
        [
            _col("Control", 20, "control"),
            _col("Articles", 24, "articles"),
            _col("How Falaj answers it", 36, "measure"),
            _col("Evidence", 12, lambda r: SECTION_TITLES.get(r.evidence_section, r.evidence_section)),
            _col("Status", 7, "status"),
        ],
    )
    return bytes(pdf.output())


def _section(pdf: FPDF, name: str) -> None:
    if pdf.get_y() > pdf.h - 50:
        pdf.add_page()
    pdf.ln(4)
    pdf.set_font(_FONT, "B", 14)
    pdf.multi_cell(0, 8, SECTION_TITLES[name], new_x="LMARGIN", new_y="NEXT")
    pdf.set_draw_color(160, 160, 160)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.set_draw_color(0, 0, 0)
    pdf.ln(2)


def _subheading(pdf: FPDF, title: str) -> None:
    if pdf.get_y() > pdf.h - 35:
        pdf.add_page()
    pdf.ln(1)
    pdf.set_font(_FONT, "B", 10)
    pdf.multi_cell(0, 6, pdf_text(title), new_x="LMARGIN", new_y="NEXT")


def _paragraph(pdf: FPDF, text: str) -> None:
    pdf.set_font(_FONT, "", 9)
    pdf.multi_cell(0, 5, pdf_text(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def _key_values(pdf: FPDF, pairs: list[tuple[str, Any]]) -> None:
    from fpdf.fonts import FontFace

    pdf.set_font(_FONT, "", 9)
    widths = (22, 78)
    with pdf.table(
        col_widths=widths,
        text_align="LEFT",
        first_row_as_headings=False,
        borders_layout="HORIZONTAL_LINES",
        line_height=5,
    ) as table:
        for key, value in pairs:
            row = table.row()
            row.cell(pdf_text(key), style=FontFace(emphasis="BOLD"))
            row.cell(_fit(pdf, pdf_text(value, _MAX_CELL), pdf.epw * widths[1] / sum(widths), 5))


def _fit(pdf: FPDF, text: str, width: float, line_height: float) -> str:
    """``text`` shortened to at most ``_MAX_LINES`` wrapped lines of ``width`` mm: a table row must fit a page."""
    if len(text) <= 200:
        return text
    lines = pdf.multi_cell(width, line_height, text, dry_run=True, output="LINES")
    if not isinstance(lines, list) or len(lines) <= _MAX_LINES:
        return text
    keep = sum(len(line) + 1 for line in lines[: _MAX_LINES - 4])
    return text[:keep].rstrip() + " ... (shortened: see the JSON report)"


PDF_MAX_ROWS = 500


def _table(pdf: FPDF, rows: Sequence[Any], columns: list[_Column]) -> None:
    from fpdf.fonts import FontFace

    if not rows:
        pdf.set_font(_FONT, "I", 9)
        pdf.multi_cell(0, 5, "None.", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
        return
    shown = rows
    if len(rows) > PDF_MAX_ROWS:
        # A table of thousands of rows helps no reader and takes long to lay out: the PDF shows the first
        # ones and says so; the JSON and CSV exports hold every row.
        shown = rows[:PDF_MAX_ROWS]
        pdf.set_font(_FONT, "I", 8)
        pdf.multi_cell(
            0,
            5,
            f"Showing the first {PDF_MAX_ROWS:,} of {len(rows):,} rows; the JSON and CSV exports list all of them.",
            new_x="LMARGIN",
            new_y="NEXT",
        )
    rows = shown
    pdf.set_font(_FONT, "", 7)
    total = sum(c.width for c in columns)
    widths = [pdf.epw * c.width / total for c in columns]
    with pdf.table(
        col_widths=tuple(c.width for c in columns),
        text_align="LEFT",
        line_height=_LINE,
        headings_style=FontFace(emphasis="BOLD", fill_color=(230, 230, 230)),
        repeat_headings=1,
    ) as table:
        heading = table.row()
        for column in columns:
            heading.cell(pdf_text(column.title))
        for item in rows:
            row = table.row()
            for column, width in zip(columns, widths, strict=True):
                try:
                    value = column.get(item)
                except Exception:
                    value = "?"
                text = " ".join(pdf_text(value, _MAX_CELL).split())
                row.cell(_fit(pdf, text, width, _LINE))
    pdf.ln(2)
