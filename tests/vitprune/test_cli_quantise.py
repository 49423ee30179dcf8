"""`vitprune quantise`: a pruned DeiT-Tiny becomes an int8 bundle scored on real images it was not
calibrated on, exported as QDQ and checked with onnxruntime; bad input is refused in one line."""

from __future__ import annotations

import json

import pytest

from pruning import PruneConfig, describe, prune_model
from pruning.bundle import load_bundle, read_bundle_json, save_bundle
from pruning.loading import create_model
from pruning.quantisation import quantised_layers
from tests.vitprune.running import run

MODEL = "deit_tiny_patch16_224"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, imagenet_dir, deit_tiny_weights):
    """16 classes to calibrate on, 16 others to validate on (one real image each), and a top-k bundle."""
    root = tmp_path_factory.mktemp("quantise")
    classes = sorted(p for p in imagenet_dir.iterdir() if p.is_dir())
    for name, chosen in (("calib", classes[:16]), ("val", classes[600:616])):
        (root / name).mkdir()
        for folder in chosen:
            (root / name / folder.name).symlink_to(folder.resolve())
    dense = create_model(MODEL, weights=deit_tiny_weights)
    config = PruneConfig.uniform(describe(dense, MODEL), keep_ratio=0.7, at=(3, 6, 9), package_token=True)
    save_bundle(prune_model(dense, config, name=MODEL), root / "float", weights=deit_tiny_weights)
    return root


def command(folders, class_map, out, *extra):
    return ("quantise", folders / "float", "--calib", folders / "calib", "--val", folders / "val",
            "--class-map", class_map, "--out", out, "--threads", "1", *extra)  # fmt: skip


def test_the_command_writes_an_int8_bundle_checked_by_onnxruntime(capsys, folders, class_map, deit_tiny_weights):
    out = folders / "int8"
    argv = command(folders, class_map, out, "--precision", "int8-pow2", "--weights", deit_tiny_weights, "--onnx")
    code, stdout, _ = run(capsys, *argv, "--json")
    assert code == 0
    summary = json.loads(stdout)
    model = load_bundle(out)
    assert model.quantisation["precision"] == "int8-pow2"
    assert len(quantised_layers(model.model)) == 12 * 4 + 1
    config, metrics = read_bundle_json(out)
    assert config["quantisation"] == model.quantisation
    assert metrics["precision"] == "int8-pow2" and metrics["val"]["reference"] == "dense"
    assert metrics["val"]["n_images"] == 16 and metrics["datasets"]["calib"]["images"] == 16
    assert metrics["before_quantisation"]["val"]["n_images"] == 16
    # Quantisation costs little: most predictions stay those of the float model. A wrong scale or a
    # transposed weight would leave next to none.
    assert summary["against_float"]["agreement"] >= 75.0
    check = summary["onnx_check"]
    assert check["images"] == 16 and check["agreement"] >= 75.0 and check["max_abs_diff"] < 5.0
    assert config["provenance"]["extra"]["quantised_from"] == "float"
    assert "attention_products" not in config["quantisation"]  # no device: as onnxruntime runs the file


def test_measure_times_both_files_and_a_phone_prices_both_dtypes(capsys, folders, class_map):
    out = folders / "timed"
    extra = ("--measure", "--calibration-images", "8", "--device", "mobile-cpu@cluster")
    code, stdout, _ = run(capsys, *command(folders, class_map, out, *extra))
    assert code == 0
    lines = stdout.splitlines()
    assert any(line.startswith("onnxruntime at batch 1: fp32") for line in lines)
    assert any(line.startswith("onnxruntime vs PyTorch: agreement") for line in lines)
    assert any(line.startswith("predicted on mobile-cpu@cluster at batch 1: fp32") for line in lines)
    _, metrics = read_bundle_json(out)
    price = metrics["device_ms"]
    assert price["quantised"] < price["fp32"] and price["speedup"] == pytest.approx(price["fp32"] / price["quantised"])
    assert price["priced_as"] == {
        "fp32": "mobile-cpu:snapdragon-8-gen-2@cluster",
        "quantised": "mobile-cpu:snapdragon-8-gen-2@cluster+int8",
    }
    # the phone runs the model fully in int8: attention products in int8, residual stream one scale per tensor
    assert "attention_products" in metrics["quantisation"] and "2^0..2^0" in metrics["quantisation"]["stream"]


