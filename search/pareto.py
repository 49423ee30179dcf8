"""The Pareto front of a finished search, materialised as physically pruned models.

Every non-dominated trial within budget (the job's objective score up, predicted latency down) goes
through the model stages of `pruning.stages` (`PARETO_STAGES`, the list `vitprune prune` runs too):
rebuilt with the job's weight-recovery option, scored on the held-out validation images, priced by
the device's table and timed on this machine when the job's device is this machine's CPU, and
saved as a bundle. Predicted and measured latency that disagree by more than 10% are flagged.
`pareto.json` holds the rows, `pareto.html` an interactive plot of the front.

A quantised trial (a job that searches `space.precisions`) goes through the same stages at its
precision: its model is quantised on the same calibration images its trial was, after recovery, and
priced from the table of the dtype that runs it; its row says `precision` and which table priced it
(`device.priced_as`).

A job with `fine_tune` then trains its best N float models (by the search's own calibration score, never by
validation) towards the dense model (`FINE_TUNE_STAGES`): each becomes one more row, `fine_tuned_from`
the row it came from, its figures before training under `before_fine_tune`, measured again on the
same validation images (which training never sees).

Each row (also the bundle's metrics.json) names what its figures were measured on: `val` on the
validation images, and `calib_accuracy` (top-1) and `calib_score` (the job's `objective`, what the
search ranked by) on the calibration images, both sets described under `datasets`;
the latency under `device`, `latency_batch` and `budget_ms`; and the dense model's figures from the
same run under `dense`, so a model card can put the two side by side.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from latency_models.calibration import trust
from latency_models.predictor import LatencyPredictor
from latency_models.profiling.run import hardware_name
from latency_models.schema import DeviceInfo
from pruning.bundle import METRICS_FILE, TIMM_PRETRAINED, load_bundle, read_bundle_json
from pruning.config import PruneConfig
from pruning.image_sets import describe_images, eval_data_config, image_set_name, job_image_sets
from pruning.importance import needs_importance
from pruning.model import PrunedViT
from pruning.quantisation.precisions import precision_label
from pruning.stages import DEFAULT_STAGES, ModelRecord, StageInputs, run_stages
from pruning.tokens import padded_widths
from search.context import JobContext, fit_batches, quantisation_batches
from search.job import FLOAT
from search.objectives import objective
from search.trials import calib_accuracy, is_pareto_candidate, trial_float_blocks, trial_precision

__all__ = [
    "DENSE_STAGES",
    "FINE_TUNE_STAGES",
    "MISMATCH",
    "PARETO_STAGES",
    "VARIANTS",
    "SearchResult",
    "flag_over_budget",
    "materialise",
    "pareto_row",
    "pareto_trials",
]

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


PARETO_STAGES: tuple[str, ...] = DEFAULT_STAGES
"""What every Pareto model goes through (build -> recover -> quantise -> evaluate -> time -> save), as for
`vitprune prune`."""

DENSE_STAGES: tuple[str, ...] = ("build", "evaluate", "time")
"""The dense model is scored the same way, not saved: its logits are the reference, its latency the baseline."""

FINE_TUNE_STAGES: tuple[str, ...] = ("fine-tune", "evaluate", "time", "save")
"""What a saved Pareto model goes through when the job fine-tunes it (its tokens may change with training,
so it is evaluated and priced again)."""

VARIANTS = ("searched", "fine-tuned")
"""What a row's model is (its `variant`): a Pareto model as the search found it, or one trained further."""

FINE_TUNED_SUFFIX = "-fine-tuned"
"""A fine-tuned model's bundle is its source's, with this added."""

BEFORE_FINE_TUNE = ("val", "calib_accuracy", "calib_accuracy_se", "calib_score", "predicted_ms", "measured_ms")
"""A source row's figures that a fine-tuned row keeps under `before_fine_tune`."""


