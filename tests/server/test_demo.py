"""The demo assets: generated shapes, a ViT trained on them that the service loads, and a search job it can run."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from pruning.loading import WeightsError, create_model
from pruning.metrics import predict
from search.context import JobContext, check_job, job_images
from search.job import JobSpec
from server.demo import CLASSES, DEMO_KWARGS, DEMO_MODEL, N_CLASSES, DemoAssets, _pictures, demo_job, make_demo_assets

# Short: training goes on past it to a floor of steps, which is what lifts the model above chance on a busy machine.
TRAIN_STEPS = 150  # past the plateau at chance, in seconds


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> DemoAssets:
    return make_demo_assets(tmp_path_factory.mktemp("demo"), steps=TRAIN_STEPS, progress=False)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_assets_are_labelled_image_folders_of_the_demo_classes(assets):
    assert assets.class_map.read_text(encoding="utf-8").splitlines() == list(CLASSES)
    for folder in (assets.calib, assets.val):
        assert sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            assert len(list((folder / name).glob("*.png"))) == 50
    # It says it is a demo wherever someone may look: the weights and the folder.
    with safe_open(str(assets.weights), "pt") as weights:
        assert "not ImageNet" in weights.metadata()["demo"]
    assert "not ImageNet" in (assets.weights.parent / "README.txt").read_text(encoding="utf-8")


def test_calibration_and_validation_share_no_image(assets):
    calib, val = _digests(assets.calib), _digests(assets.val)
    assert len(calib) == len(val) == 50 * N_CLASSES
    assert len(set(calib.values())) == len(calib) and len(set(val.values())) == len(val)
    assert not set(calib.values()) & set(val.values())


def test_weights_load_strictly_and_beat_chance_on_val_as_the_service_loads_it(assets):
    model = create_model(DEMO_MODEL, weights=assets.weights, **DEMO_KWARGS)
    val = job_images(demo_job(assets), model, "val")
    top1 = float((predict(model, val).argmax(1) == val.labels).float().mean() * 100)
    assert len(val) == 50 * N_CLASSES
    assert top1 == pytest.approx(assets.accuracy, abs=1e-3)
    assert top1 > 1.5 * 100 / N_CLASSES, f"{top1:.1f}% after {TRAIN_STEPS} training steps"
    with pytest.raises(WeightsError, match="do not fit"):  # strict: a model of another shape refuses them
        create_model(DEMO_MODEL, weights=assets.weights, **(DEMO_KWARGS | {"depth": 5}))


def test_a_second_call_reuses_the_finished_assets(assets):
    files = [assets.weights, *assets.calib.rglob("*.png"), *assets.val.rglob("*.png")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    start = time.monotonic()
    again = make_demo_assets(assets.weights.parent, steps=TRAIN_STEPS, progress=False)
    assert time.monotonic() - start < 1.0
    assert again == assets
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_images_are_drawn_again_identically_from_the_seed(assets):
    # Redrawing the validation split in memory gives the saved pixels; another seed gives other pictures.
    for label, index, picture in _pictures(seed=0, split=2, per_class=50):
        name = CLASSES[label]
        with Image.open(assets.val / name / f"{name}_2_{index:04d}.png") as saved:
            assert np.array_equal(np.asarray(saved), np.asarray(picture))
    _, _, first = next(_pictures(seed=0, split=2, per_class=1))
    _, _, other = next(_pictures(seed=1, split=2, per_class=1))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_the_demo_job_is_valid_and_its_budget_can_be_met_on_the_phone_cpu(assets):
    job = demo_job(assets, trials=7)
    assert JobSpec.model_validate_json(job.model_dump_json()) == job
    assert (job.device, job.batch, job.budget_ratio, job.trials) == ("mobile-cpu", 1, 0.6, 7)
    assert job.space.tokens == "topk" and job.space.heads and job.space.mlp
    assert max(job.space.token_blocks) < DEMO_KWARGS["depth"]
    dense_ms, budget_ms = check_job(job)
    context = JobContext.prepare(job)
    assert context.budget_ms == pytest.approx(0.6 * context.dense_ms) == pytest.approx(budget_ms)
    assert context.dense_ms == pytest.approx(dense_ms)
    assert len(context.calib) == 50 * N_CLASSES and context.importance is not None
    assert context.spec.blocks[0].heads == DEMO_KWARGS["num_heads"]
    # Not just feasible: the cheapest config must leave the search real room under the budget.
    cheapest = context.space.config(context.space.cheapest_params())
    assert context.predictor.predict(cheapest, context.spec, job.batch).ms < 0.5 * context.dense_ms
