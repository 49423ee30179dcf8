"""Validation draws: random configs of every kind a search visits, token merging included, and their summaries."""

from __future__ import annotations

import random
from collections import Counter

from latency_models.validate import random_config, summarise_config, token_kind
from pruning.config import BlockConfig, PruneConfig
from pruning.tokens.merge import MergeReduction
from pruning.tokens.topk import TopKReduction
from tests.latency_models.specs import DEIT_TINY

SPEC = DEIT_TINY


def test_random_configs_merge_alone_and_around_top_k_and_never_with_thresholds():
    rng = random.Random(0)
    configs = [random_config(SPEC, rng) for _ in range(400)]
    kinds = Counter(token_kind(c) for c in configs)
    assert set(kinds) == {"none", "topk", "threshold", "merge", "topk+merge"}
    assert kinds["merge"] >= 30 and kinds["topk+merge"] >= 30, kinds
    for config in configs:
        config.check(SPEC)  # raises for merge with threshold, or token ops at a block without heads
        merging = [i for i, b in enumerate(config.blocks) if b.tokens.kind == "merge"]
        if merging:
            # ToMe's schedule: the same even count at every block from one on (top-k blocks excepted).
            counts = {config.blocks[i].tokens.r for i in merging}
            assert len(counts) == 1 and counts.pop() in range(2, 25, 2)
            topk = [i for i, b in enumerate(config.blocks) if b.tokens.kind == "topk"]
            assert sorted(merging + topk)[-1] == 11 and set(range(merging[0], 12)) <= set(merging + topk)


def test_merges_and_thresholds_can_be_left_out():
    rng = random.Random(1)
    kinds = {token_kind(random_config(SPEC, rng, leave_out={"merge", "threshold"})) for _ in range(200)}
    assert kinds == {"none", "topk"}


def test_summaries_name_runs_of_merges_and_the_top_k_between_them():
    blocks = [BlockConfig(heads=3, mlp_hidden=768)] * 12
    for i in range(2, 12):
        blocks[i] = BlockConfig(heads=3, mlp_hidden=768, tokens=MergeReduction(r=8))
    blocks[6] = BlockConfig(heads=3, mlp_hidden=768, tokens=TopKReduction(keep_ratio=0.7))
    config = PruneConfig(blocks=tuple(blocks), package_token=True)
    assert summarise_config(config, SPEC) == "merge 8@2-5, keep 0.7@6, merge 8@7-11 +pkg, heads 36/36, mlp 1.00"
    assert token_kind(config) == "topk+merge"
    merge_only = PruneConfig.uniform(SPEC, r=4, at=(11,), package_token=True)
    assert summarise_config(merge_only, SPEC) == "merge 4@11, heads 36/36, mlp 1.00"  # no top-k: no package token
