"""A job that fine-tunes its best Pareto models: new models beside their sources, figures measured again."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from pruning.bundle import load_bundle
from pruning.metrics import evaluate
from search import JobContext, JobInputError, JobSpec, run_search
from search.pareto import FINE_TUNED_SUFFIX
from tests.search.tiny import tiny_job

RECIPE = {"models": 2, "steps": 3, "batch_size": 8, "holdout": 0.0, "mixup": 0.0, "cutmix": 0.0}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("fine-tune-job")
    job = tiny_job(root, trials=12, fine_tune=RECIPE)
    url = f"sqlite:///{root / 'search.db'}"
    result = run_search(job, url, root / "out", show_progress=False)
    return job, url, root, result


def test_the_best_models_by_calibration_score_are_fine_tuned_into_new_models(tuned):
    result = tuned[3]
    searched = [m for m in result.models if m["variant"] == "searched"]
    tuned_rows = [m for m in result.models if m["variant"] == "fine-tuned"]
    best = sorted(searched, key=lambda m: (-m["calib_score"], m["predicted_ms"]))[: RECIPE["models"]]
    assert len(searched) >= RECIPE["models"] and len(tuned_rows) == RECIPE["models"]
    assert [m["fine_tuned_from"] for m in tuned_rows] == [m["bundle"] for m in best]
    for row, source in zip(tuned_rows, best, strict=True):
        assert row["bundle"] == source["bundle"] + FINE_TUNED_SUFFIX and row["trial"] == source["trial"]
        assert row["before_fine_tune"]["val"] == source["val"]
        assert row["before_fine_tune"]["calib_score"] == source["calib_score"]
        assert "calib_accuracy" not in row  # it trained on the calibration images: no held-out figure there
        assert row["fine_tune"]["steps"] >= 1 and row["datasets"]["train"]["images"] > 0
        assert row["config_key"] == source["config_key"]  # training changes weights, never the structure


def test_a_fine_tuned_model_is_a_changed_bundle_measured_again_on_the_validation_images(tuned):
    job, _, root, result = tuned
    row = next(m for m in result.models if m["variant"] == "fine-tuned")
    model = load_bundle(root / "out" / row["bundle"])
    source = load_bundle(root / "out" / row["fine_tuned_from"])
    changed = [
        name
        for (name, a), (_, b) in zip(model.state_dict().items(), source.state_dict().items(), strict=True)
        if not torch.equal(a, b)
    ]
    assert changed and row["fine_tune"]["best_step"] == RECIPE["steps"]  # trained, nothing held out to stop it
    study = optuna.load_study(study_name=job.study_name(), storage=tuned[1])
    metrics, _ = evaluate(model, JobContext.from_study(study).images("val"))
    assert metrics.top1 == row["val"]["top1"]
    card = (root / "out" / row["bundle"] / "README.md").read_text()
    assert "fine-tun" in card.lower()
    assert not (root / "out" / "checkpoints").exists() or not any((root / "out" / "checkpoints").iterdir())
    saved = json.loads((root / "out" / "pareto.json").read_text())
    assert [m["bundle"] for m in saved["models"]] == [m["bundle"] for m in result.models]


def test_fine_tuning_shares_the_study_of_the_same_search_and_a_rerun_trains_nothing_again(tuned, monkeypatch):
    job, url, root, result = tuned
    assert job.study_key() == job.model_copy(update={"fine_tune": None}).study_key()

    def no_training(*args, **kwargs):
        raise AssertionError("a saved fine-tuned model was trained again")

    monkeypatch.setattr("pruning.stages.finetune.fine_tune", no_training)
    again = run_search(job, url, root / "out", show_progress=False)
    assert [m["bundle"] for m in again.models] == [m["bundle"] for m in result.models]
    assert len(optuna.load_study(study_name=job.study_name(), storage=url).trials) == job.trials


def test_training_images_that_share_validation_images_are_refused(tmp_path):
    job = tiny_job(tmp_path, fine_tune={"models": 1, "steps": 1})
    everything = tmp_path  # a parent folder holding the validation images too
    with pytest.raises(JobInputError, match=r"training .* and validation .* share \d+ images"):
        JobContext.prepare(job.model_copy(update={"train": everything}))
    # Without a validation folder the validation images are a held-out share of the calibration folder.
    with pytest.raises(JobInputError, match=r"training .* and calibration .* share \d+ images"):
        JobContext.prepare(job.model_copy(update={"val": None, "train": everything}))


def test_training_images_without_fine_tuning_are_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing trains"):
        JobSpec.model_validate(tiny_job(tmp_path).model_dump() | {"train": str(tmp_path)})
