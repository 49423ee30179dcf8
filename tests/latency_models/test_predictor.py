"""The predictor against a table whose costs follow a known formula, so every sum can be checked."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
import timm

from latency_models.interpolate import expand_1d, expand_2d
from latency_models.predictor import CoverageError, LatencyPredictor, shape_of
from latency_models.profiling import composite_parts, offgrid_tokens, plan
from latency_models.schema import LatencyTable
from pruning import BlockConfig, PruneConfig, describe
from pruning.tokens.merge import MergeReduction
from pruning.tokens.threshold import ThresholdReduction
from pruning.tokens.topk import TopKReduction
from tests.latency_models.specs import DEIT_TINY

CHAIN_EXTRA = 0.05


def attention(b, n, heads, scored=False, masked=False):
    return b * (0.01 * n * (heads + 1) + 0.5 * scored + 0.2 * masked)


def mlp(b, n, hidden):
    return b * 0.001 * n * (hidden + 8)


def select(b, n_in, n_out, package, method):
    return b * (0.003 * n_in + 0.001 * n_out + 0.1 * package + 0.05 * (method == "compact"))


def merge(b, n_in, r):
    return b * (0.004 * n_in + 0.002 * r + 0.03)


def composite_extra(key: dict) -> float:
    """What a composite entry adds to its parts in the formula table: only the chain correction of each
    dense block it runs, so reducing chains and the whole model add nothing on top of that."""
    blocks = {"chain": 1, "model": key.get("depth", 0), "reducing_chain": 2}[key["op"]]
    return key["batch"] * CHAIN_EXTRA * blocks


def cost(key: dict, extra=composite_extra) -> float:
    b, op = key["batch"], key["op"]
    if (parts := composite_parts(key)) is not None:
        return sum(cost(part) for part in parts) + extra(key)
    if op == "merge":
        return merge(b, key["tokens_in"], key["tokens_in"] - key["tokens_out"])
    if op == "attention":
        return attention(b, key["tokens"], key["heads"], key["scored"], key["masked"])
    if op == "mlp":
        return mlp(b, key["tokens"], key["mlp_hidden"])
    if op == "select":
        return select(b, key["tokens_in"], key["tokens_out"], key["package"], key["method"])
    if op == "embed":
        return 1.0 * b
    return b * 0.002 * key["tokens"]  # head


@pytest.fixture(scope="module")
def spec():
    model = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=4, num_classes=10)
    return describe(model, "tiny64")


def formula_table(spec, batches, keep=lambda key: True, extra=composite_extra) -> LatencyTable:
    keys = plan(shape_of(spec), batches)
    entries = [k | {"median_ms": cost(k, extra), "spread_ms": 0.0} for k in keys if keep(k)]
    device = {
        "name": "formula",
        "kind": "analytic",
        "runtime": "formula",
        "hardware": "none",
        "batch_sizes": batches,
        "created": datetime.now(timezone.utc),
        "tool_version": "test",
    }
    return LatencyTable.parse({"schema": "vitprune.latency-table", "version": 1, "device": device, "entries": entries})


@pytest.fixture(scope="module")
def predictor(spec):
    return LatencyPredictor(formula_table(spec, [1, 4]))


def test_dense_model_is_the_sum_of_its_parts(predictor, spec):
    b, n = 4, 17
    expected = 1.0 * b + 4 * (attention(b, n, 3) + b * CHAIN_EXTRA + mlp(b, n, 768)) + b * 0.002 * n
    got = predictor.predict(PruneConfig.dense(spec), spec, batch=4)
    assert got.ms == pytest.approx(expected, rel=1e-9)
    assert not got.extrapolated


def test_top_k_with_package_token_and_pruned_heads_and_channels(predictor, spec):
    blocks = [BlockConfig(heads=3, mlp_hidden=768)] * 4
    blocks[1] = BlockConfig(heads=2, mlp_hidden=384, tokens=TopKReduction(keep_ratio=0.5))
    blocks[3] = BlockConfig(heads=1, mlp_hidden=200)
    config = PruneConfig(blocks=tuple(blocks), package_token=True)
    b, kept = 1, math.ceil(0.5 * 16)
    after = 1 + kept + 1  # class token, kept patches, package token
    expected = (
        1.0
        + attention(b, 17, 3) + CHAIN_EXTRA + mlp(b, 17, 768)
        + attention(b, 17, 2, scored=True) + CHAIN_EXTRA + select(b, 17, after, True, "gather") + mlp(b, after, 384)
        + attention(b, after, 3) + CHAIN_EXTRA + mlp(b, after, 768)
        + attention(b, after, 1) + CHAIN_EXTRA + mlp(b, after, 200)
        + 0.002 * after
    )  # fmt: skip
    prediction = predictor.breakdown(config, spec, batch=1)
    assert prediction.ms == pytest.approx(expected, rel=1e-9)
    assert sum(prediction.parts.values()) == pytest.approx(prediction.ms)
    assert prediction.parts["select"] == pytest.approx(select(b, 17, after, True, "gather"))


def test_thresholds_need_measured_counts_and_pad_later_blocks_of_a_batch(predictor, spec):
    blocks = [BlockConfig(heads=3, mlp_hidden=768)] * 4
    blocks[0] = BlockConfig(heads=3, mlp_hidden=768, tokens=ThresholdReduction(threshold=1.0))
    config = PruneConfig(blocks=tuple(blocks))
    with pytest.raises(ValueError, match="kept_tokens"):
        predictor.predict(config, spec, batch=4)
    with pytest.raises(ValueError, match="lists 2 counts"):
        predictor.predict(config, spec, batch=4, kept_tokens=[5, 5])
    b, after = 4, 1 + 5
    expected = (
        1.0 * b
        + attention(b, 17, 3, scored=True) + b * CHAIN_EXTRA
        + select(b, 17, after, False, "compact") + mlp(b, after, 768)
        + 3 * (attention(b, after, 3, masked=True) + b * CHAIN_EXTRA + mlp(b, after, 768))
        + b * 0.002 * after
    )  # fmt: skip
    assert predictor.predict(config, spec, batch=4, kept_tokens=[5]).ms == pytest.approx(expected, rel=1e-9)


def test_batch_sizes_between_and_beyond_the_table(predictor, spec):
    dense = PruneConfig.dense(spec)
    one, four = predictor.predict(dense, spec, 1).ms, predictor.predict(dense, spec, 4).ms
    between = predictor.predict(dense, spec, 2)
    assert between.ms == pytest.approx(one + (four - one) / 3) and not between.extrapolated
    beyond = predictor.predict(dense, spec, 8)
    assert beyond.ms == pytest.approx(one + (four - one) * 7 / 3) and beyond.extrapolated


def test_fewer_tokens_heads_or_channels_never_cost_more(predictor, spec):
    previous = predictor.predict(PruneConfig.dense(spec), spec).ms
    for ratio in (0.9, 0.6, 0.3):
        current = predictor.predict(PruneConfig.uniform(spec, keep_ratio=ratio, at=(1,)), spec).ms
        assert current < previous
        previous = current
    assert (
        predictor.predict(PruneConfig.uniform(spec, head_ratio=0.34, mlp_ratio=0.5), spec).ms
        < predictor.predict(PruneConfig.dense(spec), spec).ms
    )


def test_a_model_the_table_does_not_cover_is_refused_with_what_to_do(predictor):
    small = describe(timm.create_model("deit_small_patch16_224", img_size=64, depth=2), "deit_small")
    with pytest.raises(CoverageError, match=r"embed_dim=384.*vitprune profile --model deit_small"):
        predictor.predict(PruneConfig.dense(small), small)


def test_interpolation_is_exact_on_grid_points_linear_between_and_flags_the_outside():
    xs, values = np.array([2, 4, 8]), np.array([1.0, 3.0, 4.0])
    full, outside = expand_1d(xs, values, 11)
    assert full[[2, 4, 8]].tolist() == [1.0, 3.0, 4.0]
    assert full[3] == pytest.approx(2.0) and full[6] == pytest.approx(3.5)
    assert full[0] == pytest.approx(-1.0) and full[10] == pytest.approx(4.5)  # linear extension
    assert outside.tolist() == [True, True] + [False] * 7 + [True, True]
    ys = np.array([0, 5, 10])
    grid = np.add.outer(2.0 * xs, 3.0 * ys) + np.multiply.outer(xs, ys)
    dense, mask = expand_2d(xs, ys, grid, 9, 11)
    i, j = np.meshgrid(np.arange(9), np.arange(11), indexing="ij")
    assert np.allclose(dense, 2 * i + 3 * j + i * j)  # bilinear functions are reproduced exactly
    assert mask[1, 5] and not mask[5, 7]


def test_merge_and_top_k_after_it_are_the_sum_of_their_parts(predictor, spec):
    blocks = [BlockConfig(heads=3, mlp_hidden=768)] * 4
    blocks[1] = BlockConfig(heads=2, mlp_hidden=768, tokens=MergeReduction(r=3))
    blocks[2] = BlockConfig(heads=3, mlp_hidden=768, tokens=TopKReduction(keep_ratio=0.5))
    blocks[3] = BlockConfig(heads=3, mlp_hidden=384, tokens=MergeReduction(r=2))
    config = PruneConfig(blocks=tuple(blocks), package_token=True)
    # 16 patches -> 13 after merging 3 -> top-k keeps ceil(6.5) = 7 plus a package token -> merging 2 of
    # the 7 patches (the package token passes through, so the merge is looked up at 1 + 7 tokens) -> 5.
    expected_merge = merge(1, 17, 3) + merge(1, 8, 2)
    expected = (
        1.0
        + attention(1, 17, 3) + CHAIN_EXTRA + mlp(1, 17, 768)
        + attention(1, 17, 2) + CHAIN_EXTRA + merge(1, 17, 3) + mlp(1, 14, 768)
        + attention(1, 14, 3, scored=True) + CHAIN_EXTRA + select(1, 14, 9, True, "gather") + mlp(1, 9, 768)
        + attention(1, 9, 3) + CHAIN_EXTRA + merge(1, 8, 2) + mlp(1, 7, 384)
        + 0.002 * 7
    )  # fmt: skip
    prediction = predictor.breakdown(config, spec, batch=1)
    assert prediction.ms == pytest.approx(expected, rel=1e-9)
    assert not prediction.extrapolated
    assert prediction.parts["merge"] == pytest.approx(expected_merge)
    assert prediction.parts["select"] == pytest.approx(select(1, 14, 9, True, "gather"))
    assert sum(prediction.parts.values()) == pytest.approx(prediction.ms)
    assert predictor.predict(config, spec, batch=1).ms == pytest.approx(expected, rel=1e-9)


def test_merge_counts_between_grid_points_are_interpolated(predictor, spec):
    # 5 pairs of 17 tokens is not on the grid (r = 1, 2, 3, 4, 6, 8 there): linear between 4 and 6.
    config = PruneConfig.uniform(spec, r=5, at=(0,))
    assert predictor.breakdown(config, spec, batch=4).parts["merge"] == pytest.approx(merge(4, 17, 5))


def test_merging_more_pairs_prices_fewer_tokens_after_it(predictor, spec):
    previous = predictor.breakdown(PruneConfig.dense(spec), spec, batch=4)
    assert previous.parts["merge"] == 0.0
    for r in range(1, 9):
        current = predictor.breakdown(PruneConfig.uniform(spec, r=r, at=(0, 1, 2, 3)), spec, batch=4)
        assert current.parts["merge"] > 0 and not current.extrapolated
        assert current.parts["mlp"] < previous.parts["mlp"], f"r={r}"
        assert current.parts["attention"] < previous.parts["attention"], f"r={r}"
        assert current.parts["head"] <= previous.parts["head"]
        previous = current


def test_a_table_without_merge_entries_prices_the_rest_and_names_what_to_profile(predictor, spec):
    old = LatencyPredictor(formula_table(spec, [1, 4], keep=lambda key: key["op"] != "merge"))
    for config in (PruneConfig.dense(spec), PruneConfig.uniform(spec, keep_ratio=0.5, at=(1,), package_token=True)):
        assert old.predict(config, spec, batch=4).ms == pytest.approx(predictor.predict(config, spec, batch=4).ms)
    assert "merge" in old.unpriced(spec, 1) and "merge" not in predictor.unpriced(spec, 1)
    merging = PruneConfig.uniform(spec, r=2, at=(1, 2))
    with pytest.raises(CoverageError, match=r"no merge entries with embed_dim=192, batch=1, prefix=1, heads=3, "
                       r"head_dim=64 .*vitprune profile --model tiny64"):  # fmt: skip
        old.predict(merging, spec, batch=1)

    # Merge entries at batch 1 only: batch 1 is priced, batch 2 (between 1 and 4) names batch 4.
    partial = LatencyPredictor(formula_table(spec, [1, 4], keep=lambda key: key["op"] != "merge" or key["batch"] == 1))
    assert partial.predict(merging, spec, batch=1).ms == pytest.approx(predictor.predict(merging, spec, batch=1).ms)
    with pytest.raises(CoverageError, match=r"no merge entries with embed_dim=192, batch=4"):
        partial.predict(merging, spec, batch=2)
    assert partial.predict(PruneConfig.dense(spec), spec, batch=2).ms > 0


def test_merges_outside_the_measured_grid_are_flagged(spec):
    predictor = LatencyPredictor(
        formula_table(spec, [1], keep=lambda key: key["op"] != "merge" or key["tokens_in"] >= 12)
    )
    assert not predictor.predict(PruneConfig.uniform(spec, r=2, at=(0,)), spec).extrapolated
    # 17 -> 15 -> 13 -> 11 tokens: the last merge starts at 11 tokens, below the grid's 12.
    assert predictor.predict(PruneConfig.uniform(spec, r=2, at=(0, 1, 2, 3)), spec).extrapolated


def test_blocks_at_token_counts_off_the_grid_cost_what_the_off_grid_chain_entries_add():
    spec = DEIT_TINY
    probes = set(offgrid_tokens(197))
    assert probes and all(16 < t < 196 for t in probes) and any(t % 8 == 0 for t in probes)

    def sawtooth(key: dict) -> dict:
        # 1% more per token past a multiple of 8, as this shared host's CPU kernels roughly show.
        if key["op"] == "chain" and key["tokens"] in probes:
            return key | {"median_ms": key["median_ms"] * (1 + 0.01 * (key["tokens"] % 8))}
        return key

    table = formula_table(spec, [1])
    smooth = LatencyPredictor(table)
    toothed = LatencyPredictor(
        table.model_copy(update={"entries": [type(e)(**sawtooth(e.model_dump())) for e in table.entries]})
    )
    plain, look = smooth.lookup(spec, 1), toothed.lookup(spec, 1)
    for tokens, factor in ((123, 1.03), (150, 1.06), (121, 1.01), (120, 1.0), (12, 1.0), (196, 1.0), (197, 1.0)):
        assert look.mlp[tokens] == pytest.approx(plain.mlp[tokens] * factor)
        assert look.attention[(True, False)][tokens] == pytest.approx(plain.attention[(True, False)][tokens] * factor)
        assert look.chain[tokens] == pytest.approx(plain.chain[tokens] * factor)
    gather = look.entries("select")[("gather", False)]
    assert gather == pytest.approx(plain.entries("select")[("gather", False)])  # token ops as measured

    dense = PruneConfig.dense(spec)
    assert toothed.predict(dense, spec).ms == pytest.approx(smooth.predict(dense, spec).ms)  # 197 is on the grid
    # Top-k at block 1 leaves 1 + 122 = 123 tokens for blocks 2-11 (and the MLP of block 1).
    config = PruneConfig.uniform(spec, keep_ratio=0.62, at=(1,))
    blocks_after = 10 * (plain.attention[(False, False)][123, 3] + plain.chain[123] + plain.mlp[123, 768])
    extra = toothed.predict(config, spec).ms - smooth.predict(config, spec).ms
    assert extra == pytest.approx(0.03 * (blocks_after + plain.mlp[123, 768]))


def test_reducing_blocks_add_what_the_composites_measure_and_the_model_scales_every_block(spec):
    # Reducing pairs cost more than their parts by an amount linear in the tokens they start from (so
    # interpolation between the measured starts is exact), the whole model 0.3 ms per image more.
    slope = {"topk": 0.004, "threshold": 0.006, "merge": 0.01}

    def extra(key: dict) -> float:
        added = composite_extra(key)
        if key["op"] == "reducing_chain":
            added += key["batch"] * slope[key["reduction"]] * key["tokens"]
        return added + (0.3 * key["batch"] if key["op"] == "model" else 0.0)

    plain = LatencyPredictor(formula_table(spec, [1, 4]))
    costly = LatencyPredictor(formula_table(spec, [1, 4], extra=extra))
    starts = {e.tokens for e in costly.table.entries if e.op == "reducing_chain"}
    assert starts == {6, 8, 12, 17}  # the top-k below starts from 14 tokens: interpolated between 12 and 17

    def blocks(predictor, config, batch, kept=None) -> float:
        parts = predictor.breakdown(config, spec, batch, kept).parts
        return sum(parts[p] for p in ("attention", "select", "merge", "mlp"))

    # The model entry's 0.3 ms per image is spread over its blocks (as many as DeiT has, more than
    # `spec`'s): a dense model of that depth would cost what the entry says.
    dense = PruneConfig.dense(spec)
    depth = next(e.depth for e in costly.table.entries if e.op == "model")
    scale = {b: 1 + 0.3 * b / (depth / len(spec.blocks) * blocks(plain, dense, b)) for b in (1, 4)}
    gap = costly.predict(dense, spec, 4).ms - plain.predict(dense, spec, 4).ms
    assert gap == pytest.approx(4 * 0.3 * len(spec.blocks) / depth)
    assert costly.breakdown(dense, spec, 4).parts["embed"] == plain.breakdown(dense, spec, 4).parts["embed"]

    config = list(dense.blocks)
    config[0] = BlockConfig(heads=3, mlp_hidden=768, tokens=MergeReduction(r=3))  # 17 -> 14 tokens
    config[1] = BlockConfig(heads=3, mlp_hidden=768, tokens=TopKReduction(keep_ratio=0.6))  # 14 -> 1 + 8
    config = PruneConfig(blocks=tuple(config))
    # Its blocks, each reducing block's excess included, times the same factor: a share in proportion.
    expected = scale[1] * (blocks(plain, config, 1) + slope["merge"] * 17 + slope["topk"] * 14)
    assert blocks(costly, config, 1) == pytest.approx(expected)
    parts = costly.breakdown(config, spec, 1).parts
    merge = scale[1] * (plain.breakdown(config, spec, 1).parts["merge"] + slope["merge"] * 17)
    assert parts["merge"] == pytest.approx(merge)
    assert sum(parts.values()) == pytest.approx(costly.predict(config, spec, 1).ms)

    # A threshold compacts (per-image widths): priced with the threshold pairs, at the width it keeps.
    config = list(dense.blocks)
    config[2] = BlockConfig(heads=3, mlp_hidden=768, tokens=ThresholdReduction(threshold=1.0))
    config = PruneConfig(blocks=tuple(config))
    expected = scale[4] * (blocks(plain, config, 4, [5]) + 4 * slope["threshold"] * 17)
    assert blocks(costly, config, 4, [5]) == pytest.approx(expected)
