#!/usr/bin/env python3
"""Plot a prefill results table (bench_prefill.py's CSV) as a PNG: TFLOP/s against sequence length,
ours (solid) beside the peer (dashed), one panel per dtype and mask.

    python scripts/plot_prefill.py benchmarks/results/prefill_sm90.csv benchmarks/results/prefill_sm90.png

Needs matplotlib (not a runtime dependency of the package).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(args.csv.open()))
    peer = next(k for k in rows[0] if k.endswith("_tflops") and k not in ("ours_tflops", "gemm_tflops"))
    series: dict[tuple[str, str], dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        label = f"d{r['hdim']}" if r["hdim"] == r["hdim_v"] else f"d{r['hdim']}-{r['hdim_v']}"
        series[(r["dtype"], r["causal"])][label].append((int(r["seqlen"]), float(r["ours_tflops"]), float(r[peer])))
    panels = sorted(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], panels):
        for i, (label, points) in enumerate(sorted(series[key].items(), key=lambda kv: int(kv[0][1:].split("-")[0]))):
            points.sort()
            xs = [p[0] for p in points]
            color = f"C{i}"
            ax.plot(xs, [p[1] for p in points], "-o", color=color, markersize=3, label=f"{label} ours")
            ax.plot(xs, [p[2] for p in points], "--", color=color, alpha=0.6, label=f"{label} {peer[:-7]}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{key[0]}, {'causal' if key[1] == '1' else 'non-causal'}")
        ax.set_xlabel("sequence length (batch x seqlen = 16k)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("TFLOP/s")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Forward attention, {rows[0]['device']} ({rows[0]['date']}); gemm {rows[0]['gemm_tflops']} TFLOP/s")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
