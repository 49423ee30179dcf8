"""Job specs are validated; a search space maps to PruneConfigs and warm starts correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from pydantic import ValidationError

from pruning import PruneConfig, describe
from search import JobSpec, SearchSpace
from search.space import SpaceError, TrialSpace


@pytest.fixture(scope="module")
def spec():
    return describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")


def job(**changes) -> JobSpec:
    fields = {
        "model": "deit_tiny_patch16_224",
        "weights": Path("w.safetensors"),
        "device": "host-cpu",
        "budget_ratio": 0.7,
        "calib": Path("calib"),
        "val": Path("val"),
    }
    return JobSpec(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget_ms": 10.0}, "exactly one budget"),
        ({"budget_ratio": None}, "exactly one budget"),
        ({"weights": None}, "no weights"),
        ({"space": {"token_blocks": [6, 3]}}, "increasing order"),
        ({"space": {"keep_min": 0.33}}, "multiple of 0.05"),
        ({"space": {"tokens": "none"}}, "searches nothing"),
        ({"space": {"tokens": "threshold+merge"}}, "merge cannot be combined with threshold"),
        ({"space": {"tokens": "merge+topk"}}, "write the mixed mode as topk\\+merge"),
        ({"space": {"tokens": "topk+merge", "token_blocks": []}}, "needs token_blocks"),
        ({"space": {"tokens": "merge", "merge_max": 13}}, "merge_max must be a multiple of 2"),
        ({"space": {"merge_group": 0}}, "merge_group"),
        ({"sampler": "random"}, "sampler"),
        ({"batch": 0}, "batch"),
        ({"device": "mobile-cpu@one+int8"}, "names a dtype .*: name 'mobile-cpu@one' and list the precisions"),
        ({"device": "fpga:zcu102+int16"}, "names a dtype .*: name 'fpga:zcu102'"),
        ({"space": {"precisions": []}}, "one or more distinct precisions"),
        ({"space": {"precisions": ["int8", "int8"]}}, "one or more distinct precisions"),
        ({"space": {"precisions": ["int4"]}}, "precisions"),
        ({"space": {"precisions": ["fp32", "int8"]}, "score_dtype": "bfloat16"}, "use score_dtype float32"),
    ],
)
def test_bad_jobs_are_refused_with_a_message_naming_the_problem(changes, message):
    with pytest.raises(ValidationError, match=message):
        job(**changes)


def test_the_study_name_ignores_the_trial_count_but_not_the_budget():
    assert job(trials=10).study_name() == job(trials=50).study_name()
    assert job(budget_ratio=0.6).study_name() != job().study_name()
    assert JobSpec.model_validate_json(job().model_dump_json()) == job()


def test_jobs_that_do_not_merge_keep_the_study_key_they_had_before_merging_existed():
    # Pinned: the keys these jobs had before the merge fields (and before objectives: they ranked by
    # top-1), so their existing studies still resume; a stored spec without an objective reads so. Stored
    # specs name their token op (top-k, the default then).
    paths = {"calib": Path("c"), "val": Path("v"), "objective": "top1", "space": {"tokens": "topk"}}
    assert job(**paths).study_key() == "5d63d4dee056"
    stored = JobSpec.stored(job(**paths).model_dump(mode="json", exclude={"objective"}))
    assert stored.study_key() == "5d63d4dee056"
    threshold = job(**paths | {"space": {"tokens": "threshold", "heads": True, "token_blocks": [2, 5]}})
    assert threshold.study_key() == "8b3faf0e3c30"
    topk = job(space={"tokens": "topk"})
    assert job(space={"tokens": "topk", "merge_max": 12, "merge_group": 1}).study_key() == topk.study_key()
    merging = job(space={"tokens": "merge"})
    assert merging.study_key() != topk.study_key()
    assert job(space={"tokens": "merge", "merge_max": 12}).study_key() != merging.study_key()
    assert job(space={"tokens": "merge", "merge_group": 4}).study_key() != merging.study_key()


def test_dense_and_cheapest_params_span_the_space(spec):
    space = TrialSpace(SearchSpace(heads=True, mlp=True, score=("cls_attn", "head_weighted")), spec)
    assert set(space.distributions) == {
        "keep_3",
        "keep_6",
        "keep_9",
        "heads_0-2",
        "heads_3-5",
        "heads_6-8",
        "heads_9-11",
        "mlp_0-2",
        "mlp_3-5",
        "mlp_6-8",
        "mlp_9-11",
        "score",
        "package_token",
    }
    assert space.config(space.dense_params()).is_dense_for(spec)
    cheapest = space.config(space.cheapest_params())
    assert [b.tokens.keep_ratio for b in cheapest.blocks if b.reduces_tokens] == [0.4, 0.4, 0.4]
    assert {b.heads for b in cheapest.blocks} == {2} and {b.mlp_hidden for b in cheapest.blocks} == {384}
    cheapest.check(spec)


def test_grouped_params_set_every_block_of_their_group(spec):
    space = TrialSpace(SearchSpace(tokens="none", heads=True, mlp=True, group=3), spec)
    params = space.dense_params() | {"heads_3-5": 2, "mlp_9-11": 512}
    config = space.config(params)
    assert [b.heads for b in config.blocks] == [3, 3, 3, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    assert [b.mlp_hidden for b in config.blocks][8:] == [768, 512, 512, 512]
    assert not config.reduces_tokens and not config.package_token


def test_threshold_space_keeps_tokens_at_zero_and_thresholds_above(spec):
    space = TrialSpace(SearchSpace(tokens="threshold", token_blocks=(4,), package_token="on"), spec)
    assert not space.config({"threshold_4": 0.0}).reduces_tokens
    config = space.config({"threshold_4": 0.75})
    assert config.blocks[4].tokens.threshold == 0.75 and config.package_token


def test_warm_starts_are_dense_then_the_uniform_baselines(spec):
    space = TrialSpace(SearchSpace(token_blocks=(2, 3, 6, 9), mlp=True), spec)
    starts = [space.config(p) for p in space.warm_starts()]
    assert starts[0].is_dense_for(spec)
    keeps = {
        (c.blocks[3].tokens.keep_ratio, c.blocks[2].reduces_tokens) for c in starts[1:] if c.blocks[3].reduces_tokens
    }
    assert keeps == {(k, False) for k in (0.5, 0.6, 0.7, 0.8, 0.9)}
    baseline = PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9))
    assert baseline in starts
    assert PruneConfig.uniform(spec, mlp_ratio=0.5) in starts
    assert len({c.key() for c in starts}) == len(starts)


def test_token_blocks_outside_the_model_are_refused(spec):
    with pytest.raises(SpaceError, match="token_blocks \\[12\\]"):
        TrialSpace(SearchSpace(token_blocks=(3, 12)), spec)


def test_options_that_change_nothing_do_not_make_a_new_config(spec):
    space = TrialSpace(SearchSpace(score=("cls_attn", "head_weighted")), spec)
    dense = space.dense_params()
    variants = [dense | {"package_token": True}, dense | {"score": "head_weighted"}]
    assert {space.config(p).key() for p in [dense, *variants]} == {space.config(dense).key()}
    pruned = dense | {"keep_3": 0.7}
    assert space.config(pruned | {"package_token": True}).key() != space.config(pruned).key()


def test_a_safety_margin_is_part_of_the_study_and_must_be_a_share_or_auto():
    assert job(budget_margin=0.05).study_key() != job().study_key() != job(budget_margin="auto").study_key()
    for bad in (-0.1, 1.5, "sometimes"):
        with pytest.raises(ValidationError, match="budget_margin"):
            job(budget_margin=bad)


def test_auto_margin_is_the_share_by_which_the_tables_check_saw_models_run_over(spec):
    from datetime import datetime, timezone

    from latency_models.analytic import PRESETS, analytic_table
    from latency_models.calibration.model import KEY_FIELDS, shape_key
    from latency_models.predictor import LatencyPredictor, shape_of
    from latency_models.schema import Calibration, CalibrationCheck
    from search.context import budget_margin

    table = analytic_table(PRESETS["fpga:zcu102"], [shape_of(spec)], [1])
    predictor = LatencyPredictor(table)
    assert budget_margin(job(budget_margin="auto"), predictor, spec) == 0.0  # no check: nothing to go by
    assert budget_margin(job(budget_margin=0.07), predictor, spec) == 0.07
    check = CalibrationCheck(
        configs=24, seed=1, within_10pct=0.9, bias=-0.02, mape=0.04, worst=-0.12, under_p95=0.083, drift=1.0
    )
    calibration = Calibration(
        **dict(zip(KEY_FIELDS, shape_key(spec, 1), strict=True)),
        scale=0.0, offset_ms=0.0, configs=32, seed=0, fit_mape=0.03, raw_bias=-0.05, check=check,
        created=datetime.now(timezone.utc),
    )  # fmt: skip
    calibrated = LatencyPredictor(table.calibrated(calibration))
    assert budget_margin(job(budget_margin="auto"), calibrated, spec) == pytest.approx(0.083)
    assert budget_margin(job(budget_margin="auto", batch=4), calibrated, spec) == 0.0  # checked at batch 1 only


def test_a_job_that_names_no_token_op_searches_the_one_measured_best_on_its_device():
    phone = "mobile-cpu:tensor-g3"
    assert job(device="mobile-cpu").space.tokens == job(device=phone).space.tokens == "merge"
    assert job().space.tokens == "topk"  # host-cpu, where top-k measured best
    assert job(device="cuda").space.tokens == job(device="fpga:zcu102").space.tokens == "topk"  # nothing measured
    named = job(space=SearchSpace(tokens="topk", heads=True))
    assert named.space.tokens == "topk" and named.space.heads
    others_set = job(device=phone, space=SearchSpace(heads=True, group=2))  # the op unnamed, the rest as given
    assert (others_set.space.tokens, others_set.space.heads, others_set.space.group) == ("merge", True, 2)
    assert job(device=phone, space={"mlp": True}).space.tokens == "merge"
    # A stored job names its op, so it keeps it (and its study) whatever the default becomes.
    stored = job(space={"tokens": "topk"})
    assert JobSpec.stored(stored.model_dump_json()).space.tokens == "topk"
    assert JobSpec.stored(stored.model_dump_json()).study_key() == stored.study_key()
