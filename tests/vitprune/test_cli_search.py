"""`vitprune search`: a real search from the command line, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.search.tiny import tiny_job
from tests.vitprune.running import run
from vitprune.cli import build_parser
from vitprune.cli_search import format_result, job_from_args


@pytest.fixture(autouse=True)
def profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.delenv("VITPRUNE_DB_URL", raising=False)


def test_search_from_a_job_file_writes_the_front(capsys, tmp_path):
    job = tiny_job(tmp_path, trials=10)
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    code, out, _ = run(capsys, "search", "--job", job_file, "--out", tmp_path / "out", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["trials"]["complete"] == 10 and result["models"]
    assert (tmp_path / "out" / "search.db").is_file() and (tmp_path / "out" / "pareto.html").is_file()
    assert json.loads((tmp_path / "out" / "job.json").read_text())["trials"] == 10
    for model in result["models"]:
        assert (tmp_path / "out" / model["bundle"] / "model.safetensors").is_file()


@pytest.mark.slow
def test_search_the_real_deit_tiny_on_real_images(capsys, tmp_path, deit_tiny_weights, imagenet_dir, class_map):
    folders = sorted(p for p in imagenet_dir.iterdir() if p.is_dir())
    for name, part in (("calib", folders[:24]), ("val", folders[24:40])):  # disjoint classes, disjoint files
        (tmp_path / name).mkdir()
        for folder in part:
            (tmp_path / name / folder.name).symlink_to(folder.resolve())
    code, out, err = run(
        capsys,
        "search",
        "--model",
        "deit_tiny_patch16_224",
        "--weights",
        deit_tiny_weights,
        "--device",
        "mobile-cpu",
        "--budget-ratio",
        "0.8",
        "--calib",
        tmp_path / "calib",
        "--val",
        tmp_path / "val",
        "--class-map",
        class_map,
        "--trials",
        "8",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    front = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert front["dense"]["val"]["n_images"] == 16 and front["dense"]["val"]["top1"] >= 50
    assert front["models"] and all(m["predicted_ms"] <= front["budget_ms"] for m in front["models"])
    assert "top-1" in out and "pareto.html" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "deit_tiny_patch16_224", "--weights", "w.safetensors"], "give --calib"),
        (["--device", "missing.json", "--model", "m", "--calib", "c", "--val", "v"], "no such latency table"),
        (["--model", "m", "--weights", "w", "--calib", "c", "--tokens", "merge", "--merge-max", "5"], "multiple of 2"),
    ],
)
def test_search_input_errors_exit_2_with_a_message(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "search", *argv, "--budget-ratio", "0.7", "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err


def test_an_infeasible_budget_is_refused_with_both_numbers(capsys, tmp_path):
    job = tiny_job(tmp_path, budget_ms=0.0001, budget_ratio=None)
    (tmp_path / "job.json").write_text(job.model_dump_json())
    code, _, err = run(capsys, "search", "--job", tmp_path / "job.json", "--out", tmp_path / "out")
    assert code == 2 and "cheapest config" in err and "budget of 0.0001 ms" in err


def test_merge_flags_set_the_search_space():
    base = ["search", "--model", "deit_tiny_patch16_224", "--weights", "w.safetensors", "--calib", "c", "--out", "o"]
    args = build_parser().parse_args(
        [*base, "--budget-ratio", "0.6", "--tokens", "topk+merge", "--merge-group", "1", "--merge-max", "16"]
    )
    space = job_from_args(args).space
    assert (space.tokens, space.merge_group, space.merge_max) == ("topk+merge", 1, 16)
    # Without --tokens: the op measured best on the device (the phone merges, the host keeps top-k;
    # nothing measured on a GPU).
    default = job_from_args(build_parser().parse_args([*base, "--budget-ratio", "0.6"])).space
    assert default.tokens == "topk"
    phone = job_from_args(build_parser().parse_args([*base, "--budget-ratio", "0.6", "--device", "mobile-cpu"])).space
    assert (phone.tokens, phone.merge_group, phone.merge_max) == ("merge", 3, 24)
    gpu = job_from_args(build_parser().parse_args([*base, "--budget-ratio", "0.6", "--device", "cuda"])).space
    assert gpu.tokens == "topk"
    assert job_from_args(build_parser().parse_args([*base, "--budget-ratio", "0.6"])).objective == "kl"
    ranked = build_parser().parse_args([*base, "--budget-ratio", "0.6", "--objective", "top1"])
    assert job_from_args(ranked).objective == "top1"


def test_the_precisions_flag_searches_precision_with_the_structure():
    base = ["search", "--model", "deit_tiny_patch16_224", "--weights", "w.safetensors", "--calib", "c", "--out", "o"]
    plain = job_from_args(build_parser().parse_args([*base, "--budget-ratio", "0.5"]))
    assert plain.space.precisions == ("fp32",)
    argv = [*base, "--budget-ratio", "0.5", "--device", "fpga", "--precisions", "fp32,int8"]
    joint = job_from_args(build_parser().parse_args(argv))
    assert joint.space.precisions == ("fp32", "int8") and joint.study_key() != plain.study_key()


def test_the_result_labels_each_accuracy_with_its_images():
    datasets = {"val": {"name": "imagenet/val", "images": 500}, "calib": {"name": "imagenet/calib", "images": 400}}
    row = {"bundle": "models/trial-0024", "val": {"top1": 74.5}, "calib_accuracy": 77.5, "predicted_ms": 3.2}
    result = {
        "study": "s",
        "trials": {"complete": 30},
        "budget_ms": 4.0,
        "dense": {"val": {"top1": 78.4}, "predicted_ms": 6.0},
        "models": [row | {"datasets": datasets}],
    }
    lines = format_result(result, Path("out")).splitlines()
    assert lines[1] == "images: validation imagenet/val (500 images), calibration imagenet/calib (400 images)"
    assert lines[2] == "dense: validation top-1 78.4%  predicted 6.00 ms"
    assert lines[3] == "models/trial-0024: validation top-1 74.5%, calibration top-1 77.5%  predicted 3.20 ms"
    # A job ranked by fidelity says the score it ranked by, beside top-1.
    result["models"] = [row | {"datasets": datasets, "objective": "kl", "calib_score": 95.123}]
    line = format_result(result, Path("out")).splitlines()[3]
    assert "calibration top-1 77.5%, calibration fidelity 100·exp(-KL) 95.1%" in line
