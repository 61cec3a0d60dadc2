"""The CSV result tables the benchmark scripts write, and the versions line each run prints."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch


def versions_line() -> str:
    """The GPU and the library versions a run measured, as a comment line."""
    return f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Header then rows, creating the folder; the benchmark scripts print the same rows as they go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
