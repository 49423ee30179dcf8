"""A whole search on a small real ViT: budget, warm start, deduplication, failures, resume, files."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.trial import TrialState

from pruning import PruneConfig
from pruning.bundle import load_bundle
from pruning.metrics import evaluate
from search import (
    InfeasibleJobError,
    JobContext,
    JobInputError,
    ModelOptionsError,
    SearchDriver,
    SearchHooks,
    SearchStopped,
    check_job,
    run_search,
    run_worker,
    submit,
    trial_records,
)
from search.driver import run_trials
from search.evaluator import TrialEvaluator
from search.pareto import pareto_trials
from search.study import open_storage, progress
from tests.search.tiny import tiny_job


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One search run to the end, shared by the tests that only read its results."""
    root = tmp_path_factory.mktemp("search")
    job = tiny_job(root)
    url = f"sqlite:///{root / 'search.db'}"
    result = run_search(job, url, root / "out", show_progress=False)
    study = optuna.load_study(study_name=job.study_name(), storage=url)
    return job, url, root, result, study


def test_runs_exactly_the_trials_asked_and_prices_every_one(finished):
    job, _, _, result, study = finished
    trials = study.get_trials()
    assert len(trials) == job.trials == result.trials["complete"]
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert t.values[1] == pytest.approx(t.user_attrs["predicted_ms"], abs=1e-3)
        feasible = t.values[1] <= result.budget_ms
        assert (t.constraints["over_budget_ms"] <= 0) == feasible
        if not feasible:  # over budget: no forward pass was spent on it
            assert t.user_attrs["evaluated"] is False and "eval_s" not in t.user_attrs


def test_warm_start_puts_the_dense_model_and_baselines_first(finished):
    _, _, _, result, study = finished
    first = study.trials[0]
    assert PruneConfig.model_validate(first.user_attrs["config"]).is_dense_for(JobContext.from_study(study).spec)
    assert first.values[1] == pytest.approx(result.dense["predicted_ms"], abs=1e-3)
    assert first.values[1] > result.budget_ms
    assert {t.params["keep_1"] for t in study.trials[1:6]} == {0.5, 0.6, 0.7, 0.8, 0.9}


def test_the_front_is_never_worse_than_a_feasible_baseline(finished):
    _, _, _, result, study = finished
    front = pareto_trials(study)
    assert front and [t.values[1] for t in front] == sorted(t.values[1] for t in front)
    for t in study.trials[:6]:
        if t.user_attrs["evaluated"] and t.values[1] <= result.budget_ms:
            assert any(f.values[0] >= t.values[0] and f.values[1] <= t.values[1] for f in front)


def test_pareto_models_are_physical_bundles_with_honest_validation_figures(finished):
    job, _, root, result, _ = finished
    assert len(result.models) == len(pareto_trials(optuna.load_study(study_name=result.study, storage=finished[1])))
    saved = json.loads((root / "out" / "pareto.json").read_text())
    assert saved["models"] == json.loads(json.dumps(result.models)) and saved["budget_ms"] == result.budget_ms
    html = (root / "out" / "pareto.html").read_text()
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]*\ssrc=", html)  # plotly.js inline, no CDN
    model = result.models[-1]
    pruned = load_bundle(root / "out" / model["bundle"])
    assert pruned.config.without_indices().key() == model["config_key"]
    metrics, _ = evaluate(pruned, JobContext.from_study(finished[4]).images("val"))
    assert metrics.top1 == model["val"]["top1"] and metrics.n_images == len(list(job.val.rglob("*.png")))
    assert model["predicted_ms"] <= result.budget_ms + 1e-6


def test_rerunning_the_job_resumes_and_a_larger_count_adds_only_the_difference(finished):
    job, url, root, result, _ = finished
    again = run_search(job, url, root / "out", show_progress=False)
    assert len(optuna.load_study(study_name=job.study_name(), storage=url).trials) == job.trials
    assert [m["config_key"] for m in again.models] == [m["config_key"] for m in result.models]
    more = run_search(job.model_copy(update={"trials": job.trials + 4}), url, root / "out", show_progress=False)
    assert more.trials["complete"] == job.trials + 4


