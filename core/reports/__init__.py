"""Compliance reports: one tenant, one period, in JSON, CSV (zip) and PDF, each signed with a detached signature.

``build_report`` reads the control-plane database; ``render`` turns the report into bytes of one format;
``sign_report``/``verify_report`` make and check the detached signature. ``python -m falaj.core.reports``
prints the report's JSON Schema (committed as ``docs/schemas/compliance-report.schema.json``).
"""

from __future__ import annotations

from typing import Literal

from falaj.core.reports.build import build_report
from falaj.core.reports.model import SCHEMA_ID, SCHEMA_VERSION, ComplianceReport, json_schema, json_schema_text
from falaj.core.reports.render import render_csv_zip, render_json, render_pdf
from falaj.core.reports.sign import SIGNATURE_FORMAT, sign_report, verify_report

Format = Literal["json", "csv", "pdf"]
FORMATS: tuple[Format, ...] = ("json", "csv", "pdf")
MEDIA_TYPES: dict[str, str] = {"json": "application/json", "csv": "application/zip", "pdf": "application/pdf"}
EXTENSIONS: dict[str, str] = {"json": ".json", "csv": ".zip", "pdf": ".pdf"}
SIGNATURE_MEDIA_TYPE = "application/json"
SIGNATURE_EXTENSION = ".sig.json"


def render(report: ComplianceReport, fmt: str) -> bytes:
    """The report as bytes of ``fmt`` ("json", "csv" for a zip of CSV tables, or "pdf")."""
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv_zip(report)
    if fmt == "pdf":
        return render_pdf(report)
    raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")


__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "MEDIA_TYPES",
    "SCHEMA_ID",
    "SCHEMA_VERSION",
    "SIGNATURE_EXTENSION",
    "SIGNATURE_FORMAT",
    "SIGNATURE_MEDIA_TYPE",
    "ComplianceReport",
    "Format",
    "build_report",
    "json_schema",
    "json_schema_text",
    "render",
    "render_csv_zip",
    "render_json",
    "render_pdf",
    "sign_report",
    "verify_report",
]
