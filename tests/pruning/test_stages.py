"""Tests for pruning.stages: the registry finds every stage in its order, and the stages make what
`prune_model` and `save_bundle` made before them (on a small real timm ViT with random weights)."""

from __future__ import annotations

import json
import pkgutil

import pytest
import timm
import torch

import pruning.stages
from pruning.bundle import CONFIG_FILE, METRICS_FILE, load_bundle
from pruning.config import PruneConfig
from pruning.data import ImageSet
from pruning.flops import count_flops, count_params
from pruning.metrics import predict
from pruning.model import describe, prune_model
from pruning.stages import (
    DEFAULT_STAGES,
    ORDER,
    STAGES,
    ModelRecord,
    StageInputs,
    UnknownStageError,
    check_stages,
    run_stages,
)
from tests.search.tiny import random_images

NAME = "deit_tiny_patch16_224"
KWARGS = {"img_size": 32, "depth": 4, "num_classes": 10}


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(NAME, **KWARGS).eval()


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return random_images(12)


@pytest.fixture(scope="module")
def config(dense) -> PruneConfig:
    """Fewer heads and channels (survivors chosen by importance) and per-image token thresholds."""
    return PruneConfig.uniform(describe(dense, NAME), threshold=0.8, at=(1, 2), head_ratio=0.67, mlp_ratio=0.5)


def test_the_registry_finds_every_stage_module_in_order():
    modules = {m.name for m in pkgutil.iter_modules(pruning.stages.__path__) if not m.name.startswith("_")}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in STAGES.values()} == modules
    assert list(STAGES) == [name for name in ORDER if name in STAGES]
    assert all(STAGES[name].name == name for name in STAGES)
    assert check_stages(DEFAULT_STAGES) == [STAGES[name] for name in DEFAULT_STAGES]


def test_a_planned_stage_has_its_place_but_is_refused_until_built(monkeypatch):
    monkeypatch.setattr(pruning.stages, "ORDER", (*ORDER[:4], "prune-more", *ORDER[4:]))
    with pytest.raises(UnknownStageError, match="planned but not built yet"):
        check_stages(["build", "recover", "prune-more", "evaluate"])


@pytest.mark.parametrize(
    ("names", "message"),
    [(["build", "bake"], "unknown stage 'bake'"), (["save", "build"], "do not follow"), (["time", "time"], "follow")],
)
def test_unknown_names_and_lists_out_of_order_are_refused(names, message):
    with pytest.raises(UnknownStageError, match=message):
        check_stages(names)


def test_build_then_recover_is_prune_model_with_recovery(dense, images, config):
    batches = [batch for batch, _ in images.batches(6)]
    expected = prune_model(dense, config, name=NAME, calibration=batches, recover=True)
    inputs = StageInputs(dense=dense, name=NAME, calibration=batches, recover=True)
    model, record = run_stages(("build", "recover"), ModelRecord(config, inputs))
    assert record.recovered and record.config == expected.config  # survivors pinned, as prune_model pins them
    assert record.config.blocks[0].heads_kept is not None
    got, want = model.model.state_dict(), expected.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def test_recovery_without_calibration_images_is_refused(dense, config):
    with pytest.raises(ValueError, match="calibration"):
        run_stages(("build", "recover"), ModelRecord(config, StageInputs(dense=dense, name=NAME, recover=True)))


