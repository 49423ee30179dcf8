"""The Pareto models are the model stages of `vitprune prune` run on the front's configs."""

from __future__ import annotations

import json

import optuna
import torch

from pruning.bundle import CONFIG_FILE, METRICS_FILE, README_FILE, load_bundle
from pruning.config import PruneConfig
from pruning.model import prune_model
from pruning.stages import DEFAULT_STAGES
from search import JobContext, run_search
from search.context import fit_batches
from search.pareto import PARETO_STAGES
from tests.search.tiny import tiny_job


def test_pareto_bundles_are_the_default_stages_run_on_the_front(tmp_path, tiny_root):
    assert PARETO_STAGES == DEFAULT_STAGES  # the list `vitprune prune` runs
    job = tiny_job(tiny_root, trials=10)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    result = run_search(job, url, tmp_path / "out", show_progress=False)
    context = JobContext.from_study(optuna.load_study(study_name=result.study, storage=url))
    assert any(row["recovered"] for row in result.models)
    assert result.dense["val"]["agreement"] is None  # the dense model is the reference, not scored against one
    for row in result.models:
        bundle = tmp_path / "out" / row["bundle"]
        assert json.loads((bundle / METRICS_FILE).read_text()) == row  # the save stage wrote the row
        extra = json.loads((bundle / CONFIG_FILE).read_text())["provenance"]["extra"]
        assert extra == {
            "study": result.study,
            "trial": row["trial"],
            "device": job.device,
            "batch": job.batch,
            "weights": "weights.safetensors",  # the file's name: no machine path goes into a bundle
        }
        # The weights are what pruning with the job's recovery option gives, bit for bit.
        expected = prune_model(
            context.dense,
            PruneConfig.model_validate(row["config"]),
            name=context.spec.name,
            importance=context.importance,
            calibration=fit_batches(context.calib) if row["recovered"] else None,
            recover=row["recovered"],
        )
        got, want = load_bundle(bundle).model.state_dict(), expected.model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def test_pareto_rows_name_their_images_device_and_dense_model_and_the_card_prints_them(tmp_path, tiny_root):
    """Every figure of a row says what it was measured on; the card's FLOPs are the row's, not a recount."""
    job = tiny_job(tiny_root, trials=8)
    result = run_search(job, f"sqlite:///{tmp_path / 'search.db'}", tmp_path / "out", show_progress=False)
    assert result.models
    for row in result.models:
        assert row["datasets"]["val"] | {"preprocessing": None} == {
            "name": f"{tiny_root.name}/val",  # folder names (with the parent's for a bare "val"), never a path
            "images": 20,
            "classes": 10,
            "labelled": True,
            "preprocessing": None,
        }
        assert row["datasets"]["val"]["preprocessing"]["crop"] == [32, 32]
        assert row["datasets"]["calib"] == row["datasets"]["val"] | {"name": f"{tiny_root.name}/calib", "images": 60}
        assert row["device"]["name"] == "fpga" and row["device"]["kind"] == "analytic"
        assert row["latency_batch"] == 1 and row["predicted_ms"] <= row["budget_ms"] == round(result.budget_ms, 4)
        assert row["dense"]["gflops"] == result.dense["gflops"] > row["gflops"]
        assert row["dense"]["val"] == result.dense["val"]
        card = (tmp_path / "out" / row["bundle"] / README_FILE).read_text()
        flops = f"{round(row['gflops'], 3):g} G of {round(row['dense']['gflops'], 3):g} G dense"  # as the dashboard
        assert f"FLOPs per image | {flops}" in card
        assert f"Validation top-1 **{row['val']['top1']:.1f}%**" in card
        assert (
            f"Calibration top-1 {row['calib_accuracy']:.1f}% on 60 calibration images of `{tiny_root.name}/calib`"
            in card
        )
        assert f"Budget of the search: {row['budget_ms']:.2f} ms" in card
        assert "Target device: `fpga` (analytic" in card
        assert row["device"]["basis"].startswith("specifications only")
        assert f"Its latencies rest on: {row['device']['basis']}" in card
        for internal in ("None", "dense_ms_same_run", row["bundle"], str(tmp_path)):
            assert internal not in card


def test_a_model_timed_over_the_budget_asked_for_is_flagged():
    from search.pareto import flag_over_budget

    assert flag_over_budget({"measured_ms": 10.4, "predicted_ms": 9.5}, 10.0)["over_budget"] is True
    assert flag_over_budget({"measured_ms": 9.9, "predicted_ms": 9.5}, 10.0)["over_budget"] is False
    assert "over_budget" not in flag_over_budget({"predicted_ms": 9.5}, 10.0)  # not timed here: nothing to say
