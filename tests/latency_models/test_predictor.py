"""The predictor against a table whose costs follow a known formula, so every sum can be checked."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
import timm

from latency_models.interpolate import expand_1d, expand_2d
from latency_models.predictor import CoverageError, LatencyPredictor, shape_of
from latency_models.profiling import plan
from latency_models.schema import LatencyTable
from pruning import BlockConfig, PruneConfig, ThresholdReduction, TopKReduction, describe

CHAIN_EXTRA = 0.05


def attention(b, n, heads, scored=False, masked=False):
    return b * (0.01 * n * (heads + 1) + 0.5 * scored + 0.2 * masked)


def mlp(b, n, hidden):
    return b * 0.001 * n * (hidden + 8)


def select(b, n_in, n_out, package, method):
    return b * (0.003 * n_in + 0.001 * n_out + 0.1 * package + 0.05 * (method == "compact"))


def cost(key: dict) -> float:
    b, op = key["batch"], key["op"]
    if op == "attention":
        return attention(b, key["tokens"], key["heads"], key["scored"], key["masked"])
    if op == "mlp":
        return mlp(b, key["tokens"], key["mlp_hidden"])
    if op == "select":
        return select(b, key["tokens_in"], key["tokens_out"], key["package"], key["method"])
    if op == "chain":
        return attention(b, key["tokens"], key["heads"]) + mlp(b, key["tokens"], key["mlp_hidden"]) + b * CHAIN_EXTRA
    if op == "embed":
        return 1.0 * b
    return b * 0.002 * key["tokens"]  # head


@pytest.fixture(scope="module")
def spec():
    model = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=4, num_classes=10)
    return describe(model, "tiny64")


@pytest.fixture(scope="module")
def predictor(spec):
    entries = [k | {"median_ms": cost(k), "spread_ms": 0.0} for k in plan(shape_of(spec), [1, 4])]
    device = {
        "name": "formula",
        "kind": "analytic",
        "runtime": "formula",
        "hardware": "none",
        "batch_sizes": [1, 4],
        "created": datetime.now(timezone.utc),
        "tool_version": "test",
    }
    return LatencyPredictor(
        LatencyTable.parse({"schema": "vitprune.latency-table", "version": 1, "device": device, "entries": entries})
    )


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
