"""`vitprune devices fit`: a device fitted to a timings file, stored, listed, and bad input refused."""

from __future__ import annotations

import json

import pytest

from latency_models.analytic import PRESETS
from latency_models.fitting import parse_timings, predict
from tests.vitprune.running import run

PHONE = PRESETS["mobile-cpu:snapdragon-8-gen-2"]
MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_small_patch16_384"]


@pytest.fixture(autouse=True)
def profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_PROFILES_DIR", str(tmp_path / "profiles"))
    return tmp_path / "profiles"


@pytest.fixture
def timings(tmp_path):
    """Timings of a phone running everything at a third of the preset's efficiencies."""
    slow = PHONE.model_copy(
        update={k: getattr(PHONE, k) / 3 for k in ("gemm_efficiency", "attention_efficiency", "elementwise_efficiency")}
    )
    exact = predict(slow, parse_timings("model,ms\n" + "\n".join(f"{m},1" for m in MODELS)))
    path = tmp_path / "timings.csv"
    rows = "\n".join(f"{m},,1,,float32,{ms * f:.4f}" for m, ms, f in zip(MODELS, exact, (1.01, 0.99, 1.0), strict=True))
    path.write_text("model,image_size,batch,cores,dtype,ms\n" + rows + "\n")
    return path


def test_fit_writes_the_device_and_prints_each_timings_error(capsys, timings, profiles):
    code, out, err = run(
        capsys, "devices", "fit", "--name", "my-phone", "--base", "mobile-cpu", "--timings", str(timings)
    )
    assert code == 0
    path = profiles / "fitted" / "my-phone.json"
    assert f"wrote {path}" in err and path.exists()
    stored = json.loads(path.read_text())
    assert stored["base"] == "mobile-cpu:snapdragon-8-gen-2" and [r["model"] for r in stored["rows"]] == MODELS
    for row in stored["rows"]:  # each timing's row in the report, with its fit and left-out errors
        fit_error = f"{100 * (row['fitted_ms'] / row['ms'] - 1):+.1f}%"
        lomo_error = f"{100 * (row['lomo_ms'] / row['ms'] - 1):+.1f}%"
        assert any(row["model"] in line and fit_error in line and lomo_error in line for line in out.splitlines())
    assert "| gemm_efficiency | 0.6 |" in out
    s = stored["summary"]
    assert f"median error {100 * s['fit_median_error']:.1f}%" in out
    assert f"leave-one-model-out median {100 * s['lomo_median_error']:.1f}%" in out
    assert s["base_median_error"] > 0.5 and s["fit_worst_error"] < 0.05

    code, out, _ = run(capsys, "devices")
    assert code == 0
    listed = [line for line in out.splitlines() if line.startswith("my-phone")]
    assert len(listed) == 1 and "fitted" in listed[0]
    assert "rests on: fitted on 3 timings of 3 models to mobile-cpu:snapdragon-8-gen-2" in out
    code, out, _ = run(capsys, "devices", "--json")
    devices = {d["name"]: d for d in json.loads(out)}
    assert devices["my-phone"]["kind"] == "fitted" and devices["my-phone"]["basis"].startswith("fitted on 3 timings")


def test_fit_prints_json_when_asked(capsys, timings):
    argv = ["devices", "fit", "--name", "p", "--base", "mobile-cpu:snapdragon-8-gen-2", "--timings", str(timings)]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["summary"]["timings"] == 3 and set(report["free"]) >= {"gemm_efficiency", "op_overhead_us"}


def test_an_fpga_is_fitted_to_its_timing_report(capsys, tmp_path, profiles):
    report = tmp_path / "report.csv"
    report.write_text(
        "model,batch,dtype,cores,ms\ndeit_tiny_patch16_224,1,int8,,9.0\ndeit_small_patch16_224,1,int8,x,25\n"
    )
    code, out, _ = run(capsys, "devices", "fit", "--name", "zcu", "--base", "fpga", "--timings", str(report))
    assert code == 2  # cores are ignored for an FPGA, but a cell must still be a valid one
    report.write_text(
        "model,batch,dtype,cores,ms\ndeit_tiny_patch16_224,1,int8,,9.0\ndeit_small_patch16_224,1,int8,all,25\n"
    )
    code, out, _ = run(capsys, "devices", "fit", "--name", "zcu", "--base", "fpga", "--timings", str(report))
    assert code == 0 and "fpga:zcu102 (int8) fitted on 2 timings of 2 models" in out and "| clock_mhz | 200 |" in out
    assert json.loads((profiles / "fitted" / "zcu.json").read_text())["cores"] is None


@pytest.mark.parametrize(
    ("csv", "argv", "message"),
    [
        ("model,batch\ndeit_tiny_patch16_224,1\n", [], "missing column(s) ms"),
        ("model,ms\ndeit_tiny_patch16_224,3\nnot_a_vit,4\n", [], "line 3: unknown model 'not_a_vit'"),
        ("model,ms\ndeit_tiny_patch16_224,three\n", [], "line 2: ms 'three' is not a number"),
        ("model,cores,ms\ndeit_tiny_patch16_224,one,3\ndeit_tiny_patch16_224,all,1\n", [], "several cores settings"),
        ("model,ms\ndeit_tiny_patch16_224,3\n", ["--base", "mobile-cpu:nope"], "unknown base 'mobile-cpu:nope'"),
        ("model,ms\ndeit_tiny_patch16_224,3\n", ["--name", "host-cpu"], "device name 'host-cpu'"),
        ("model,ms\ndeit_tiny_patch16_224,3\n", ["--name", "../up"], "device name '../up'"),
        ("model,ms\ndeit_tiny_patch16_224,3\n", ["--base", "fpga", "--dtype", "float32"], "use int8, int16, w4a8"),
        (None, [], "No such file"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, profiles, csv, argv, message):
    path = tmp_path / "timings.csv"
    if csv is not None:
        path.write_text(csv)
    options = {"--name": "dev", "--base": "mobile-cpu"} | dict(zip(argv[::2], argv[1::2], strict=True))
    flat = [item for pair in options.items() for item in pair]
    code, _, err = run(capsys, "devices", "fit", *flat, "--timings", str(path))
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("vitprune devices: error: ") and not (profiles / "fitted").exists()
