"""The command line end to end on the real DeiT-Tiny: prune -> evaluate -> export -> latency."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from vitprune.cli import main


@pytest.fixture(scope="module")
def small_folder(imagenet_dir, tmp_path_factory):
    """12 classes of the sample: labels must come from the class map, not from folder order."""
    root = tmp_path_factory.mktemp("images")
    for folder in sorted(imagenet_dir.iterdir())[100:112]:
        shutil.copytree(folder, root / folder.name)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
