"""Searches that merge tokens (ToMe), alone or beside top-k, on a small real ViT.

At batch 8 the FPGA's table prices a merge at every block of the small model under the dense model,
so a budget below dense leaves merging configs on the front.
"""

from __future__ import annotations

from dataclasses import replace

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


def test_a_job_says_which_token_ops_pay_on_its_device(mixed):
    """The best uniform baseline of each op, priced as a share of dense; an op priced at or over dense
    does not pay (on a GPU in eager mode, merging did not)."""
    _, _, _, context = mixed
    payoff = context.token_payoff()
    assert set(payoff) == {"topk", "merge"} and all(0 < ratio < 1 for ratio in payoff.values())
    dense_ms, predict = context.dense_ms, context.predictor.predict

    class SlowMerges:  # a device where every merge costs more than the tokens it removes save
        table = context.predictor.table

        def predict(self, config, spec, batch, **kw):
            merges = any(b.tokens.kind_name() == "merge" for b in config.blocks)
            return type("P", (), {"ms": 1.3 * dense_ms if merges else predict(config, spec, batch, **kw).ms})()

    slow = replace(context, predictor=SlowMerges())
    assert slow.token_payoff()["merge"] == 1.3 and slow.token_payoff()["topk"] == payoff["topk"]
