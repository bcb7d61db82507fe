"""``python -m falaj.core.reports``: print the compliance report's JSON Schema (2020-12).

The output is committed as ``docs/schemas/compliance-report.schema.json``; a test checks they agree::

    python -m falaj.core.reports > docs/schemas/compliance-report.schema.json
"""

from __future__ import annotations

import sys

from falaj.core.reports.model import json_schema_text


def main() -> int:
    sys.stdout.write(json_schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