def test_an_unreachable_budget_fails_before_any_trial_with_both_numbers(tmp_path):
    job = tiny_job(tmp_path, budget_ms=0.001, budget_ratio=None)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    with pytest.raises(InfeasibleJobError, match=r"predicted at \d+\.\d+ ms .* budget of 0\.001 ms"):
        run_search(job, url, tmp_path / "out", show_progress=False)
    assert optuna.get_all_study_names(open_storage(url)) == []


def test_overlapping_calibration_and_validation_images_are_refused(tmp_path):
    job = tiny_job(tmp_path)
    with pytest.raises(JobInputError, match=r"share \d+ images"):
        run_search(job.model_copy(update={"val": job.calib}), f"sqlite:///{tmp_path / 's.db'}", tmp_path / "o")


def test_identical_configs_are_evaluated_once_and_a_failing_trial_does_not_stop_the_job(tmp_path, monkeypatch):
    space = {"tokens": "topk", "token_blocks": [1], "package_token": "off", "heads": True, "group": 4}
    job = tiny_job(tmp_path, trials=8, space=space, budget_ratio=1.0, device="mobile-cpu")
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, context = submit(job, storage)
    evaluated = []
    real = TrialEvaluator.evaluate

    def counting(self, config, max_images=None, **options):
        if config.blocks[0].heads == 2:  # the warm start at half the heads
            raise RuntimeError("simulated failure")
        evaluated.append(config.key())
        return real(self, config, max_images, **options)

    monkeypatch.setattr(TrialEvaluator, "evaluate", counting)
    for _ in range(3):  # the dense config (the first warm start) three more times
        study.enqueue_trial({"keep_1": 1.0, "heads_0-3": 3}, user_attrs={"slot": True})
    run_trials(study, context)
    trials = study.get_trials()
    assert len(evaluated) == len(set(evaluated))
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) >= 3 and all(t.values == trials[t.user_attrs["duplicate_of"]].values for t in duplicates)
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    state = progress(study)
    assert state.finished and state.done == len(trials)


def test_threshold_trials_are_priced_from_the_tokens_they_kept(tmp_path):
    job = tiny_job(
        tmp_path,
        trials=6,
        space={"tokens": "threshold", "token_blocks": [1, 2], "heads": True, "mlp": True, "group": 2},
        budget_ratio=1.0,
    )
    result = run_search(job, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study, storage=f"sqlite:///{tmp_path / 's.db'}")
    pruning_trials = [t for t in study.trials if any(v > 0 for k, v in t.params.items() if k.startswith("threshold"))]
    assert pruning_trials
    for t in pruning_trials:
        assert t.user_attrs["evaluated"] and len(t.user_attrs["kept_tokens"]) == sum(
            v > 0 for k, v in t.params.items() if k.startswith("threshold")
        )


def test_images_load_at_the_models_own_size(finished):
    images = JobContext.from_study(finished[4]).images("calib")
    assert tuple(images.images.shape[-2:]) == (32, 32)


def test_without_a_validation_folder_a_holdout_of_the_calibration_folder_validates(tmp_path):
    job = tiny_job(tmp_path, val=None, holdout=0.25, trials=4, calib_images=30)
    result = run_search(job, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study, storage=f"sqlite:///{tmp_path / 's.db'}")
    context = JobContext.from_study(study)
    calib, val = context.images("calib"), context.images("val")
    assert len(calib) == 30 and len(val) == 15 and not set(calib.paths) & set(val.paths)
    assert result.dense["val"]["n_images"] == 15


def test_a_worker_skips_a_job_whose_files_it_cannot_read_and_keeps_going(tmp_path):
    job = tiny_job(tmp_path, trials=3)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study, _ = submit(job, open_storage(url))
    (tmp_path / "weights.safetensors").rename(tmp_path / "elsewhere.safetensors")  # not on this "machine"
    assert run_worker(url, idle_exit_s=0.5, poll_s=0.1) == 0
    assert progress(study).waiting == 3


