"""The Pareto front of a finished search, materialised as physically pruned models.

Every non-dominated trial within budget (calibration accuracy up, predicted latency down) is
rebuilt with the job's weight-recovery option, scored on the held-out validation images, timed
on this machine when the job's device is this machine's CPU, and saved as a bundle. Predicted
and measured latency that disagree by more than 10% are flagged. `pareto.json` holds the rows,
`pareto.html` an interactive plot of the front.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from latency_models.profiling.run import hardware_name
from latency_models.schema import DeviceInfo
from pruning import PruneConfig, PrunedViT, prune_model
from pruning.bundle import METRICS_FILE, save_bundle
from pruning.flops import count_flops, count_params
from pruning.importance import needs_importance
from pruning.metrics import classification_metrics
from pruning.timing import measure_latency
from search.context import JobContext, fit_batches
from search.evaluator import padded_widths
from search.trials import is_pareto_candidate

__all__ = ["MISMATCH", "SearchResult", "materialise", "pareto_trials"]

MISMATCH = 0.10
"""Measured and predicted latency further apart than this are flagged."""


@dataclass
class SearchResult:
    study: str
    budget_ms: float
    dense: dict[str, Any]
    models: list[dict[str, Any]]
    trials: dict[str, Any]
    search_s: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated evaluated trials within budget, one per config, fastest first."""
    unique: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_pareto_candidate(t) and "duplicate_of" not in t.user_attrs:
            unique.setdefault(t.user_attrs["config_key"], t)
    candidates = list(unique.values())

    def dominated(t: FrozenTrial) -> bool:
        (acc, ms) = t.values
        return any(o.values[0] >= acc and o.values[1] <= ms and tuple(o.values) != (acc, ms) for o in candidates)

    return sorted((t for t in candidates if not dominated(t)), key=lambda t: t.values[1])


def materialise(
    study: optuna.Study, context: JobContext, out: Path, *, search_s: float, show_progress: bool = True
) -> SearchResult:
    job = context.job
    val = context.images("val")
    calib_batches = fit_batches(context.calib)
    timed = is_this_machine(context.predictor.table.device)
    dense = context.dense
    dense_row, dense_logits = _score(_as_pruned(context), val, None, context, timed)
    rows = []
    front = pareto_trials(study)
    for trial in tqdm(front, desc="pareto models", unit="model", disable=not show_progress):
        path = out / "models" / f"trial-{trial.number:04d}"
        saved = path / METRICS_FILE
        if saved.exists():  # a resumed job keeps the models it already built
            rows.append(json.loads(saved.read_text()))
            continue
        config = PruneConfig.model_validate(trial.user_attrs["config"])
        recover = job.recover and needs_importance(config, context.spec)
        pruned = prune_model(
            dense,
            config,
            name=context.spec.name,
            importance=context.importance,
            calibration=calib_batches if recover else None,
            recover=recover,
        )
        row, _ = _score(pruned, val, dense_logits, context, timed)
        row |= {
            "trial": trial.number,
            "calib_accuracy": trial.values[0],
            "recovered": recover,
            "bundle": str(path.relative_to(out)),
            "dense_ms_same_run": dense_row.get("measured_ms"),
        }
        save_bundle(
            pruned,
            path,
            metrics=row,
            provenance={"study": study.study_name, "trial": trial.number, "device": job.device, "batch": job.batch},
            weights=job.weights,
            model_kwargs=job.model_kwargs or None,
            onnx=job.onnx,
            overwrite=True,
        )
        rows.append(row)
    state = _trial_counts(study)
    result = SearchResult(study.study_name, context.budget_ms, dense_row, rows, state, round(search_s, 1))
    result.files = {"json": "pareto.json", "plot": "pareto.html"}
    (out / "pareto.json").write_text(
        json.dumps(result.to_dict() | {"job": json.loads(job.model_dump_json())}, indent=2)
    )
    plot_front(study, result, out / "pareto.html")
    return result


def is_this_machine(device: DeviceInfo) -> bool:
    """A table measured on this machine's CPU: its Pareto models can be timed here, with its threads."""
    return device.kind == "measured" and device.runtime.endswith("(cpu)") and device.hardware == hardware_name()