def test_the_default_stages_make_a_bundle_whose_metrics_the_caller_lays_out(tmp_path, dense, images, config):
    priced = []

    def price(model, counts):
        priced.append(counts)
        return 1.5

    def report(record):
        return {"val": record.evaluation.to_dict(), "params": record.params, "predicted_ms": record.predicted_ms}

    inputs = StageInputs(
        dense=dense,
        name=NAME,
        calibration=[batch for batch, _ in images.batches(6)],
        recover=True,
        val=images,
        reference=predict(dense, images),
        eval_batch=5,
        price=price,
        measure=True,
        latency_batch=2,
        out=tmp_path / "bundle",
        report=report,
        model_kwargs=KWARGS,
    )
    model, record = run_stages(DEFAULT_STAGES, ModelRecord(config, inputs, {"trial": 3}))

    assert record.bundle == tmp_path / "bundle"
    assert json.loads((record.bundle / METRICS_FILE).read_text()) == record.metrics == report(record)
    assert json.loads((record.bundle / CONFIG_FILE).read_text())["provenance"]["extra"] == {"trial": 3}
    assert record.evaluation.n_images == len(images) and record.evaluation.agreement is not None
    assert record.params == count_params(model) and record.flops > 0 and record.logits.shape == (len(images), 10)
    # Thresholds keep a different count per image: the price sees every image's count at both reducing blocks.
    assert len(priced) == 1 and priced[0].shape == (len(images), 2) and record.predicted_ms == 1.5
    assert record.latency.ms > 0 and record.latency.batch_size == 2
    x = next(images.batches(4))[0]
    with torch.inference_mode():
        assert torch.equal(load_bundle(record.bundle)(x), model(x))


def test_later_stages_take_a_model_given_to_them(tmp_path, dense, images):
    """A list need not start with build: a model at the model's own (non-224) size is evaluated and timed."""
    built = prune_model(dense, PruneConfig.dense(describe(dense, NAME)), name=NAME)
    inputs = StageInputs(dense=dense, name=NAME, val=images, measure=True, latency_batch=1)
    model, record = run_stages(("evaluate", "time"), ModelRecord(built.config, inputs), model=built)
    assert model is built and record.evaluation.n_images == len(images) and record.token_counts is None
    assert record.latency.ms > 0 and record.predicted_ms is None and record.bundle is None


def test_evaluate_counts_flops_once_per_image_mean_where_counts_differ(dense, images):
    """Thresholds keep a different count per image: FLOPs are the mean over validation images, each run alone."""
    config = PruneConfig.uniform(describe(dense, NAME), threshold=1.0, at=(0, 1))
    model = prune_model(dense, config, name=NAME)
    inputs = StageInputs(dense=dense, name=NAME, val=images, eval_batch=5)
    _, record = run_stages(("evaluate",), ModelRecord(model.config, inputs), model=model)
    each = [count_flops(model, batch) for batch, _ in images.batches(1)]
    assert len(set(each)) > 1  # the images really differ
    assert record.flops == pytest.approx(sum(each) / len(each)) and record.flops_images == len(images)


def test_evaluate_counts_flops_of_fixed_counts_without_images(dense):
    """Top-k keeps the same count in every image: one image's FLOPs, counted even with no validation images."""
    model = prune_model(dense, PruneConfig.uniform(describe(dense, NAME), keep_ratio=0.5, at=(1,)), name=NAME)
    _, record = run_stages(("evaluate",), ModelRecord(model.config, StageInputs(dense=dense, name=NAME)), model=model)
    assert record.flops == count_flops(model, torch.zeros(1, 3, 32, 32)) and record.flops_images is None
    assert record.evaluation is None


def test_evaluate_averages_flops_over_a_spread_sample_of_a_large_set(dense, images, monkeypatch):
    monkeypatch.setattr(pruning.stages.evaluate, "FLOP_IMAGES", 4)
    model = prune_model(dense, PruneConfig.uniform(describe(dense, NAME), threshold=1.0, at=(0, 1)), name=NAME)
    _, record = run_stages(
        ("evaluate",), ModelRecord(model.config, StageInputs(dense=dense, name=NAME, val=images)), model
    )
    sample = images.subset([0, 4, 7, 11])  # spread over the set, first and last included
    assert record.flops_images == 4 and record.flops == pytest.approx(count_flops(model, next(sample.batches(4))[0]))
    assert record.evaluation.n_images == len(images)  # accuracy still on every image
