"""PruneConfig: validation names the block and field; JSON and hashing are stable."""

from __future__ import annotations

import pytest
import timm
from pydantic import ValidationError

from pruning import BlockConfig, ConfigError, PruneConfig, describe
from pruning.tokens.threshold import ThresholdReduction
from pruning.tokens.topk import TopKReduction


@pytest.fixture(scope="module")
def spec():
    return describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")


def test_dense_config_round_trips_through_json_and_hashes_stably(spec):
    config = PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9), package_token=True)
    again = PruneConfig.model_validate_json(config.model_dump_json())
    assert again == config
    assert hash(again) == hash(config)
    assert again.key() == config.key()
    assert PruneConfig.dense(spec).key() != config.key()
    assert PruneConfig.dense(spec).is_dense_for(spec)
    assert not config.is_dense_for(spec)


def test_uniform_places_reductions_and_rounds_widths(spec):
    config = PruneConfig.uniform(spec, keep_ratio=0.5, at=(3, 6), mlp_ratio=0.3, head_ratio=0.5)
    assert [i for i, b in enumerate(config.blocks) if b.reduces_tokens] == [3, 6]
    assert all(b.mlp_hidden % 8 == 0 and b.mlp_hidden < 768 for b in config.blocks)
    assert all(b.heads == 2 for b in config.blocks)
    assert TopKReduction(keep_ratio=0.5).kept(196) == 98
    assert TopKReduction(keep_ratio=0.7).kept(196) == 138  # ceil(137.2)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01])
def test_keep_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValidationError, match="keep_ratio"):
        TopKReduction(keep_ratio=ratio)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf")])
def test_threshold_must_be_positive_and_finite(threshold):
    with pytest.raises(ValidationError, match="threshold"):
        ThresholdReduction(threshold=threshold)


def _with_block(spec, index: int, **fields) -> PruneConfig:
    blocks = list(PruneConfig.dense(spec).blocks)
    blocks[index] = blocks[index].model_copy(update=fields)
    return PruneConfig(blocks=tuple(blocks))


@pytest.mark.parametrize(
    ("index", "fields", "message"),
    [
        (4, {"heads": 4}, r"block 4: heads=4 but the model has only 3 heads"),
        (2, {"mlp_hidden": 1024}, r"block 2: mlp_hidden=1024 but the model has only 768"),
        (7, {"mlp_hidden": 500}, r"block 7: mlp_hidden=500 is not a multiple of round_to=8"),
        (5, {"heads": 0, "tokens": TopKReduction(keep_ratio=0.5)}, r"block 5: tokens=topk needs attention scores"),
        (1, {"heads": 0, "tokens": ThresholdReduction(threshold=1.0)}, r"block 1: tokens=threshold needs attention"),
    ],
)
def test_check_names_block_and_field(spec, index, fields, message):
    with pytest.raises(ConfigError, match=message):
        _with_block(spec, index, **fields).check(spec)


def test_wrong_block_count_is_refused(spec):
    config = PruneConfig(blocks=PruneConfig.dense(spec).blocks[:6])
    with pytest.raises(ConfigError, match="lists 6 blocks but deit_tiny_patch16_224 has 12"):
        config.check(spec)


def test_survivor_indices_must_match_counts_and_be_sorted():
    with pytest.raises(ValidationError, match="heads_kept lists 1 heads but heads=2"):
        BlockConfig(heads=2, mlp_hidden=8, heads_kept=(0,))
    with pytest.raises(ValidationError, match="increasing order"):
        BlockConfig(heads=2, mlp_hidden=8, heads_kept=(2, 1))


def test_unknown_fields_and_token_kinds_are_refused():
    with pytest.raises(ValidationError):
        BlockConfig.model_validate({"heads": 1, "mlp_hidden": 8, "tokens": {"kind": "prune", "r": 3}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        BlockConfig.model_validate({"heads": 1, "mlp_hidden": 8, "head": 3})


def test_topk_and_threshold_together_is_refused(spec):
    with pytest.raises(ConfigError, match="not several"):
        PruneConfig.uniform(spec, keep_ratio=0.5, threshold=1.0, at=(3,))
