"""Searches that merge tokens (ToMe), alone or beside top-k, on a small real ViT.

At batch 8 the FPGA's table prices a merge at every block of the small model under the dense model,
so a budget below dense leaves merging configs on the front.
"""

from __future__ import annotations

import optuna
import pytest

from pruning import PruneConfig
from pruning.bundle import load_bundle
from pruning.metrics import evaluate
from search import JobContext, run_search
from tests.search.tiny import tiny_job

MIXED = {"tokens": "topk+merge", "token_blocks": [1, 2], "merge_group": 2, "package_token": "off"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    job = tiny_job(root, trials=10, batch=8, budget_ratio=0.8, space=MIXED)
    url = f"sqlite:///{root / 'search.db'}"
    result = run_search(job, url, root / "out", show_progress=False)
    study = optuna.load_study(study_name=job.study_name(), storage=url)
    return root, result, study, JobContext.from_study(study)


def token_counts(config: PruneConfig, n: int) -> list[int]:
    """Patch tokens left after each token op of `config`, from `n`: the same for every image."""
    counts = []
    for block in config.blocks:
        if block.reduces_tokens:
            n = block.tokens.kept(n)
            counts.append(n)
    return counts


def configs(study: optuna.Study) -> list[PruneConfig]:
    return [PruneConfig.model_validate(t.user_attrs["config"]) for t in study.trials]


def test_warm_starts_hold_the_top_k_baselines_and_tome_uniform_merging(mixed):
    _, _, study, context = mixed
    tried = configs(study)
    assert tried[0].is_dense_for(context.spec)
    assert PruneConfig.uniform(context.spec, r=2, at=(0, 1, 2, 3)) in tried  # 4 tokens: r=2 at most
    assert PruneConfig.uniform(context.spec, keep_ratio=0.7, at=(1, 2)) in tried


def test_merge_trials_are_priced_before_their_forward_pass_and_evaluated_within_budget(mixed):
    _, result, study, context = mixed
    merging = [(t, c) for t, c in zip(study.trials, configs(study), strict=True) if c.uses("merge")]
    assert merging
    for trial, config in merging:
        predicted = context.predictor.predict(config, context.spec, 8).ms
        assert trial.values[1] == pytest.approx(predicted, abs=1e-3)
        assert trial.user_attrs["evaluated"] == (predicted <= result.budget_ms)
        if trial.user_attrs["evaluated"]:
            assert trial.user_attrs["kept_tokens"] == token_counts(config, 4)
            first = min(i for i, b in enumerate(config.blocks) if b.reduces_tokens)
            assert trial.user_attrs["first_pruned_block"] == first


def test_merging_pareto_models_are_bundles_with_honest_validation_figures(mixed):
    root, result, _, context = mixed
    rows = [m for m in result.models if PruneConfig.model_validate(m["config"]).uses("merge")]
    assert rows and all(m["predicted_ms"] <= result.budget_ms + 1e-6 for m in result.models)
    for row in rows:
        pruned = load_bundle(root / "out" / row["bundle"])
        assert pruned.config.uses("merge")
        metrics, _ = evaluate(pruned, context.images("val"))
        assert metrics.top1 == row["val"]["top1"]


def test_a_merge_only_search_runs_tome_first_and_keeps_only_merging_configs(tmp_path):
    job = tiny_job(tmp_path, trials=4, batch=8, budget_ratio=0.8, space={"tokens": "merge", "merge_group": 2})
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_search(job, url, tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study, storage=url)
    assert set(study.trials[1].params.items()) == {("merge_0-1", 2), ("merge_2-3", 2)}
    assert all(set(t.params) == {"merge_0-1", "merge_2-3"} for t in study.trials)
    assert result.models and all(PruneConfig.model_validate(m["config"]).uses("merge") for m in result.models)
