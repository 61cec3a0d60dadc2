#!/usr/bin/env python3
"""Register / spill / instruction report of the compiled Hopper kernels (reads the object files of
a local build; needs cuobjdump, e.g. the one in triton's package).

    python scripts/sass_report.py > benchmarks/results/sm90_sass_report.md

For each sm90a kernel: registers at entry (setmaxnreg raises the consumers to the tile table's
count), stack frame, the wgmma shapes in its SASS, and local-memory instructions (LDL/STL) in total
and between its first and last HGMMA (the main loop; prologue and epilogue lie outside).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cuobjdump() -> str:
    if found := shutil.which("cuobjdump"):
        return found
    try:
        import triton

        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        raise SystemExit("cuobjdump not found (install triton or put the CUDA toolkit on PATH)")


def report(obj: Path, tool: str) -> str:
    usage = subprocess.run([tool, "--dump-resource-usage", str(obj)], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "--dump-sass", str(obj)], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    lines = sass.splitlines()
    hgmma = [i for i, line in enumerate(lines) if "HGMMA" in line]
    local = [i for i, line in enumerate(lines) if re.search(r"\b(LDL|STL)\b", line)]
    in_loop = [i for i in local if hgmma and hgmma[0] < i < hgmma[-1]]
    shapes = Counter(re.search(r"HGMMA\.(\d+x\d+x\d+)", lines[i]).group(1) for i in hgmma)
    name = obj.name.split("__")[-1].removesuffix(".cu.o")
    shape_text = ", ".join(f"{s} x{n}" for s, n in sorted(shapes.items()))
    return (f"| {name} | {regs.group(1) if regs else '?'} | {stack.group(1) if stack else '?'} | {shape_text} | "
            f"{len(local)} | {len(in_loop)} |")


def main() -> int:
    # The full build's objects (partial builds live in "-partial-" directories beside it).
    objects = sorted(
        obj for obj in ROOT.glob("build/.ninja/*/obj/sm90_fwd/*fwd_sm90_*.cu.o") if "-partial-" not in str(obj)
    )
    if not objects:
        raise SystemExit("no sm90 objects: run python scripts/build.py first")
    tool = cuobjdump()
    print("| kernel | regs at entry | stack bytes | HGMMA shapes (count) | LDL/STL total | LDL/STL in main loop |")
    print("|---|---|---|---|---|---|")
    for obj in objects:
        print(report(obj, tool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
