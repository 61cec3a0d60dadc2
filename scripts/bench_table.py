"""The CSV result tables the benchmark scripts write."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Header then rows, creating the folder; the benchmark scripts print the same rows as they go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
