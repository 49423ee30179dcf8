"""Per-block precision searched: a quantised trial may keep its most sensitive blocks float
(`SearchSpace.keep_float`), is priced block by block, and its Pareto model is a bundle that keeps them float."""

from __future__ import annotations

import optuna
import pytest

from latency_models.mixed import MixedPrecisionPredictor
from latency_models.registry import Registry
from pruning import PruneConfig, describe
from pruning.bundle import load_bundle
from search import SearchSpace, check_job, run_search
from search.pareto import pareto_trials
from search.space import FLOAT_BLOCKS, TrialSpace
from search.trials import trial_float_blocks, trial_precision
from tests.search.tiny import MODEL, tiny_job, tiny_model

SPACE = SearchSpace(tokens="topk", token_blocks=(1, 2), heads=True, group=2, precisions=("int8",), keep_float=2)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    job = tiny_job(root, device="mobile-cpu", space=SPACE, trials=14, budget_ratio=1.0)
    url = f"sqlite:///{root / 'search.db'}"
    result = run_search(job, url, root / "out", show_progress=False)
    return job, root, result, optuna.load_study(study_name=job.study_name(), storage=url)


def test_the_count_of_float_blocks_is_a_dimension_that_starts_from_whole_models():
    space = TrialSpace(SPACE, describe(tiny_model(), MODEL))
    assert space.distributions[FLOAT_BLOCKS].low == 0 and space.distributions[FLOAT_BLOCKS].high == 2
    assert all(params[FLOAT_BLOCKS] == 0 for params in space.warm_starts())
    assert space.cheapest_params()[FLOAT_BLOCKS] == 0
    mixed = SPACE.model_copy(update={"precisions": ("fp32", "int8")})
    assert TrialSpace(mixed, space.spec).float_count({"precision": "fp32", FLOAT_BLOCKS: 2}) == 0  # fp32 is whole


def test_trials_keep_the_most_sensitive_blocks_float_and_are_priced_block_by_block(searched):
    job, _, _, study = searched
    spec = describe(tiny_model(), MODEL)
    registry = Registry()
    float_, int8 = (registry.predictor(registry.priced_as(job.device, p), spec, [1]) for p in ("fp32", "int8"))
    trials = [t for t in study.trials if t.user_attrs.get("evaluated") and "duplicate_of" not in t.user_attrs]
    chosen = {len(trial_float_blocks(t)): trial_float_blocks(t) for t in trials}
    assert {0, 1, 2} <= chosen.keys()  # the sampler tried each count
    assert set(chosen[1]) < set(chosen[2])  # one ranking: the two most sensitive include the most sensitive
    for trial in trials:
        assert len(trial_float_blocks(trial)) == trial.params[FLOAT_BLOCKS] and trial_precision(trial) == "int8"
        config = PruneConfig.model_validate(trial.user_attrs["config"])
        price = MixedPrecisionPredictor(int8, float_, trial_float_blocks(trial)).predict(config, spec, 1).ms
        assert trial.values[1] == pytest.approx(price, rel=1e-4)
    keys = {t.user_attrs["config_key"] for t in trials if t.user_attrs["config_key"].startswith(
        PruneConfig.dense(spec).key())}  # fmt: skip
    assert len(keys) == len({len(trial_float_blocks(t)) for t in trials if t.user_attrs["config_key"] in keys})


def test_pareto_models_keep_their_trials_float_blocks(searched):
    _, root, result, study = searched
    rows = {row["trial"]: row for row in result.models}
    for trial in pareto_trials(study):
        row = rows[trial.number]
        model = load_bundle(root / "out" / row["bundle"])
        assert model.quantisation.get("float_blocks", []) == row.get("float_blocks", []) == trial_float_blocks(trial)
        assert row["predicted_ms"] == pytest.approx(trial.values[1], abs=1e-4)  # priced as its trial was
        if trial_float_blocks(trial):
            assert row["device"]["float_blocks_priced_as"] == "mobile-cpu:snapdragon-8-gen-2"


def test_keeping_blocks_float_needs_a_quantised_precision_and_fewer_blocks_than_the_model_has(tmp_path):
    with pytest.raises(ValueError, match="keep_float keeps blocks float inside a quantised model"):
        SearchSpace(token_blocks=(1, 2), keep_float=1)
    job = tiny_job(tmp_path, space=SPACE.model_copy(update={"keep_float": 4}))
    with pytest.raises(ValueError, match=r"keep_float 4: .* has 4 blocks; keep fewer float"):
        check_job(job)
