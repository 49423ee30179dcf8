"""The command line end to end on the real DeiT-Tiny: prune -> evaluate -> export -> latency."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pruning.bundle import load_bundle
from tests.vitprune.running import run


@pytest.fixture(scope="module")
def small_folder(imagenet_dir, tmp_path_factory):
    """12 classes of the sample: labels must come from the class map, not from folder order."""
    root = tmp_path_factory.mktemp("images")
    for folder in sorted(imagenet_dir.iterdir())[100:112]:
        shutil.copytree(folder, root / folder.name)
    return root


def test_prune_evaluate_export_latency(capsys, tmp_path, deit_tiny_weights, small_folder, class_map):
    dense = ["--model", "deit_tiny_patch16_224", "--weights", str(deit_tiny_weights)]
    bundle = tmp_path / "pruned.zip"
    code, out, _ = run(
        capsys, "prune", *dense, "--keep", "0.7", "--at", "3,6,9", "--package-token", "--out", str(bundle)
    )
    assert code == 0 and bundle.is_file()
    assert json.loads(out)["params"] > 5_000_000

    data = ["--data", str(small_folder), "--class-map", str(class_map)]
    code, out, _ = run(capsys, "evaluate", "--bundle", str(bundle), *dense, *data, "--json", "--latency-batch", "1")
    report = json.loads(out)
    assert code == 0
    assert report["n_images"] == 12 and report["top1"] >= 50.0 and report["agreement"] >= 75.0
    assert 0.0 <= report["kl"] < 1.0
    assert report["flops"] < 0.75 * 2.5e9 and report["latency"]["1"]["ms"] > 0

    code, out, _ = run(capsys, "evaluate", *dense, *data, "--json", "--latency-batch", "")
    dense_report = json.loads(out)
    assert dense_report["agreement"] == 100.0 and dense_report["flops"] > report["flops"]
    assert "latency" not in dense_report

    onnx_path = tmp_path / "pruned.onnx"
    code, out, _ = run(capsys, "export", str(bundle), "--out", str(onnx_path))
    assert code == 0 and onnx_path.is_file()
    assert json.loads(out)["max_abs_diff"] <= 1e-4

    code, out, _ = run(capsys, "latency", "--bundle", str(bundle), "--batch", "1,2", "--json")
    assert code == 0 and set(json.loads(out)["latency"]) == {"1", "2"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "1.5", "--at", "3"], "keep_ratio"),
        (["--mlp-ratio", "0.5", "--round-to", "0"], "round_to"),
        (["--head-ratio", "0.5", "--recover"], "calibration"),
    ],
)
def test_bad_options_give_a_clear_error(capsys, tmp_path, deit_tiny_weights, argv, message):
    dense = ["--model", "deit_tiny_patch16_224", "--weights", str(deit_tiny_weights)]
    code, _, err = run(capsys, "prune", *dense, *argv, "--out", str(tmp_path / "b"))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_missing_weights_and_unknown_model(capsys, tmp_path):
    code, _, err = run(capsys, "prune", "--model", "deit_tiny_patch16_224", "--out", str(tmp_path / "b"))
    assert code == 2 and "--weights" in err
    code, _, err = run(
        capsys, "prune", "--model", "deit_tinyy", "--weights", str(tmp_path / "w.safetensors"), "--out", "x"
    )
    assert code == 2 and "deit_tiny" in err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "vitprune", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("prune", "evaluate", "export", "latency"))


def test_prune_records_its_flops_and_images_once_and_the_card_prints_them(
    capsys, tmp_path, deit_tiny_weights, small_folder, class_map
):
    """metrics.json names the validation images (a folder name, not a path); the card prints its FLOPs as they are."""
    dense = ["--model", "deit_tiny_patch16_224", "--weights", str(deit_tiny_weights)]
    data = ["--val", str(small_folder), "--class-map", str(class_map)]
    bundle = tmp_path / "pruned"
    code, out, err = run(capsys, "prune", *dense, "--threshold", "1.0", "--at", "3,6,9", *data, "--out", str(bundle))
    assert code == 0, err
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert json.loads(out)["gflops"] == metrics["gflops"] and metrics["gflops_images"] == 12  # mean of 12 images
    assert metrics["dataset"] == small_folder.name and metrics["n_images"] == 12
    assert metrics["datasets"]["val"] | {"preprocessing": None} == {
        "name": small_folder.name,
        "images": 12,
        "classes": 12,  # the classes of the images, not the 1000 of the class map
        "labelled": True,
        "preprocessing": None,
    }
    assert metrics["dense"]["gflops"] > metrics["gflops"] and metrics["dense"]["val"]["n_images"] == 12
    card = (bundle / "README.md").read_text()
    flops = f"| FLOPs per image | {round(metrics['gflops'], 3):g} G of {round(metrics['dense']['gflops'], 3):g} G dense"
    assert flops in card and "the mean over 12 validation images" in card
    assert f"Validation top-1 **{metrics['top1']:.1f}%**" in card
    assert json.loads((bundle / "config.json").read_text())["provenance"]["weights_sha256"] in card
    assert str(tmp_path) not in card and "None" not in card and str(deit_tiny_weights.parent) not in card


def test_prune_can_quantise_the_pruned_model_on_its_calibration_images(
    capsys, tmp_path, deit_tiny_weights, small_folder, class_map
):
    dense = ["--model", "deit_tiny_patch16_224", "--weights", str(deit_tiny_weights)]
    config = ["--keep", "0.7", "--at", "3,6,9"]
    code, _, err = run(capsys, "prune", *dense, *config, "--precision", "int8", "--out", str(tmp_path / "x"))
    assert code == 2 and "--precision int8 calibrates activation ranges on images: give --calib" in err
    bundle = tmp_path / "int8"
    calib = ["--calib", str(small_folder), "--class-map", str(class_map)]
    code, out, err = run(capsys, "prune", *dense, *config, *calib, "--precision", "int8-pow2", "--out", str(bundle))
    assert code == 0, err
    assert json.loads(out)["precision"] == "int8-pow2"
    assert json.loads((bundle / "config.json").read_text())["quantisation"]["precision"] == "int8-pow2"
    assert load_bundle(bundle).quantisation["scales"] == "powers of two"