def test_bad_input_is_refused_in_one_line(capsys, folders, class_map):
    code, _, err = run(capsys, *command(folders, class_map, folders / "never")[:4], "--val", folders / "calib",
                       "--out", folders / "never")  # fmt: skip
    assert code == 2 and "share images" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, *command(folders, class_map, folders / "never", "--calibration-images", "0"))
    assert code == 2 and "--calibration-images" in err
    code, _, err = run(capsys, *command(folders, class_map, folders / "never", "--device", "cuda"))
    assert code == 2 and "--device cuda has no int8 price" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, *command(folders, class_map, folders / "never", "--device", "fpga+int8"))
    assert code == 2 and "name the device without a dtype" in err
    assert not (folders / "never").exists()


def test_a_quantised_bundle_is_not_quantised_again(capsys, folders, class_map):
    first = folders / "once"
    assert run(capsys, *command(folders, class_map, first, "--calibration-images", "8"))[0] == 0
    argv = list(command(folders, class_map, folders / "twice"))
    argv[1] = first
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already quantised" in err and "Traceback" not in err


def test_the_device_prices_the_float_and_the_quantised_model_each_in_its_own_dtype():
    from vitprune.cli_quantise import _priced_as

    assert _priced_as("fpga", "int8-pow2") == {"fp32": "fpga:zcu102+int16", "int8-pow2": "fpga:zcu102"}
    assert _priced_as("mobile-cpu@one", "int8")["int8"] == "mobile-cpu:snapdragon-8-gen-2@one+int8"
    assert _priced_as("fpga", "w4a8")["w4a8"] == "fpga:zcu102+w4a8"


def test_the_most_sensitive_blocks_are_kept_float_and_priced_as_float(capsys, folders, class_map):
    out = folders / "mixed"
    extra = ("--calibration-images", "8", "--keep-float", "2", "--device", "mobile-cpu", "--json")
    code, stdout, _ = run(capsys, *command(folders, class_map, out, *extra))
    assert code == 0
    summary = json.loads(stdout)
    chosen = summary["float_blocks"]
    gains = summary["block_sensitivity"]["kl_gain"]
    assert len(chosen) == 2 and len(gains) == 12
    assert min(gains[i] for i in chosen) >= max(g for i, g in enumerate(gains) if i not in chosen)
    model = load_bundle(out)
    assert model.quantisation["float_blocks"] == chosen
    assert len(quantised_layers(model.model)) == 10 * 4 + 2  # and the classifier and, on a phone, the patch embedding
    price = summary["device_ms"]
    assert price["quantised"] < price["fp32"] and f"blocks {chosen[0]}, {chosen[1]}" in price["priced_as"]["quantised"]
    code, _, err = run(capsys, *command(folders, class_map, folders / "never", "--float-blocks", "0,12"))
    assert code == 2 and "float blocks [12] do not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # argparse refuses it with its usage line
        run(capsys, *command(folders, class_map, folders / "never", "--float-blocks", "first"))
    assert "give block indices separated by commas" in capsys.readouterr().err
    assert not (folders / "never").exists()


def test_network_scales_choose_power_of_two_scales_for_the_whole_model(capsys, folders, class_map):
    out = folders / "network"
    extra = ("--precision", "int8-pow2", "--network-scales", "--calibration-images", "8")
    assert run(capsys, *command(folders, class_map, out, *extra))[0] == 0
    assert "chosen for the whole network" in load_bundle(out).quantisation["scales"]
    code, _, err = run(capsys, *command(folders, class_map, folders / "never", "--network-scales"))
    assert code == 2 and "use int8-pow2 without reconstruct" in err and "Traceback" not in err
