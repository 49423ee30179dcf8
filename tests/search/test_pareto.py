"""The Pareto models are the model stages of `vitprune prune` run on the front's configs."""

from __future__ import annotations

import json

import optuna
import torch

from pruning.bundle import CONFIG_FILE, METRICS_FILE, load_bundle
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
        assert extra == {"study": result.study, "trial": row["trial"], "device": job.device, "batch": job.batch}
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