def materialise(
    study: optuna.Study, context: JobContext, out: Path, *, search_s: float, show_progress: bool = True
) -> SearchResult:
    """Rebuild, score, time and save every Pareto model of `study` under `out`; write pareto.json/.html."""
    job = context.job
    inputs = _stage_inputs(context)
    calib_batches = fit_batches(context.calib)
    quant_batches = quantisation_batches(context.calib) if context.job.space.quantised else None
    _, dense = run_stages(DENSE_STAGES, ModelRecord(PruneConfig.dense(context.spec), inputs))
    dense_row = pareto_row(dense)
    shared = _shared_figures(context, inputs, dense_row)
    rows = []
    front = pareto_trials(study)
    for trial in tqdm(front, desc="pareto models", unit="model", disable=not show_progress):
        path = out / "models" / f"trial-{trial.number:04d}"
        saved = path / METRICS_FILE
        if saved.exists():  # a resumed job keeps the models it already built
            rows.append(json.loads(saved.read_text()))
            continue
        config = PruneConfig.model_validate(trial.user_attrs["config"])
        precision, float_blocks = trial_precision(trial), trial_float_blocks(trial)
        recover = job.recover and needs_importance(config, context.spec)
        extra = {
            "trial": trial.number,
            "variant": "searched",
            "precision": precision,
            **({"float_blocks": float_blocks} if float_blocks else {}),
            "calib_accuracy": calib_accuracy(trial),
            # one standard error of it over the calibration images: closer models are not told apart
            "calib_accuracy_se": _calib_accuracy_se(trial),
            "objective": job.objective,
            "calib_score": trial.values[0],
            "recovered": recover,
            "bundle": str(path.relative_to(out)),
            "dense_ms_same_run": dense_row.get("measured_ms"),
            **shared,
        }
        if precision != FLOAT:
            extra["device"] = shared["device"] | _priced_as(context.predictor_for(precision))
            if float_blocks:
                extra["device"]["float_blocks_priced_as"] = context.predictor.table.device.name
        trial_inputs = replace(
            inputs,
            calibration=calib_batches if recover else None,
            recover=recover,
            precision=precision,
            quantisation_batches=quant_batches if precision != FLOAT else None,  # those its trial was quantised on
            integer_attention=precision in context.fully_integer,
            stream_shifts=context.fully_integer.get(precision),
            float_blocks=float_blocks,
            reference=dense.logits,
            out=path,
            report=lambda record, extra=extra: flag_over_budget(pareto_row(record) | extra, context.requested_ms),
            overwrite=True,
        )
        provenance = {
            "study": study.study_name,
            "trial": trial.number,
            "device": job.device,
            "batch": job.batch,
            "weights": Path(job.weights).name if job.weights else TIMM_PRETRAINED,  # a name: no server paths
        }
        _, record = run_stages(PARETO_STAGES, ModelRecord(config, trial_inputs, provenance))
        rows.append(record.metrics)
    if job.fine_tune is not None:
        rows += fine_tune_best(rows, context, replace(inputs, reference=dense.logits), out, show_progress)
    state = _trial_counts(study)
    result = SearchResult(study.study_name, context.budget_ms, dense_row, rows, state, round(search_s, 1))
    result.files = {"json": "pareto.json", "plot": "pareto.html"}
    (out / "pareto.json").write_text(
        json.dumps(result.to_dict() | {"job": json.loads(job.model_dump_json())}, indent=2)
    )
    plot_front(study, result, out / "pareto.html", objective(job.objective).label)
    return result


def fine_tune_best(
    rows: list[dict[str, Any]], context: JobContext, inputs: StageInputs, out: Path, show_progress: bool
) -> list[dict[str, Any]]:
    """Fine-tune the job's `fine_tune.models` best saved Pareto models; their new rows.

    Best is the search's own ranking (calibration score, then the faster), never validation: the
    validation figures stay held out. Training keeps a checkpoint beside the bundles until its model is
    saved, so a job taken over by another worker resumes the training instead of starting it again.
    """
    job = context.job
    # Training a quantised model would move its weights off their int8 grid: only float models are trained.
    floats = [row for row in rows if row.get("precision", FLOAT) == FLOAT]
    # Rows saved before jobs had objectives were ranked by top-1, their only score.
    ranked = sorted(floats, key=lambda row: (-row.get("calib_score", row.get("calib_accuracy")), row["predicted_ms"]))
    best = ranked[: job.fine_tune.models]
    train = context.images("train") if job.train is not None else context.calib
    datasets = {
        "train": describe_images(_train_name(job), train, eval_data_config(context.dense, context.spec.image_size))
    }
    new_rows = []
    for source in tqdm(best, desc="fine-tuning", unit="model", disable=not show_progress):
        path = out / (source["bundle"] + FINE_TUNED_SUFFIX)
        saved = path / METRICS_FILE
        if saved.exists():
            new_rows.append(json.loads(saved.read_text()))
            continue
        kept = {key: source[key] for key in source if key not in BEFORE_FINE_TUNE and key != "over_budget"}
        extra = kept | {
            "variant": "fine-tuned",
            "bundle": str(path.relative_to(out)),
            "fine_tuned_from": source["bundle"],
            "before_fine_tune": {key: source[key] for key in BEFORE_FINE_TUNE if key in source},
            "datasets": source["datasets"] | datasets,
        }

        def report(record: ModelRecord, extra: dict[str, Any] = extra) -> dict[str, Any]:
            row = extra | pareto_row(record) | {"fine_tune": record.fine_tuned}
            return flag_over_budget(row, context.requested_ms)

        model = load_bundle(out / source["bundle"])
        recorded = read_bundle_json(out / source["bundle"])[0].get("provenance") or {}
        provenance = dict(recorded.get("extra") or {}) | {"fine_tuned_from": Path(source["bundle"]).name}
        tuned_inputs = replace(
            inputs,
            fine_tune=job.fine_tune.recipe(),
            train=train,
            compute=context.compute_device,
            checkpoint=out / "checkpoints" / path.name,
            progress=show_progress,
            out=path,
            report=report,
            overwrite=True,
        )
        _, record = run_stages(FINE_TUNE_STAGES, ModelRecord(model.config, tuned_inputs, provenance), model)
        new_rows.append(record.metrics)
        shutil.rmtree(tuned_inputs.checkpoint, ignore_errors=True)  # the bundle holds the result
    return new_rows