def _as_pruned(context: JobContext) -> PrunedViT:
    return prune_model(context.dense, PruneConfig.dense(context.spec), name=context.spec.name)


def _score(
    model: PrunedViT, val, reference: torch.Tensor | None, context: JobContext, timed: bool
) -> tuple[dict[str, Any], torch.Tensor]:
    """Validation metrics, predicted latency (from the real token counts) and measured latency."""
    job = context.job
    logits, counts = [], []
    with torch.inference_mode():
        for images, _ in val.batches(50):
            logits.append(model(images).float())
            if model.last_token_counts:
                counts.append(torch.stack(model.last_token_counts, dim=1))
    logits_all = torch.cat(logits)
    metrics = classification_metrics(logits_all, val.labels, reference)
    widths = padded_widths(torch.cat(counts), job.batch) if model.config.has_threshold else None
    predicted = context.predictor.predict(model.config, context.spec, job.batch, kept_tokens=widths).ms
    row: dict[str, Any] = {
        "config": model.config.without_indices().model_dump(mode="json"),
        "config_key": model.config.without_indices().key(),
        "val": metrics.to_dict(),
        "predicted_ms": round(predicted, 4),
        "params": count_params(model),
        "gflops": round(count_flops(model, next(val.batches(1))[0]) / 1e9, 4),
    }
    if timed:
        inputs = next(val.batches(job.batch))[0] if model.config.has_threshold else None
        threads = context.predictor.table.device.threads
        stats = measure_latency(
            model, batch_size=job.batch, inputs=inputs, threads=threads, rounds=5, iters=max(1, 8 // job.batch)
        )
        row["measured_ms"] = round(stats.ms, 4)
        row["latency_mismatch"] = abs(stats.ms / predicted - 1) > MISMATCH
    return row, logits_all


def _trial_counts(study: optuna.Study) -> dict[str, Any]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    evaluated = [t for t in complete if t.user_attrs.get("evaluated")]
    eval_s = [t.user_attrs["eval_s"] for t in evaluated if "eval_s" in t.user_attrs]
    wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in complete if t.datetime_start]
    return {
        "complete": len(complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "evaluated": len(evaluated),
        "over_budget_skipped": sum(not t.user_attrs.get("evaluated") for t in complete),
        "duplicates": sum("duplicate_of" in t.user_attrs for t in complete),
        "mean_eval_s": round(sum(eval_s) / len(eval_s), 3) if eval_s else None,
        "trials_per_min": round(60 * len(wall) / sum(wall), 2) if wall and sum(wall) > 0 else None,
    }


def plot_front(study: optuna.Study, result: SearchResult, path: Path) -> None:
    """Every evaluated trial, the Pareto models (calibration and validation), the budget and dense."""
    evaluated = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("evaluated")
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[t.values[1] for t in evaluated],
            y=[t.values[0] for t in evaluated],
            mode="markers",
            name="trials (calibration)",
            marker={"color": "lightgray", "size": 7},
            text=[f"trial {t.number}" for t in evaluated],
        )
    )
    models = result.models
    top1 = [m["val"]["top1"] if m["val"]["top1"] is not None else m["val"]["agreement"] for m in models]
    fig.add_trace(
        go.Scatter(
            x=[m["predicted_ms"] for m in models],
            y=top1,
            mode="lines+markers",
            name="Pareto models (validation, predicted ms)",
            marker={"color": "crimson", "size": 10},
            text=[m["bundle"] for m in models],
        )
    )
    if models and all("measured_ms" in m for m in models):
        fig.add_trace(
            go.Scatter(
                x=[m["measured_ms"] for m in models],
                y=top1,
                mode="markers",
                name="Pareto models (validation, measured ms)",
                marker={"color": "royalblue", "symbol": "x", "size": 10},
            )
        )
    dense_top1 = result.dense["val"]["top1"] or 100.0
    fig.add_trace(
        go.Scatter(x=[result.dense["predicted_ms"]], y=[dense_top1], mode="markers", name="dense", marker={"size": 12})
    )
    fig.add_vline(x=result.budget_ms, line_dash="dash", annotation_text=f"budget {result.budget_ms:.1f} ms")
    fig.update_layout(
        title=f"{result.study}: accuracy vs latency",
        xaxis_title="latency (ms per batch)",
        yaxis_title="top-1 (%)",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs=True)
