#!/usr/bin/env python3
"""Stage build/ into a Hugging Face hub cache as the Hub's branch `v<version>` would hold it.

    python scripts/stage_hub_cache.py --cache /tmp/hf-cache
    HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/hf-cache python -c \\
        "import kernels; kernels.get_kernel('kernels-community/sgl-flash-attn3', version=1)"

The snapshot holds `build/<variant>/...` exactly as an upload of build/ puts it on the branch;
its commit id is a content hash, so staging the same build twice gives the same snapshot.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def content_hash(build_dir: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in build_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(build_dir)
        if rel.parts[0].startswith("."):
            continue  # build scratch (objects, ninja files) is not part of an upload
        digest.update(str(rel).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stage(cache: Path, build_dir: Path) -> Path:
    general = tomllib.loads((ROOT / "build.toml").read_text())["general"]
    repo_id = general["hub"]["repo-id"]
    variants = [p for p in build_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not variants:
        raise SystemExit(f"no build variants in {build_dir}: run python scripts/build.py first")
    commit = content_hash(build_dir)
    repo_dir = cache / ("kernels--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    for variant in variants:
        shutil.copytree(variant, snapshot / "build" / variant.name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / f"v{general['version']}").write_text(commit)
    return snapshot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="hub cache directory (HF_HUB_CACHE)")
    parser.add_argument("--build", type=Path, default=ROOT / "build")
    args = parser.parse_args()
    print(f"staged {stage(args.cache, args.build)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
