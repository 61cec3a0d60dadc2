#!/usr/bin/env python3
"""Build the kernel for the installed torch into build/<variant>/, laid out as kernel-builder does.

Sources, include dirs, flags and CUDA capabilities come from build.toml (the publishing build
reads the same file). Compile steps run in parallel under ninja, which prints [done/total].

    python scripts/build.py                      # everything in build.toml
    python scripts/build.py --filter bf16_d128   # only matching instantiations (iterating)
    python scripts/build.py --archs 9.0a         # only these capabilities

Needs: torch (a CUDA build), nvcc (CUDA_HOME or on PATH), ninja, nvidia-cutlass (headers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY_PACKAGE = ROOT / "torch-ext" / "sgl_flash_attn3"
CXX_STD = "-std=c++17"


@dataclass(frozen=True)
class Toolchain:
    cuda_home: Path
    nvcc: Path
    include_dirs: tuple[Path, ...]
    torch_lib: Path


def find_cuda_home() -> Path:
    if env := os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return Path(env)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    # nvcc may be a wrapper script that execs the real one; ask it where it lives.
    out = subprocess.run(
        [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True, text=True
    )
    for line in (out.stdout + out.stderr).splitlines():
        if m := re.search(r"TOP=(\S+)", line):
            return Path(m.group(1)).resolve()
    return Path(nvcc).resolve().parent.parent


def toolchain() -> Toolchain:
    cuda_home = find_cuda_home()
    os.environ["CUDA_HOME"] = str(cuda_home)  # before torch.utils.cpp_extension looks for it
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise SystemExit("the installed torch is not a CUDA build")
    nvcc = cuda_home / "bin" / "nvcc"
    if not nvcc.exists():
        raise SystemExit(f"nvcc not found under CUDA_HOME={cuda_home}")
    site = Path(torch.__file__).resolve().parent.parent
    includes = [Path(p) for p in cpp_extension.include_paths()]
    includes.append(cuda_home / "include")
    # cusparse/cublas headers that torch's headers include live in the nvidia wheels.
    major = torch.version.cuda.split(".")[0]
    for wheel_inc in (site / "nvidia" / f"cu{major}" / "include", site / "nvidia" / "cuda_runtime" / "include"):
        if wheel_inc.exists():
            includes.append(wheel_inc)
    try:
        import cutlass_library

        includes.append(Path(cutlass_library.__file__).resolve().parent / "source" / "include")
    except ImportError:
        raise SystemExit("CUTLASS headers missing: pip install nvidia-cutlass==4.2.0.0") from None
    includes.append(Path(sysconfig.get_paths()["include"]))
    return Toolchain(cuda_home, nvcc, tuple(includes), Path(torch.__file__).resolve().parent / "lib")


def variant_name(config: dict) -> tuple[str, str | None]:
    """The build variant, and the stable-ABI torch version ("2.9") when one is configured."""
    import torch

    cuda = "cu" + torch.version.cuda.replace(".", "")
    stable = config.get("torch", {}).get("stable-abi")
    if isinstance(stable, dict):
        stable = stable.get("cuda")
    if stable:
        major, minor = stable.split(".")
        return f"torch-stable-abi{major}{minor}-{cuda}-x86_64-linux", stable
    major, minor = torch.__version__.split(".")[:2]
    return f"torch{major}{minor}-cxx11-{cuda}-x86_64-linux", None


def build_id() -> str:
    """kernel-builder's op-namespace id: the short git revision, `_dirty` when files changed."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return f"{rev}_dirty" if dirty else rev
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "local"


def gencode(capability: str) -> str:
    arch = capability.replace(".", "")
    return f"-gencode=arch=compute_{arch},code=sm_{arch}"


def ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def write_ninja(
    config: dict, tc: Toolchain, out_dir: Path, so_name: str, ops_name: str, target_version: str | None,
    filter_re: re.Pattern | None, archs: list[str] | None,
) -> Path:
    obj_dir = out_dir / "obj"
    defines = [f"-DTORCH_EXTENSION_NAME={ops_name}", "-DUSE_CUDA", "-DPy_LIMITED_API=0x03090000"]
    if target_version:
        major, minor = (int(x) for x in target_version.split("."))
        defines.append(f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000")
    inc = " ".join(f"-I{ninja_escape(str(p))}" for p in tc.include_dirs)
    lines = [
        "ninja_required_version = 1.3",
        f"nvcc = {tc.nvcc}",
        "rule nvcc",
        "  command = $nvcc $flags -c $in -o $out -MD -MF $out.d",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = nvcc $in",
        "rule cxx",
        "  command = c++ $flags -c $in -o $out -MD -MF $out.d",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = c++ $in",
        "rule link",
        "  command = c++ -shared $in -o $out $ldflags",
        "  description = link $out",
    ]
    objects: list[str] = []

    def add(kind: str, src: str, flags: str, tag: str) -> None:
        obj = obj_dir / tag / (src.replace("/", "__") + ".o")
        objects.append(ninja_escape(str(obj)))
        lines.append(f"build {ninja_escape(str(obj))}: {kind} {ninja_escape(str(ROOT / src))}")
        lines.append(f"  flags = {flags}")

    torch_cfg = config["torch"]
    torch_inc = " ".join(f"-I{ROOT / d}" for d in torch_cfg.get("include", []))
    cxx_flags = " ".join(
        [CXX_STD, "-O3", "-fPIC", "-fno-gnu-unique", "-fvisibility=hidden", *defines, torch_inc, inc,
         *torch_cfg.get("cxx-flags", [])]
    )
    for src in torch_cfg["src"]:
        if src.endswith((".cpp", ".cc", ".cu")):
            add("cxx", src, cxx_flags, "torch")

    for name, kernel in config.get("kernel", {}).items():
        caps = [c for c in kernel["cuda-capabilities"] if archs is None or c in archs]
        if not caps:
            continue
        kinc = " ".join(f"-I{ROOT / d}" for d in kernel.get("include", []))
        nv_flags = " ".join(
            [*kernel.get("cuda-flags", []), *(gencode(c) for c in caps), "-Xcompiler=-fPIC",
             "-Xcompiler=-fvisibility=hidden", "--expt-relaxed-constexpr", kinc, inc]
        )
        for src in kernel["src"]:
            if not src.endswith(".cu"):
                continue
            if filter_re is not None and "/instantiations/" in src and not filter_re.search(src):
                continue
            add("nvcc", src, nv_flags, name)

    ldflags = f"-L{tc.cuda_home / 'lib64'} -lcudart -L{tc.torch_lib} -ltorch_cpu -ltorch_cuda"
    so = ninja_escape(str(out_dir / so_name))
    lines.append(f"build {so}: link {' '.join(objects)}")
    lines.append(f"  ldflags = {ldflags}")
    lines.append(f"default {so}")
    ninja_file = obj_dir.parent / "build.ninja"
    ninja_file.parent.mkdir(parents=True, exist_ok=True)
    ninja_file.write_text("\n".join(lines) + "\n")
    return ninja_file


OPS_PY = '''import torch
from . import {ops_name}
ops = torch.ops.{ops_name}


def add_op_namespace_prefix(op_name: str):
    """
    Prefix op by namespace.
    """
    return f"{ops_name}::{{op_name}}"
'''


def stage_python(variant_dir: Path, ops_name: str, config: dict, archs: list[str]) -> None:
    for py in PY_PACKAGE.rglob("*.py"):
        if "__pycache__" in py.parts or py.name == "_ops.py":
            continue
        dst = variant_dir / py.relative_to(PY_PACKAGE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(py, dst)
    (variant_dir / "_ops.py").write_text(OPS_PY.format(ops_name=ops_name))
    general = config["general"]
    metadata = {
        "name": general["name"],
        "id": ops_name,
        "version": general["version"],
        "license": general["license"],
        "python-depends": general.get("python-depends", []),
        "kernel-depends": [],
        "backend": {"type": "cuda", "archs": archs},
    }
    (variant_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def check_filter(filter_re: re.Pattern) -> None:
    """A filtered build must be loadable: it selects some instantiation of the table, and each
    Hopper kernel it selects comes with the portable kernel of the same (dtype, d, dv), through
    which the binding finds both."""
    from generate import load_table  # the instantiation table (scripts/ is on sys.path)

    selected = {inst for inst in load_table() if filter_re.search(inst.source)}
    if not selected:
        raise SystemExit(f"--filter {filter_re.pattern!r} matches no instantiation source")
    for inst in sorted(selected, key=lambda i: i.source):
        partner = replace(inst, family="portable")
        if partner not in selected:
            raise SystemExit(
                f"--filter {filter_re.pattern!r} selects {inst.source} without {partner.source}: the binding "
                "looks a (dtype, d, dv) up in the portable family first, so the build could not run it; "
                "widen the filter (e.g. 'bf16_d128\\.cu' takes both)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", help="regex: build only instantiation sources that match")
    parser.add_argument("--archs", help="comma-separated CUDA capabilities to build (default: build.toml)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--id", help="op-namespace id instead of the git revision (builds loaded side by side "
                                     "in one process need distinct ids)")
    args = parser.parse_args()

    config = tomllib.loads((ROOT / "build.toml").read_text())
    generate = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), "--check"])
    if generate.returncode != 0:
        raise SystemExit("generated sources are stale: run python scripts/generate.py")
    filter_re = re.compile(args.filter) if args.filter else None
    if filter_re is not None:
        check_filter(filter_re)
    tc = toolchain()
    variant, target_version = variant_name(config)
    python_name = config["general"]["name"].replace("-", "_")
    ops_name = f"_{python_name}_cuda_{args.id or build_id()}"
    archs = args.archs.split(",") if args.archs else None
    all_caps = sorted({c for k in config["kernel"].values() for c in k["cuda-capabilities"]})
    built_caps = [c for c in all_caps if archs is None or c in archs]

    variant_dir = ROOT / "build" / variant
    # A partial build gets its own ninja directory: ninja drops the header dependencies of
    # objects missing from a manifest, so sharing one with the full build would leave stale objects.
    partial = "-".join(x for x in (args.filter, args.archs) if x)
    tag = f"-partial-{hashlib.sha1(partial.encode()).hexdigest()[:8]}" if partial else ""
    scratch = ROOT / "build" / ".ninja" / (variant + tag)
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    variant_dir.mkdir(parents=True)
    so_name = f"{ops_name}.abi3.so"
    ninja_file = write_ninja(
        config, tc, scratch, so_name, ops_name, target_version, filter_re, archs,
    )
    start = time.monotonic()
    subprocess.run(["ninja", "-C", str(ninja_file.parent), "-f", ninja_file.name, f"-j{args.jobs}"], check=True)
    elapsed = time.monotonic() - start
    shutil.copy2(scratch / so_name, variant_dir / so_name)
    stage_python(variant_dir, ops_name, config, built_caps)
    size_mb = (variant_dir / so_name).stat().st_size / 2**20
    print(f"built {variant_dir.relative_to(ROOT)}/{so_name} ({size_mb:.1f} MiB) in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
