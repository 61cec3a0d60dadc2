"""The CSV result tables the benchmark scripts write, the versions line each run prints, and the
alternating rounds their rates are measured in."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

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


def best_of_rounds(rates: Sequence[Callable[[], float]], rounds: int) -> list[float]:
    """The best reading of each rate over `rounds` rounds that take the rates in turn. A GPU at its
    power cap drifts by 10% and more within a run: alternating gives every workload the same share
    of the fast and slow stretches, and the best reading drops those a slow stretch pulled down."""
    best = [0.0] * len(rates)
    for _ in range(rounds):
        for i, rate in enumerate(rates):
            best[i] = max(best[i], rate())
    return best
