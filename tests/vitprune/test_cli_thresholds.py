"""`vitprune learn-thresholds`: DeiT-Tiny learns thresholds under a mobile-cpu budget and becomes a
physically pruned bundle, scored and priced on images it never trained on; bad input is refused in one
line."""

from __future__ import annotations

import json

import pytest
import torch

from latency_models.registry import Registry
from pruning import PruneConfig, describe, prune_model
from pruning.bundle import load_bundle, read_bundle_json, save_bundle
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.tokens import padded_widths
from tests.vitprune.running import run

MODEL = "deit_tiny_patch16_224"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, imagenet_dir):
    """24 classes to train on, 8 others to validate on (one real image each)."""
    root = tmp_path_factory.mktemp("thresholds")
    classes = sorted(p for p in imagenet_dir.iterdir() if p.is_dir())
    for name, chosen in (("train", classes[:24]), ("val", classes[500:508])):
        (root / name).mkdir()
        for folder in chosen:
            (root / name / folder.name).symlink_to(folder.resolve())
    return root


def command(folders, weights, class_map, *extra):
    return (
        "learn-thresholds",
        "--model",
        MODEL,
        "--weights",
        weights,
        "--device",
        "mobile-cpu",
        "--budget-ratio",
        "0.7",
        "--data",
        folders / "train",
        "--val",
        folders / "val",
        "--class-map",
        class_map,
        *extra,
    )


def test_the_command_writes_a_pruned_bundle_scored_and_priced_on_unseen_images(
    capsys, folders, deit_tiny_weights, class_map
):
    out = folders / "bundle"
    quick = ("--steps", "2", "--batch-size", "8", "--calibration-images", "16", "--threads", "1", "--json")
    code, stdout, _ = run(capsys, *command(folders, deit_tiny_weights, class_map, "--out", out, *quick))
    assert code == 0
    summary = json.loads(stdout)
    model = load_bundle(out)
    config, metrics = read_bundle_json(out)
    thresholds = [b.tokens.threshold for b in model.config.blocks if b.reduces_tokens]
    assert thresholds == pytest.approx(summary["thresholds"]) and len(thresholds) == 3
    assert [i for i, b in enumerate(model.config.blocks) if b.reduces_tokens] == [3, 6, 9]
    assert not model.config.package_token
    val = metrics["val"]
    assert val["n_images"] == 8 and {"top1", "agreement", "kl", "top1_se", "agreement_se", "kl_se"} <= set(val)
    assert metrics["datasets"]["train"]["images"] == 24 and metrics["datasets"]["val"]["images"] == 8
    run_info = metrics["learned_thresholds"]
    assert run_info["steps"] == 2 and run_info["meets_budget"] and run_info["calibration_images"] == 16
    # The bundle's latency is the mobile-cpu table's price of the counts it realises on the validation images.
    images = load_image_folder(folders / "val", eval_data_config(model.model), class_map=class_map)
    with torch.inference_mode():
        model(next(images.batches(8))[0])
    counts = torch.stack(model.last_token_counts, 1)
    assert counts.max() < 196
    predictor = Registry().predictor("mobile-cpu", model.spec, [1], progress=False)
    expected = predictor.predict(model.config, model.spec, 1, kept_tokens=padded_widths(counts, 1)).ms
    assert metrics["predicted_ms"] == pytest.approx(expected, rel=1e-4)
    assert metrics["meets_budget"] == (metrics["predicted_ms"] <= metrics["budget_ms"])
    assert metrics["budget_ms"] == pytest.approx(0.7 * metrics["dense"]["predicted_ms"], rel=1e-4)
    assert config["provenance"]["extra"]["device"] == "mobile-cpu"


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--device", "no-such-phone"), "unknown device 'no-such-phone'"),
        (("--at", "3,12"), "--at 12"),
        (("--val-share", "0.3"), "not allowed with argument"),
    ],
)
def test_bad_input_is_refused_in_one_line(capsys, folders, deit_tiny_weights, class_map, extra, words):
    argv = list(command(folders, deit_tiny_weights, class_map, "--out", folders / "never", *extra))
    if "--device" in extra:  # the last --device wins
        argv += ["--device", "no-such-phone"]
    if "--val-share" in extra:
        with pytest.raises(SystemExit):
            run(capsys, *argv)
        assert words in capsys.readouterr().err
        return
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (folders / "never").exists()


def test_without_weights_the_teacher_is_asked_for(capsys, folders, class_map):
    argv = ["learn-thresholds", "--model", MODEL, "--device", "mobile-cpu", "--budget-ratio", "0.7"]
    argv += ["--data", folders / "train", "--val-share", "0.25", "--out", folders / "never"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--weights" in err and len(err.strip().splitlines()) == 1


def test_from_a_bundle_its_heads_and_mlp_stay_and_its_token_ops_give_way(capsys, folders, deit_tiny_weights, class_map):
    dense = create_model(MODEL, weights=deit_tiny_weights)
    spec = describe(dense, MODEL)
    config = PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,), head_ratio=0.67, mlp_ratio=0.5, package_token=True)
    source = folders / "source"
    save_bundle(prune_model(dense, config, name=MODEL), source, weights=deit_tiny_weights)
    out = folders / "from-bundle"
    argv = ["learn-thresholds", "--from", source, "--weights", deit_tiny_weights, "--device", "mobile-cpu"]
    argv += ["--budget-ratio", "0.5", "--data", folders / "train", "--val", folders / "val", "--class-map", class_map]
    argv += ["--steps", "1", "--batch-size", "8", "--calibration-images", "8", "--out", out, "--json"]
    code, _, _ = run(capsys, *argv)
    assert code == 0
    before, after = load_bundle(source).config, load_bundle(out).config
    assert [(b.heads_kept, b.channels_kept) for b in after.blocks] == [
        (b.heads_kept, b.channels_kept) for b in before.blocks
    ]
    assert [b.tokens.kind for b in after.blocks if b.reduces_tokens] == ["threshold"] * 3
    assert not after.package_token
    assert read_bundle_json(out)[0]["provenance"]["extra"]["learned_from"] == "source"
