"""The launch planner's rules (flash-attn3/planner.h), checked on the host: which tile runs, how the
keys split, and where the splits merge. tests/planner_cases.cpp runs the planner itself; the
tile shapes below are the portable family's for head dim 128."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFILL, SHORT_QUERY, DECODE = 0, 1, 2  # TileKind
NO_MERGE, IN_GRID, COMBINE_KERNEL = "none", "in grid", "combine kernel"
SPLIT_MERGE = (NO_MERGE, IN_GRID, COMBINE_KERNEL)  # SplitMerge, by value
MAX_SPLITS_MERGED_IN_GRID = 8  # PlanTuning::kMaxSplitsMergedInGrid
DETERMINISTIC_KEYS_PER_SPLIT = 2048  # PlanTuning::kDeterministicKeysPerSplit
H100_SMS = 132


@dataclass(frozen=True)
class Call:
    batch: int = 1
    seqlen_q: int = 1
    seqlen_k: int = 8192
    heads: int = 32
    heads_k: int = 8
    num_sms: int = H100_SMS
    num_splits: int = 0
    pack_gqa: int = -1
    deterministic: bool = False
    paged: bool = False
    # (block_m, block_n, merges its own splits) of the prefill, short-query and decode tiles
    tiles: tuple = ((128, 64, False), (64, 64, True), (16, 64, True))


@dataclass(frozen=True)
class Plan:
    num_splits: int
    n_blocks_per_split: int
    pack_gqa: bool
    tile: int
    use_combine: bool
    merge: str  # where split partials are merged: SplitMerge in planner.h

    def block_n(self, call: Call) -> int:
        return call.tiles[self.tile][1]


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    binary = tmp_path_factory.mktemp("planner") / "planner_cases"
    subprocess.run([compiler, "-std=c++17", "-O1", "-I", str(ROOT / "flash-attn3"),
                    str(ROOT / "tests" / "planner_cases.cpp"), "-o", str(binary)], check=True)

    def plan(call: Call) -> Plan:
        fields = asdict(call)
        tiles = fields.pop("tiles")
        line = " ".join(str(int(v)) for v in fields.values())
        line += " " + " ".join(str(int(x)) for tile in tiles for x in tile)
        out = subprocess.run([str(binary)], input=line + "\n", capture_output=True, text=True, check=True).stdout
        n, per, pack, tile, combine, merge = (int(x) for x in out.split())
        return Plan(n, per, bool(pack), tile, bool(combine), SPLIT_MERGE[merge])

    return plan


def test_decode_packs_the_gqa_heads_into_the_decode_tile(planner):
    plan = planner(Call(seqlen_q=1, heads=32, heads_k=8))
    assert plan.pack_gqa and plan.tile == DECODE


def test_a_prefill_neither_packs_nor_splits(planner):
    plan = planner(Call(batch=4, seqlen_q=4096, seqlen_k=4096))
    assert (plan.pack_gqa, plan.tile, plan.num_splits, plan.use_combine) == (False, PREFILL, 1, False)


def test_a_small_decode_batch_splits_its_keys_to_two_ctas_per_sm(planner):
    call = Call(batch=1, seqlen_k=32768)
    plan = planner(call)
    assert call.num_sms < plan.num_splits * call.heads_k <= 2 * call.num_sms
    assert plan.num_splits * plan.n_blocks_per_split * plan.block_n(call) >= call.seqlen_k
    assert plan.use_combine


@pytest.mark.parametrize("batch, splits", [(8, 4), (9, 1), (16, 1)])
def test_unpaged_decode_splits_only_while_half_the_sms_are_idle(planner, batch, splits):
    """batch x 8 KV heads decode tiles on 132 SMs: 64 tiles split to two CTAs per SM, 72 or more
    are not split."""
    plan = planner(Call(batch=batch, seqlen_k=8192))
    assert (plan.tile, plan.num_splits) == (DECODE, splits)
    assert plan.merge == (IN_GRID if splits > 1 else NO_MERGE)


def test_paged_decode_splits_to_two_ctas_per_sm_whatever_the_grid(planner):
    call = Call(batch=16, seqlen_k=32768, paged=True)
    plan = planner(call)
    assert plan.num_splits == 2 * call.num_sms // (call.batch * call.heads_k) == 2


def test_a_tile_that_does_not_merge_its_splits_targets_one_cta_per_sm(planner):
    call = Call(batch=1, seqlen_k=32768, tiles=((128, 64, False), (64, 64, False), (16, 64, False)))
    plan = planner(call)
    assert plan.num_splits * call.heads_k <= call.num_sms < (plan.num_splits + 1) * call.heads_k


@pytest.mark.parametrize("batch, splits", [(1, 32), (8, 4), (9, 1)])
def test_short_queries_split_like_decode(planner, batch, splits):
    """8 query rows x 4 heads per KV head: 32 rows, the short-query tile. Up to two CTAs per SM
    while the unsplit grid leaves half the SMs idle (batch 1: 264 / 8 = 33 splits wanted, 512
    key blocks in splits of 16 give 32), unsplit above that."""
    plan = planner(Call(batch=batch, seqlen_q=8, seqlen_k=32768))
    assert (plan.tile, plan.num_splits) == (SHORT_QUERY, splits)


def test_num_splits_1_never_splits(planner):
    plan = planner(Call(batch=1, seqlen_k=32768, num_splits=1))
    assert (plan.num_splits, plan.use_combine, plan.merge) == (1, False, NO_MERGE)


@pytest.mark.parametrize("splits", [2, MAX_SPLITS_MERGED_IN_GRID])
def test_a_few_splits_merge_in_the_forward_grid(planner, splits):
    plan = planner(Call(batch=1, seqlen_k=32768, num_splits=splits))
    assert plan.num_splits == splits and plan.use_combine and plan.merge == IN_GRID


def test_more_splits_merge_in_the_combine_kernel(planner):
    plan = planner(Call(batch=1, seqlen_k=32768, num_splits=MAX_SPLITS_MERGED_IN_GRID + 1))
    assert plan.use_combine and plan.merge == COMBINE_KERNEL


def test_a_tile_that_does_not_merge_leaves_its_splits_to_the_combine_kernel(planner):
    call = Call(batch=1, seqlen_k=32768, num_splits=4, tiles=((128, 64, False), (64, 64, False), (16, 64, False)))
    plan = planner(call)
    assert plan.num_splits == 4 and plan.use_combine and plan.merge == COMBINE_KERNEL


def test_deterministic_splits_have_a_fixed_length_and_always_merge_in_the_grid(planner):
    """Each row's split boundaries depend on its own length alone, whatever the batch."""
    for seqlen_k in (4096, 65536):
        call = Call(batch=1, seqlen_k=seqlen_k, deterministic=True)
        plan = planner(call)
        assert plan.n_blocks_per_split * plan.block_n(call) == DETERMINISTIC_KEYS_PER_SPLIT
        assert plan.use_combine and plan.merge == IN_GRID
    assert planner(Call(batch=1, seqlen_k=65536, deterministic=True)).num_splits > MAX_SPLITS_MERGED_IN_GRID


def test_explicit_splits_stop_at_the_key_blocks(planner):
    call = Call(batch=1, seqlen_k=256, num_splits=64)
    plan = planner(call)
    assert plan.num_splits == 256 // plan.block_n(call) and plan.n_blocks_per_split == 1
