"""Precision searched with the structure: quantised trials scored as the device computes them, priced in
the dtype that runs them, and materialised as quantised bundles on the same front as the float ones."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from latency_models.registry import Registry
from pruning import PruneConfig, describe
from pruning.bundle import load_bundle
from search import JobContext, JobInputError, SearchSpace, check_job, run_search
from search.context import QUANTISATION_IMAGES, fit_batches, quantisation_batches
from search.pareto import pareto_trials
from search.space import TrialSpace
from search.trials import trial_precision
from tests.search.tiny import MODEL, random_images, tiny_job, tiny_model

SPACE = SearchSpace(tokens="topk", token_blocks=(1, 2), heads=True, group=2, precisions=("fp32", "int8"))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    fine_tune = {"models": 2, "steps": 2, "batch_size": 8, "holdout": 0.0, "mixup": 0.0, "cutmix": 0.0}
    job = tiny_job(root, device="fpga", space=SPACE, trials=12, budget_ratio=1.0, fine_tune=fine_tune)
    url = f"sqlite:///{root / 'search.db'}"
    result = run_search(job, url, root / "out", show_progress=False)
    return job, root, result, optuna.load_study(study_name=job.study_name(), storage=url)


def test_precision_is_a_dimension_that_starts_from_the_dense_model_at_each_precision():
    space = TrialSpace(SPACE, describe(tiny_model(), MODEL))
    starts = space.warm_starts()
    assert [space.precision(p) for p in starts[:2]] == ["fp32", "int8"]
    assert space.config(starts[0]) == space.config(starts[1]) == PruneConfig.dense(space.spec)
    single = TrialSpace(SearchSpace(token_blocks=(1, 2), precisions=("int8-pow2",)), space.spec)
    assert "precision" not in single.distributions and single.precision(single.dense_params()) == "int8-pow2"


def test_each_trial_is_priced_in_the_dtype_of_its_precision(searched):
    job, _, _, study = searched
    spec = describe(tiny_model(), MODEL)
    registry = Registry()
    prices = {p: registry.predictor(registry.priced_as(job.device, p), spec, [1]) for p in ("fp32", "int8")}
    trials = [t for t in study.trials if t.user_attrs.get("evaluated")]
    assert {trial_precision(t) for t in trials} == {"fp32", "int8"}
    for trial in trials:
        config = PruneConfig.model_validate(trial.user_attrs["config"])
        assert trial.values[1] == pytest.approx(prices[trial_precision(trial)].predict(config, spec, 1).ms, rel=1e-4)
    dense = [t for t in trials if t.user_attrs["config_key"].startswith(PruneConfig.dense(spec).key())]
    assert len({t.user_attrs["config_key"] for t in dense}) == 2  # the same config at two precisions: two trials
    joining = JobContext.from_study(study)  # a joining worker prices int8 alike, and quantises it alike
    assert joining.predictors.keys() == {"int8"} and joining.fully_integer == {"int8": 3}


def test_quantised_pareto_models_are_quantised_bundles_priced_as_int8(searched):
    _, root, result, study = searched
    rows = {row["trial"]: row for row in result.models if row["variant"] == "searched"}
    assert {row["precision"] for row in rows.values()} == {"fp32", "int8"}  # one front
    for trial in pareto_trials(study):
        row = rows[trial.number]
        model = load_bundle(root / "out" / row["bundle"])
        assert row["precision"] == trial_precision(trial)
        assert (model.quantisation or {}).get("precision", "fp32") == row["precision"]
        if row["precision"] == "int8":
            assert row["device"]["dtype"] == "int8" and row["device"]["name"] == "fpga"
            # the FPGA multiplies the attention products in int8 too: the bundle computes them so
            assert "attention_products" in model.quantisation
            assert any(hasattr(block.attn, "products") for block in model.model.blocks)
        else:
            assert row["device"]["dtype"] == "int16"  # an FPGA runs a float model in 16-bit fixed point
        assert row["predicted_ms"] == pytest.approx(trial.values[1], abs=1e-4)  # priced as its trial was
    saved = json.loads((root / "out" / "pareto.json").read_text())
    assert "diamonds quantised" in (root / "out" / "pareto.html").read_text()
    assert [m["precision"] for m in saved["models"]] == [m["precision"] for m in result.models]


def test_a_device_without_an_int8_price_or_a_table_file_is_refused_before_anything_runs(tmp_path):
    job = tiny_job(tmp_path, device="cuda", space=SPACE)
    with pytest.raises(JobInputError, match="cuda has no latency model for int8 models"):
        check_job(job)
    job = tiny_job(tmp_path, table=tmp_path / "table.json", space=SPACE)
    with pytest.raises(JobInputError, match="a table file prices float models"):
        check_job(job)


def test_a_host_cpu_job_searches_int8_too_and_waits_until_both_of_its_devices_are_measured(tmp_path, monkeypatch):
    registry = Registry(tmp_path / "profiles", threads=1)
    job = tiny_job(tmp_path, device="host-cpu", space=SPACE)
    spec = describe(tiny_model(), MODEL)
    assert not registry.ready("host-cpu+int8", spec, [job.batch])
    # The float table measured, the int8 device not fitted yet: the job is accepted and waits for a worker.
    real = registry.ready
    monkeypatch.setattr(registry, "ready", lambda name, *args: name == "host-cpu" or real(name, *args))
    assert check_job(job, registry) is None


def test_only_float_models_are_fine_tuned(searched):
    # The int8 dense model has the second-best calibration score, yet training would move its weights off their grid.
    _, _, result, _ = searched
    tuned = [row for row in result.models if row["variant"] == "fine-tuned"]
    sources = {row["bundle"]: row for row in result.models if row["variant"] == "searched"}
    floats = [row for row in sources.values() if row["precision"] == "fp32"]
    assert len(tuned) == min(2, len(floats)) < len(sources)
    assert all(sources[row["fine_tuned_from"]]["precision"] == "fp32" for row in tuned)


def test_quantised_trials_calibrate_on_a_few_images_spread_over_the_set():
    images = random_images(300)
    batches = quantisation_batches(images)
    assert sum(len(b) for b in batches) == QUANTISATION_IMAGES < len(fit_batches(images)) * 32
    first, last = batches[0][0], batches[-1][-1]
    normalised = [images.subset(torch.tensor([i])).batches(1) for i in (0, 299)]
    assert [torch.equal(x, next(n)[0][0]) for x, n in zip((first, last), normalised, strict=True)] == [True, True]


def test_four_bit_weights_are_searched_and_priced_as_w4a8(tmp_path):
    space = SearchSpace(tokens="topk", token_blocks=(1, 2), precisions=("int8", "w4a8"))
    job = tiny_job(tmp_path, device="mobile-cpu", space=space, trials=4, budget_ratio=1.0)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    run_search(job, url, tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=job.study_name(), storage=url)
    spec = describe(tiny_model(), MODEL)
    registry = Registry()
    names = {p: registry.priced_as(job.device, p) for p in ("int8", "w4a8")}
    assert names["w4a8"].endswith("+w4a8")
    trials = [t for t in study.trials if t.user_attrs.get("evaluated")]
    assert {trial_precision(t) for t in trials} == {"int8", "w4a8"}  # both dense models start the search
    for trial in trials:
        predictor = registry.predictor(names[trial_precision(trial)], spec, [1])
        config = PruneConfig.model_validate(trial.user_attrs["config"])
        assert trial.values[1] == pytest.approx(predictor.predict(config, spec, 1).ms, rel=1e-4)
    dense = {trial_precision(t): t.values for t in trials if t.user_attrs["config_key"].startswith(
        PruneConfig.dense(spec).key())}  # fmt: skip
    # the same model with 4-bit weights moves fewer bytes on the phone
    assert dense["w4a8"][1] < dense["int8"][1]
