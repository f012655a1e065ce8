"""The version of the results file's layout (``results.json``), shared by its writer (the runner)
and its readers (the report, a finished run's reload).

``SCHEMA`` counts the versions. A reader refuses a file of a newer schema with one line
(``check_schema``) and reads every older one: files written before the field existed are
schema 0, with the same layout as 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMA = 1
"""1: ``schema`` recorded (2026-12-04); 0: every file before it (the same layout otherwise)."""


def check_schema(results: dict[str, Any], path: str | Path) -> None:
    """Refuse a results file written by a newer migu (one line naming it and what to do)."""
    found = results.get("schema", 0)
    if isinstance(found, bool) or not isinstance(found, int) or found > SCHEMA:
        raise ValueError(f"{path} has results schema {found!r}, newer than this migu reads ({SCHEMA}); "
                         "upgrade migu to read it")  # fmt: skip
