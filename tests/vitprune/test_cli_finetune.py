"""`vitprune finetune`: a bundle trained by distillation becomes a new bundle, scored on images the
training never saw, whose card says how it was trained; wrong teachers and shared images are refused."""

from __future__ import annotations

import json
import shutil

import pytest

from pruning import PruneConfig, describe, prune_model
from pruning.bundle import README_FILE, load_bundle, read_bundle_json, save_bundle
from tests.search.tiny import KWARGS, MODEL, tiny_job, tiny_model
from tests.vitprune.running import run


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tiny_job(root)  # writes the weights and the calib / val folders
    dense = tiny_model()
    config = PruneConfig.uniform(describe(dense, MODEL), keep_ratio=0.5, at=(1,), head_ratio=0.67)
    path = root / "pruned"
    save_bundle(
        prune_model(dense, config, name=MODEL),
        path,
        metrics={"val": {"top1": 12.5, "n_images": 20}},
        weights=root / "weights.safetensors",
        model_kwargs=KWARGS,
    )
    return root, path


def finetune(root, path, val):
    """The command up to its output: the bundle, its teacher, training images from calib, `val`."""
    return ("finetune", path, "--weights", root / "weights.safetensors", "--data", root / "calib", "--val", val)


QUICK = ("--steps", "6", "--batch-size", "8", "--eval-every", "3", "--holdout", "0.2", "--json")


def test_a_fine_tuned_bundle_is_new_scored_apart_and_says_how_it_was_trained(capsys, bundle):
    root, path = bundle
    out = root / "tuned"
    code, stdout, _ = run(capsys, *finetune(root, path, val=root / "val"), "--out", out, *QUICK)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["fine_tune"]["steps"] == 6 and summary["val"]["n_images"] == 20
    assert summary["before"]["kl"] > 0
    config, metrics = read_bundle_json(out)
    # Before and after on the same held-out images; the bundle's own earlier figure is replaced by that.
    assert metrics["before_fine_tune"]["val"] == summary["before"] and metrics["val"] == summary["val"]
    assert metrics["fine_tune"]["train_images"] + metrics["fine_tune"]["holdout_images"] == 60
    assert metrics["datasets"]["train"]["images"] == 60 and metrics["datasets"]["val"]["images"] == 20
    assert config["provenance"]["extra"]["fine_tuned_from"] == "pruned"
    assert config["provenance"]["weights_sha256"] == read_bundle_json(path)[0]["provenance"]["weights_sha256"]
    tuned, original = load_bundle(out), load_bundle(path)
    assert tuned.config == original.config  # the same structure, other weights
    assert any(not a.equal(b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values(), strict=True))
    card = (out / README_FILE).read_text()
    assert "Fine-tuned by distillation from the dense model" in card and "60 training images" in card
    assert "Before fine-tuning" in card


def test_a_teacher_other_than_the_pruned_weights_is_refused(capsys, bundle, tmp_path):
    root, path = bundle
    other = tmp_path / "other.safetensors"
    shutil.copy(root / "weights.safetensors", other)
    with open(other, "ab") as f:
        f.write(b" ")
    code, _, err = run(capsys, "finetune", path, "--weights", other, "--data", root / "calib", "--out", tmp_path / "x")
    assert code == 2 and "not the dense model this bundle was pruned from" in err


def test_training_and_validation_images_must_be_apart(capsys, bundle, tmp_path):
    root, path = bundle
    code, _, err = run(capsys, *finetune(root, path, val=root / "calib"), "--out", tmp_path / "x")
    assert code == 2 and "share images" in err
    code, _, err = run(capsys, "finetune", path, "--data", root / "calib", "--out", tmp_path / "x")
    assert code == 2 and "--weights" in err
