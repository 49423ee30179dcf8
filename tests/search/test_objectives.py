"""The search objective: what trials are ranked by on the calibration images, and what is kept beside it."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from pydantic import ValidationError

from pruning.metrics import classification_metrics
from search import JobSpec, run_search
from search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, objective
from search.pareto import pareto_trials
from search.study import metric_names
from tests.search.tiny import tiny_job


def _metrics(labels: bool):
    torch.manual_seed(3)
    reference = torch.randn(64, 10)
    logits = reference + 0.8 * torch.randn(64, 10)
    return classification_metrics(logits, torch.randint(0, 10, (64,)) if labels else None, reference)


def test_every_objective_is_a_percent_to_maximise_with_its_standard_error():
    metrics = _metrics(labels=True)
    kl = OBJECTIVES["kl"]
    assert kl.score(metrics) == pytest.approx(100 * math.exp(-metrics.kl))
    assert kl.standard_error(metrics) == pytest.approx(kl.score(metrics) * metrics.kl_se)
    assert OBJECTIVES["agreement"].score(metrics) == metrics.agreement
    assert OBJECTIVES["top1"].score(metrics) == metrics.top1
    assert OBJECTIVES["top1"].standard_error(metrics) == metrics.top1_se
    # The dense model against itself: perfect fidelity and agreement, whatever its logits.
    reference = torch.randn(32, 10)
    same = classification_metrics(reference, None, reference)
    assert OBJECTIVES["kl"].score(same) == pytest.approx(100.0) and OBJECTIVES["agreement"].score(same) == 100.0
    # Further from the dense model scores lower on fidelity: the map from KL is monotone.
    noise = torch.randn(32, 10)
    close, far = (classification_metrics(reference + s * noise, None, reference) for s in (0.3, 3.0))
    assert OBJECTIVES["kl"].score(far) < OBJECTIVES["kl"].score(close) < 100.0


def test_top1_without_labels_ranks_by_agreement():
    metrics = _metrics(labels=False)
    assert metrics.top1 is None
    assert OBJECTIVES["top1"].score(metrics) == metrics.agreement
    assert OBJECTIVES["top1"].standard_error(metrics) == metrics.agreement_se


def test_the_default_is_kl_and_a_job_names_its_objective_in_its_study_key(tmp_path):
    job = tiny_job(tmp_path)
    assert job.objective == DEFAULT_OBJECTIVE == "kl"
    assert len({tiny_job(tmp_path, objective=name).study_key() for name in OBJECTIVES}) == len(OBJECTIVES)
    with pytest.raises(ValidationError, match="kl"):
        tiny_job(tmp_path, objective="accuracy")
    with pytest.raises(ValueError, match="choose kl, agreement, top1"):
        objective("accuracy")


def test_a_job_stored_before_objectives_keeps_its_meaning_and_its_study(tmp_path):
    """Studies and the service store a job's spec; one written before the field existed was searched on
    top-1 and must resume as such, under the study name it had."""
    old = json.loads(tiny_job(tmp_path, objective="top1").model_dump_json(exclude={"objective"}))
    assert "objective" not in old
    stored = JobSpec.stored(old)
    assert stored.objective == "top1"
    assert stored.study_name() == tiny_job(tmp_path, objective="top1").study_name()
    assert JobSpec.stored(json.dumps(old)) == stored
    assert JobSpec.stored(tiny_job(tmp_path).model_dump_json()).objective == "kl"  # new specs say theirs


@pytest.mark.parametrize("name", ["kl", "top1"])
def test_trials_are_ranked_by_the_objective_and_top1_is_kept_beside_it(tmp_path, name):
    job = tiny_job(tmp_path, objective=name, trials=10)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_search(job, url, tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study, storage=url)
    assert study.metric_names == metric_names(job) and study.metric_names[0] == OBJECTIVES[name].label
    scored = [t for t in study.trials if t.user_attrs["evaluated"]]
    assert scored
    for t in scored:
        expected = 100 * math.exp(-t.user_attrs["kl"]) if name == "kl" else t.user_attrs["top1"]
        assert t.values[0] == pytest.approx(expected)
    front = {t.number: t for t in pareto_trials(study)}
    assert [m["trial"] for m in result.models] == list(front)
    for model in result.models:
        trial = front[model["trial"]]
        assert model["objective"] == name and model["calib_score"] == trial.values[0]
        assert model["calib_accuracy"] == trial.user_attrs["top1"]
        assert model["calib_accuracy_se"] == trial.user_attrs["top1_se"]


def test_cheap_first_stops_a_dominated_sample_by_the_objectives_own_spread(tmp_path):
    job = tiny_job(tmp_path, trials=16, cheap_first=16)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_search(job, url, tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=result.study, storage=url)
    full = max(t.user_attrs.get("eval_images", 0) for t in study.trials)
    stopped = [t for t in study.trials if 0 < t.user_attrs.get("eval_images", full) < full]
    front = {t.number for t in pareto_trials(study)}
    for t in stopped:  # dominated on the sample by more than two standard errors of the objective
        better = [
            o
            for o in study.trials
            if o.user_attrs.get("eval_images") == full and o.values[1] <= t.values[1] and o.values[0] > t.values[0]
        ]
        assert better and t.number not in front