def _train_name(job) -> str:
    """What the training images are called in metrics.json and on the card."""
    if job.train is not None:
        return image_set_name(job.train)
    return job_image_sets(json.loads(job.model_dump_json()))["calib"]["name"]


_DENSE_FIGURES = ("val", "predicted_ms", "measured_ms", "params", "gflops")
"""What each row keeps of the dense model's row: the card sets the pruned model's figures beside them."""


def _shared_figures(context: JobContext, inputs: StageInputs, dense_row: dict[str, Any]) -> dict[str, Any]:
    """What every Pareto row adds about its run: image sets, target device, batch, budget and the dense model."""
    names = job_image_sets(json.loads(context.job.model_dump_json()))
    data_config = eval_data_config(context.dense, context.spec.image_size)
    device = context.predictor.table.device
    return {
        "datasets": {
            "val": describe_images(names["val"]["name"], inputs.val, data_config),
            "calib": describe_images(names["calib"]["name"], context.calib, data_config),
        },
        "device": {
            "name": context.job.device,
            "kind": device.kind,
            "hardware": device.hardware,
            "runtime": device.runtime,
            "threads": device.threads,
            "dtype": device.dtype,
            "basis": trust(context.predictor.table, context.spec, context.job.batch),
        },
        "latency_batch": context.job.batch,
        "budget_ms": round(context.budget_ms, 4),
        "budget_margin": round(context.margin, 4),
        "requested_budget_ms": round(context.requested_ms, 4),
        "dense": {key: dense_row[key] for key in _DENSE_FIGURES if key in dense_row},
    }


def _priced_as(predictor: LatencyPredictor) -> dict[str, Any]:
    """What a quantised row says of the table that priced it, beside the job's device."""
    device = predictor.table.device
    return {"priced_as": device.name, "dtype": device.dtype, "hardware": device.hardware}


def is_this_machine(device: DeviceInfo) -> bool:
    """A table measured on this machine's CPU: its Pareto models can be timed here, with its threads."""
    return device.kind == "measured" and device.runtime.endswith("(cpu)") and device.hardware == hardware_name()


def _calib_accuracy_se(trial: FrozenTrial) -> float | None:
    """The standard error of `calib_accuracy`: of top-1, or of agreement for unlabelled images (top-1 None)."""
    top1_se = trial.user_attrs.get("top1_se")
    return top1_se if top1_se is not None else trial.user_attrs.get("agreement_se")


def _stage_inputs(context: JobContext) -> StageInputs:
    """What the stages need from the job: the dense model, its validation images, the target device's table."""
    job = context.job

    def price(model: PrunedViT, counts: torch.Tensor | None) -> float:
        # Per-image counts are priced as the padded widths a batch of `job.batch` images runs at.
        widths = padded_widths(counts, job.batch) if model.config.per_image else None
        quantisation = model.quantisation or {"precision": FLOAT}
        predictor = context.predictor_for(quantisation["precision"], quantisation.get("float_blocks", ()))
        return predictor.predict(model.config, context.spec, job.batch, kept_tokens=widths).ms

    return StageInputs(
        dense=context.dense,
        name=context.spec.name,
        importance=context.importance,
        val=context.images("val"),
        eval_batch=50,
        price=price,
        measure=is_this_machine(context.predictor.table.device),
        latency_batch=job.batch,
        threads=context.predictor.table.device.threads,
        weights=job.weights,
        model_kwargs=job.model_kwargs or None,
        onnx=job.onnx,
    )


