"""Token merging in the search space: merge counts per group of blocks, alone or beside top-k."""

from __future__ import annotations

import pytest
import timm

from pruning import PruneConfig, describe
from search import SearchSpace
from search.space import SpaceError, TrialSpace
from tests.search.tiny import KWARGS, MODEL

EVERY_BLOCK = tuple(range(12))


@pytest.fixture(scope="module")
def spec():
    return describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")


def ops(config: PruneConfig) -> list[tuple]:
    """(kind, value) of every block's token op: ("merge", r), ("topk", keep) or ("none", None)."""
    return [(b.tokens.kind, getattr(b.tokens, "r", getattr(b.tokens, "keep_ratio", None))) for b in config.blocks]


def test_merge_counts_are_searched_per_stage_of_three_blocks_by_default(spec):
    space = TrialSpace(SearchSpace(tokens="merge", score=("cls_attn", "head_weighted")), spec)
    # Merging drops no token by score: neither the score kind nor the package token is a parameter.
    assert list(space.distributions) == ["merge_0-2", "merge_3-5", "merge_6-8", "merge_9-11"]
    dist = space.distributions["merge_3-5"]
    assert (dist.low, dist.high, dist.step) == (0, 24, 2)
    assert space.config(space.dense_params()).is_dense_for(spec)
    config = space.config({"merge_0-2": 0, "merge_3-5": 6, "merge_6-8": 0, "merge_9-11": 12})
    assert ops(config) == [("none", None)] * 3 + [("merge", 6)] * 3 + [("none", None)] * 3 + [("merge", 12)] * 3
    assert not config.package_token and config.score == "cls_attn"
    config.check(spec)
    assert space.config(space.cheapest_params()) == PruneConfig.uniform(spec, r=24, at=EVERY_BLOCK)


@pytest.mark.parametrize(("size", "names"), [(1, [f"merge_{i}" for i in range(12)]), (12, ["merge_0-11"])])
def test_merge_group_sets_how_many_blocks_share_a_count(spec, size, names):
    space = TrialSpace(SearchSpace(tokens="merge", merge_group=size, merge_max=16), spec)
    assert list(space.distributions) == names
    assert {d.high for d in space.distributions.values()} == {16}


def test_merge_counts_stop_at_half_the_tokens_of_a_small_model():
    small = describe(timm.create_model(MODEL, **KWARGS), MODEL)  # 4 patch tokens: at most 2 merge
    space = TrialSpace(SearchSpace(tokens="merge", merge_group=2), small)
    assert {name: d.high for name, d in space.distributions.items()} == {"merge_0-1": 2, "merge_2-3": 2}
    # Every ToMe warm start caps to the same schedule: one start, not four copies.
    assert space.warm_starts() == [{"merge_0-1": 0, "merge_2-3": 0}, {"merge_0-1": 2, "merge_2-3": 2}]


def test_mixed_mode_runs_top_k_where_a_keep_ratio_is_below_one_and_merges_elsewhere(spec):
    space = TrialSpace(SearchSpace(tokens="topk+merge", token_blocks=(3, 6, 9)), spec)
    assert list(space.distributions) == [
        "keep_3",
        "keep_6",
        "keep_9",
        "merge_0-2",
        "merge_3-5",
        "merge_6-8",
        "merge_9-11",
        "package_token",
    ]
    params = space.dense_params() | {"keep_3": 0.7, "merge_3-5": 8, "merge_9-11": 4, "package_token": True}
    config = space.config(params)
    assert ops(config) == [
        *[("none", None)] * 3,
        ("topk", 0.7),
        ("merge", 8),
        ("merge", 8),
        *[("none", None)] * 3,
        *[("merge", 4)] * 3,  # keep_9 = 1.0: block 9 merges with its group
    ]
    assert config.package_token
    config.check(spec)
    # Merges alone: the package token would fuse nothing, so it is dropped (one config, one key).
    merges_only = space.config(params | {"keep_3": 1.0})
    assert not merges_only.package_token
    assert merges_only == space.config(params | {"keep_3": 1.0, "package_token": False})


def test_mixed_cheapest_config_takes_whichever_op_keeps_fewer_tokens(spec):
    space = TrialSpace(SearchSpace(tokens="topk+merge", token_blocks=(3, 6, 9)), spec)
    cheapest = space.config(space.cheapest_params())
    assert ops(cheapest)[3] == ("topk", 0.4) and ops(cheapest)[4] == ("merge", 24)
    # A high keep_min drops a share of the tokens, a merge a count: late in the network the merge drops more.
    space = SearchSpace(tokens="topk+merge", token_blocks=(1, 11), keep_min=0.95, merge_max=8, merge_group=1)
    late = TrialSpace(space, spec)
    kinds = [kind for kind, _ in ops(late.config(late.cheapest_params()))]
    assert kinds[1] == "topk" and kinds[11] == "merge"


def test_warm_starts_include_tome_uniform_merges_and_in_mixed_mode_the_top_k_baselines(spec):
    tome = [PruneConfig.uniform(spec, r=r, at=EVERY_BLOCK) for r in (4, 8, 12, 16)]
    merge_only = TrialSpace(SearchSpace(tokens="merge", merge_group=1), spec)
    starts = [merge_only.config(p) for p in merge_only.warm_starts()]
    assert starts[0].is_dense_for(spec) and starts[1:] == tome

    mixed = TrialSpace(SearchSpace(tokens="topk+merge", token_blocks=(3, 6, 9)), spec)
    starts = [mixed.config(p) for p in mixed.warm_starts()]
    assert starts[0].is_dense_for(spec)
    assert all(config in starts for config in tome)
    assert PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9)) in starts
    assert len({c.key() for c in starts}) == len(starts) == 1 + 5 + 4
    for params in mixed.warm_starts():
        assert set(params) == set(mixed.distributions)


def test_top_k_and_threshold_spaces_search_no_merge(spec):
    for tokens in ("topk", "threshold", "none"):
        space = TrialSpace(SearchSpace(tokens=tokens, heads=True), spec)
        assert not [n for n in space.distributions if n.startswith("merge_")] and not space.op_params.get("merge")


def test_merge_modes_ignore_token_blocks_the_model_lacks_but_mixed_mode_does_not(spec):
    TrialSpace(SearchSpace(tokens="merge", token_blocks=(3, 12)), spec)
    with pytest.raises(SpaceError, match="token_blocks \\[12\\]"):
        TrialSpace(SearchSpace(tokens="topk+merge", token_blocks=(3, 12)), spec)


def test_merging_is_refused_on_models_that_pool_a_token_grid(spec):
    pooled = spec.model_copy(update={"family": "pit"})
    with pytest.raises(SpaceError, match="tokens=merge: merge is supported on plain ViT"):
        TrialSpace(SearchSpace(tokens="merge"), pooled)
    TrialSpace(SearchSpace(tokens="topk"), pooled)
