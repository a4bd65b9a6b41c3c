"""How every benchmark hands its figures over: the JSON report, then the readable table.

The JSON goes to stdout first (and to `--json PATH` when given) so that a run can be kept
and compared; the table follows for the reader of the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], table: str, json_path: Path | None = None) -> None:
    """Print the report as JSON and then `table`; also write the JSON to `json_path`."""
    text = json.dumps(report, indent=2)
    print(text)
    print()
    print(table)
    if json_path is not None:
        json_path.write_text(text)