def pareto_row(record: ModelRecord) -> dict[str, Any]:
    """A model's row of pareto.json (and its bundle's metrics.json): structure, validation, latency, size."""
    row: dict[str, Any] = {
        "config": record.config.without_indices().model_dump(mode="json"),
        "config_key": record.config.without_indices().key(),
        "val": record.evaluation.to_dict(),
        "predicted_ms": round(record.predicted_ms, 4),
        "params": record.params,
        "gflops": round(record.flops / 1e9, 4),
    }
    if record.flops_images is not None:
        row["gflops_images"] = record.flops_images  # a mean over this many images: counts differ per image
    if record.latency is not None:
        row["measured_ms"] = round(record.latency.ms, 4)
        row["latency_mismatch"] = abs(record.latency.ms / record.predicted_ms - 1) > MISMATCH
    return row


def flag_over_budget(row: dict[str, Any], budget_ms: float) -> dict[str, Any]:
    """`row` with `over_budget`: True when the model, timed on its own device, ran over the job's budget
    (the budget as asked, before any safety margin); absent when it could not be timed here."""
    if "measured_ms" in row:
        row["over_budget"] = row["measured_ms"] > budget_ms
    return row


def _trial_counts(study: optuna.Study) -> dict[str, Any]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    evaluated = [t for t in complete if t.user_attrs.get("evaluated")]
    eval_s = [t.user_attrs["eval_s"] for t in evaluated if "eval_s" in t.user_attrs]
    build_s = [t.user_attrs["build_s"] for t in evaluated if "build_s" in t.user_attrs]
    wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in complete if t.datetime_start]
    return {
        "complete": len(complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "evaluated": len(evaluated),
        "over_budget_skipped": sum(not t.user_attrs.get("evaluated") for t in complete),
        "duplicates": sum("duplicate_of" in t.user_attrs for t in complete),
        "mean_eval_s": round(sum(eval_s) / len(eval_s), 3) if eval_s else None,
        "mean_build_s": round(sum(build_s) / len(build_s), 3) if build_s else None,  # of eval_s: building models
        "trials_per_min": round(60 * len(wall) / sum(wall), 2) if wall and sum(wall) > 0 else None,
    }


def _precision_label(trial_or_row: FrozenTrial | dict[str, Any]) -> str:
    """The precision of a trial or of a model's row, with the blocks it keeps float (`precision_label`)."""
    if isinstance(trial_or_row, dict):
        return precision_label(trial_or_row.get("precision", FLOAT), trial_or_row.get("float_blocks", []))
    return precision_label(trial_precision(trial_or_row), trial_float_blocks(trial_or_row))


def _symbol(precision: str) -> str:
    return "circle" if precision == FLOAT else "diamond"


def plot_front(study: optuna.Study, result: SearchResult, path: Path, score_label: str) -> None:
    """Every evaluated trial (its calibration top-1, and the score the search ranked it by, `score_label`,
    on hover), the Pareto models on the validation images, the budget and dense."""
    evaluated = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("evaluated")
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[t.values[1] for t in evaluated],
            y=[calib_accuracy(t) for t in evaluated],
            mode="markers",
            name="trials (calibration top-1)",
            marker={"color": "lightgray", "size": 7},
            text=[f"trial {t.number} ({_precision_label(t)}), {score_label} {t.values[0]:.2f}" for t in evaluated],
        )
    )

    def val_top1(models: list[dict[str, Any]]) -> list[float]:
        return [m["val"]["top1"] if m["val"]["top1"] is not None else m["val"]["agreement"] for m in models]

    models = [m for m in result.models if m.get("variant", "searched") == "searched"]
    top1 = val_top1(models)
    if tuned := [m for m in result.models if m.get("variant") == "fine-tuned"]:
        fig.add_trace(
            go.Scatter(
                x=[m["predicted_ms"] for m in tuned],
                y=val_top1(tuned),
                mode="markers",
                name="fine-tuned models (validation, predicted ms)",
                marker={"color": "seagreen", "symbol": "star", "size": 13},
                text=[m["bundle"] for m in tuned],
            )
        )
    precisions = [m.get("precision", FLOAT) for m in models]
    fig.add_trace(
        go.Scatter(
            x=[m["predicted_ms"] for m in models],
            y=top1,
            mode="lines+markers",
            name="Pareto models (validation, predicted ms; diamonds quantised)",
            marker={"color": "crimson", "size": 10, "symbol": [_symbol(p) for p in precisions]},
            text=[f"{m['bundle']} ({_precision_label(m)})" for m in models],
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