def test_trial_records_say_what_the_study_holds(finished):
    job, url, _, _, study = finished
    records = trial_records(url, job.study_name())
    front = {t.number for t in pareto_trials(study)}
    assert [r.number for r in records] == [t.number for t in study.trials]
    for record, t in zip(records, study.trials, strict=True):
        assert record.state == "complete" and (record.score, record.predicted_ms) == tuple(t.values)
        assert record.calib_accuracy == (t.user_attrs["top1"] if t.user_attrs["evaluated"] else 0.0)
        assert record.feasible == (t.constraints["over_budget_ms"] <= 0)
        assert record.evaluated == t.user_attrs["evaluated"] and record.config == t.user_attrs["config"]
        assert record.params == t.params and record.pareto == (t.number in front)
    assert front and {r.number for r in records if r.pareto} == front
    assert trial_records(url, "no-such-study") == []  # a queued job's study does not exist yet


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"foo": 1}, "unexpected keyword argument 'foo'"),
        ({"embed_dim": 100}, "divisible by num_heads"),
        ({"depth": 10**6}, "more blocks than any ViT"),  # refused before building: on meta it would take hours
    ],
)
def test_model_options_are_checked_by_every_entry_point(tmp_path, kwargs, words):
    job = tiny_job(tmp_path)
    job = job.model_copy(update={"model_kwargs": job.model_kwargs | kwargs})
    with pytest.raises(ModelOptionsError, match=words):
        check_job(job)  # the API's check (and so `vitprune submit`'s)
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(ModelOptionsError, match=words):
        run_search(job, url, tmp_path / "out", show_progress=False)  # `vitprune search` and the service's workers
    assert optuna.get_all_study_names(open_storage(url)) == []


class Recorder(SearchHooks):
    """Hooks that note every call, and stop the run once `stop_after` progress reports were made."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.stop_after = stop_after

    def started(self, context, state):
        self.calls.append(("started", state.done))

    def progress(self, state):
        self.calls.append(("progress", state.done))

    def should_stop(self):
        return self.stop_after is not None and sum(name == "progress" for name, _ in self.calls) >= self.stop_after

    def materialising(self):
        self.calls.append(("materialising", None))

    def finished(self, result, context):
        self.calls.append(("finished", len(result.models)))


def test_the_driver_reports_to_its_hooks_stops_when_they_say_and_resumes(tmp_path):
    job = tiny_job(tmp_path, trials=6)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    driver = SearchDriver(storage)
    stopping = Recorder(stop_after=3)  # the report at the start, then one after each of two trials
    with pytest.raises(SearchStopped):
        driver.run(job, tmp_path / "out", hooks=stopping)
    assert stopping.calls == [("started", 0), ("progress", 0), ("progress", 1), ("progress", 2)]
    assert driver.trials_run == 2
    study = optuna.load_study(study_name=job.study_name(), storage=storage)
    assert (progress(study).done, progress(study).waiting) == (2, 4)

    going = Recorder()
    result = driver.run(job, tmp_path / "out", hooks=going)
    assert going.calls[:2] == [("started", 2), ("progress", 2)]
    reports = [done for name, done in going.calls if name == "progress"]
    assert reports == sorted(reports) and reports[-1] == 6
    assert going.calls[-2:] == [("materialising", None), ("finished", len(result.models))]
    assert driver.trials_run == 6 and result.trials["complete"] == 6


def test_the_command_line_search_shows_its_trials_and_models(tmp_path, capsys):
    job = tiny_job(tmp_path, trials=4)
    result = run_search(job, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "out", show_progress=True)
    err = capsys.readouterr().err
    assert "trials: 100%" in err and "4/4" in err and "best_calib_top1=" in err  # calibration, as labelled
    assert "pareto models: 100%" in err or not result.models
