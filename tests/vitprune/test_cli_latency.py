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


def test_validate_runs_quantised_configs_with_onnxruntime_against_the_int8_price(capsys, tmp_path):
    code, out, _ = run(
        capsys, "lut", "validate", "--device", "fpga:zcu102", "--model", "deit_tiny_patch16_224", "--precision",
        "int8", "--configs", "3", "--passes", "1", "--threads", "1", "--json", "--out", str(tmp_path / "check"),
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["precision"] == "int8" and summary["configs"] == 3
    assert "int8 (onnxruntime QDQ)" in (tmp_path / "check.md").read_text()
    rows = json.loads((tmp_path / "check.json").read_text())["rows"]
    # priced by the board's int8 design: the same configs in fp32 are priced by its 16-bit one, slower
    float_code, _, _ = run(
        capsys, "lut", "validate", "--device", "fpga:zcu102", "--model", "deit_tiny_patch16_224",
        "--configs", "3", "--passes", "1", "--threads", "1", "--json", "--out", str(tmp_path / "float"),
    )  # fmt: skip
    assert float_code == 0
    float_rows = json.loads((tmp_path / "float.json").read_text())["rows"]
    assert [r["config"] for r in rows] == [r["config"] for r in float_rows]
    assert all(q["predicted_ms"] < f["predicted_ms"] for q, f in zip(rows, float_rows, strict=True))
    assert all(r["measured_ms"] > 0 and "threshold" not in r["kind"] for r in rows)


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
        (
            ["lut", "validate", "--device", "cuda", "--model", "deit_tiny_patch16_224", "--precision", "int8"],
            "--device cuda has no int8 price",
        ),
        (
            ["lut", "validate", "--table", "{float_table}", "--model", "deit_tiny_patch16_224", "--precision", "int8"],
            "prices float32 models, not --precision int8",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, argv, message):
    bad = tmp_path / "bad.json"
    bad.write_text('{"weights": [1, 2]}')
    float_table = tmp_path / "float.json"
    if "{float_table}" in argv:
        import timm

        from latency_models.registry import Registry
        from pruning import describe

        spec = describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")
        Registry(tmp_path).table("mobile-cpu", spec, [1]).save(float_table)
    argv = [a.format(missing=tmp_path / "none.json", bad=bad, float_table=float_table) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
