"""The latency-table commands: devices, profile, lut import / validate, and their errors."""

from __future__ import annotations

import json

import pytest

from tests.vitprune.running import run


@pytest.fixture(autouse=True)
def profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_PROFILES_DIR", str(tmp_path / "profiles"))
    return tmp_path / "profiles"


def test_devices_lists_measured_and_analytic_profiles(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0
    devices = {d["name"]: d for d in json.loads(out)}
    assert devices["host-cpu"]["kind"] == "measured" and devices["host-cpu"]["coverage"] == "measured on first use"
    assert {"mobile-cpu:snapdragon-8-gen-2", "fpga:zcu102"} <= set(devices)


def test_profile_dry_run_reports_the_grid_size(capsys):
    code, _, err = run(capsys, "profile", "--model", "deit_tiny_patch16_224", "--batch", "1,32", "--dry-run")
    assert code == 0
    entries = int(err.split("entries")[0].split()[-1])
    assert entries > 1000


def test_validate_prices_an_analytic_device_and_reports(capsys, tmp_path):
    code, out, _ = run(
        capsys, "lut", "validate", "--device", "fpga:zcu102", "--model", "deit_tiny_patch16_224",
        "--configs", "3", "--passes", "1", "--threads", "1", "--json", "--out", str(tmp_path / "check"),
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["configs"] == 3 and summary["device"] == "fpga:zcu102"
    assert (tmp_path / "check.md").exists() and (tmp_path / "check.html").exists()


def test_validate_warns_when_this_process_runs_another_runtime_than_the_table(capsys, tmp_path):
    import timm

    from latency_models.registry import Registry
    from pruning import describe

    spec = describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")
    analytic = Registry(tmp_path).table("fpga:zcu102", spec, [1])
    device = analytic.device.model_copy(
        update={"kind": "measured", "runtime": "torch 0.0 (cpu, tcmalloc)", "dtype": "float32"}
    )
    path = tmp_path / "board.json"
    analytic.model_copy(update={"device": device}).save(path)
    argv = ["lut", "validate", "--table", str(path), "--model", "deit_tiny_patch16_224", "--configs", "2"]
    code, _, err = run(capsys, *argv, "--passes", "1", "--threads", "1", "--json")
    assert code == 0 and "timed with torch 0.0 (cpu, tcmalloc) and this process runs torch" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lut", "import", "{missing}", "--name", "board"], "No such file"),
        (["lut", "import", "{bad}", "--name", "board"], "not a vitprune latency table"),
        (["lut", "import", "{bad}", "--name", "../up"], "device name"),
        (["lut", "validate", "--device", "nowhere", "--model", "deit_tiny_patch16_224"], "unknown device"),
        (["lut", "validate", "--device", "mobile-cpu:nope", "--model", "deit_tiny_patch16_224"], "presets"),
        (["lut", "validate", "--device", "fpga:zcu102", "--model", "resnet50"], "ResNet is not supported"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, argv, message):
    bad = tmp_path / "bad.json"
    bad.write_text('{"weights": [1, 2]}')
    argv = [a.format(missing=tmp_path / "none.json", bad=bad) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
