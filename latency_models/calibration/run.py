"""Calibrating a measured table on this machine: time real pruned models, fit, check on a fresh draw."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from latency_models.calibration.model import calibration_for, fit
from latency_models.predictor import LatencyPredictor
from latency_models.profiling import Timing
from latency_models.schema import CalibrationCheck, LatencyTable
from latency_models.validate import VALIDATION_TIMING, ValidationReport, measure_configs, validation_configs
from pruning.model import describe
from pruning.spec import ModelSpec

__all__ = ["CalibrationPlan", "calibratable", "calibrate", "dense_vit"]


@dataclass(frozen=True)
class CalibrationPlan:
    """How many models to time: `configs` to fit (the dense model and random pruned ones, drawn with
    `seed`) and `check` more, drawn with `seed + 1`, to check the fit with."""

    configs: int = 32
    check: int = 24
    seed: int = 1_000
    timing: Timing = VALIDATION_TIMING


def calibrate(
    table: LatencyTable,
    dense: nn.Module,
    *,
    batch: int,
    plan: CalibrationPlan | None = None,
    threads: int | None = None,
    images: torch.Tensor | None = None,
    name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> LatencyTable:
    """`table` with a calibration of `dense`'s shape at `batch`, fitted to and checked on models
    timed here now (see `latency_models.calibration`). `table` must have been measured with this
    process's runtime and `threads`: the calibration holds for the settings its models ran at."""
    plan = plan or CalibrationPlan()
    spec = describe(dense, name)
    if images is None:
        images = torch.randn(batch, 3, *spec.image_size, generator=torch.Generator().manual_seed(plan.seed))
    stale = calibration_for(table, spec, batch)
    raw = LatencyPredictor(table.model_copy(update={"calibrations": ()}) if stale else table)
    leave_out = raw.unpriced(spec, batch)

    def measure(predictor: LatencyPredictor, count: int, seed: int, stage: str):
        configs = validation_configs(spec, count, random.Random(seed), leave_out)
        report = (lambda done, total: progress(stage, done, total)) if progress else None
        return measure_configs(
            predictor, dense, configs, batch=batch, images=images, threads=threads, timing=plan.timing,
            name=spec.name, progress=report,
        )  # fmt: skip

    rows, predictions, _, _ = measure(raw, plan.configs, plan.seed, "fit")
    calibration = fit(
        spec,
        batch,
        raw_ms=[p.ms for p in predictions],
        blocks_ms=[p.blocks_ms for p in predictions],
        reductions=[p.reductions for p in predictions],
        measured_ms=[r.normalised_ms for r in rows],
        seed=plan.seed,
    )
    fitted = table.calibrated(calibration)
    rows, _, drift, used = measure(LatencyPredictor(fitted), plan.check, plan.seed + 1, "check")
    report = ValidationReport(table.device.name, spec.name, batch, used, tuple(rows), drift)
    check = CalibrationCheck(
        configs=len(rows),
        seed=plan.seed + 1,
        within_10pct=report.within_10,
        bias=report.bias,
        mape=report.mape,
        worst=report.worst.error(),
        under_p95=report.under_p95,
        drift=drift,
    )
    return table.calibrated(calibration.model_copy(update={"check": check}))


def calibratable(spec: ModelSpec) -> bool:
    """Whether a calibration can build dense models of `spec`'s shape (plain ViTs, one class token)."""
    return spec.family == "vit" and spec.num_prefix_tokens == 1


def dense_vit(spec: ModelSpec) -> nn.Module:
    """A dense timm ViT of `spec`'s shape with random weights: what a calibration times (latency does
    not depend on the weights' values; a threshold config's counts come from the same model)."""
    from timm.models.vision_transformer import VisionTransformer

    block = spec.blocks[0]
    if not calibratable(spec):
        raise ValueError(f"{spec.name}: calibration builds plain ViTs with one class token")
    side = round(block.tokens_in**0.5)
    model = VisionTransformer(
        img_size=spec.image_size[0],
        patch_size=spec.image_size[0] // side,
        embed_dim=block.embed_dim,
        depth=len(spec.blocks),
        num_heads=block.heads,
        mlp_ratio=block.mlp_hidden / block.embed_dim,
        num_classes=spec.num_classes,
    )
    return model.eval()
