"""What every model stage is: a step that takes a model and its record and returns them.

A chosen config becomes a bundle through a list of stages (see `pruning.stages.ORDER`). Each stage
is one public module of this package holding one `Stage` subclass. A stage reads what it needs from
the record's `inputs` (the dense model, images and options the caller gave, never changed) and
returns the record with what it made or measured filled in; it leaves everything else as it was,
so a caller can run any prefix of the list and read the record in between.

`ModelRecord.metrics` is what the save stage writes to metrics.json: the caller's `report` turns the
record into it, because each entry point has its own metrics.json layout (`vitprune prune` a flat
one, the search's Pareto models one row of pareto.json).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pruning.config import PruneConfig
    from pruning.data import ImageSet
    from pruning.importance import Importance
    from pruning.metrics import EvalResult
    from pruning.model import PrunedViT
    from pruning.timing import LatencyStats
    from pruning.training import FineTuneConfig

__all__ = ["ModelRecord", "Stage", "StageInputs"]


def _no_metrics(record: ModelRecord) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StageInputs:
    """What the caller gives the stages: the dense model, the images and the options. Stages only read it.

    Grouped by the stage that reads them; a stage whose inputs are absent does nothing.
    """

    dense: nn.Module
    """The dense timm model the config prunes (never modified)."""
    name: str
    """Its timm model name."""

    # build and recover
    importance: Importance | None = None
    """Head/channel scores that choose survivors; else calibrated on `calibration`, else weight norms."""
    calibration: Sequence[torch.Tensor] | None = None
    """Calibration batches: survivor choice (without `importance`) and the recovery fit."""
    recover: bool = False
    """Refit the output projections of pruned blocks by least squares on `calibration`."""

    # fine-tune
    fine_tune: FineTuneConfig | None = None
    """The training recipe; None: no training."""
    train: ImageSet | None = None
    """Training images, apart from `val` (the reported figures are never on images trained on)."""
    compute: torch.device | None = None
    """Where to train (default: the CPU)."""
    checkpoint: Path | None = None
    """A directory for the training's checkpoint: a run started again resumes from it."""
    progress: bool = False
    """Show a progress bar while training."""

    # quantise
    precision: str | None = None
    """A precision of `pruning.quantisation.PRECISIONS` (its input ranges calibrated on
    `quantisation_batches`, else on `calibration`); None or "fp32": no quantisation."""
    quantisation_batches: Sequence[torch.Tensor] | None = None
    """Calibration batches that set a quantised model's input ranges, when they are not `calibration`."""
    reconstruct: bool = False
    """Fit each quantised layer's weight codes and bias to its float output on those batches
    (`pruning.quantisation.quantise`); slower, and it pays only where rounding error dominates."""
    network_scales: bool = False
    """With a power-of-two precision, choose the activation scales for the whole network
    (`pruning.quantisation.quantise`)."""
    integer_attention: bool = False
    """Quantise the attention products too, as a device that multiplies them in int8 computes
    (`DeviceBackend.fully_integer`)."""
    stream_shifts: int | None = None
    """With `integer_attention`, the residual stream on uint8 grids too, its channels' scales up to
    2^`stream_shifts` apart (`DeviceBackend.fully_integer`); None: the stream stays float."""
    float_blocks: Sequence[int] = ()
    """Blocks kept float in the quantised model (per-block precision; `pruning.quantisation.quantise`)."""

    # evaluate
    val: ImageSet | None = None
    """Validation images: accuracy, fidelity, FLOPs and the token counts the time stage prices."""
    reference: torch.Tensor | None = None
    """The dense model's logits on `val`: agreement and KL of the pruned model with it."""
    eval_batch: int = 64
    """Images per forward pass while evaluating."""

    # time
    price: Callable[[PrunedViT, torch.Tensor | None], float] | None = None
    """Predicted latency (ms) on the target device, from the model and the per-image token counts the
    evaluate stage saw (None where no block reduces tokens); the search layer passes its predictor."""
    measure: bool = False
    """Also time the model here (only meaningful when this machine is the target device)."""
    latency_batch: int = 1
    """The batch size latency is predicted and measured for."""
    threads: int | None = None
    """Torch threads for the measurement (the target device's, when it is this machine)."""

    # save
    out: Path | None = None
    """Where the bundle goes: a directory, or a path ending in .zip."""
    report: Callable[[ModelRecord], dict[str, Any]] = _no_metrics
    """metrics.json made from the record (each entry point has its layout)."""
    weights: str | Path | None = None
    """The dense weights file, whose sha256 the bundle records."""
    model_kwargs: Mapping[str, Any] | None = None
    """timm kwargs that rebuild the dense architecture (default: derived)."""
    onnx: bool = False
    """Add model.onnx to the bundle."""
    overwrite: bool = False
    """Replace a bundle already at `out`."""


@dataclass(frozen=True)
class ModelRecord:
    """One model on its way through the stages: its config, what it was made from, what was measured."""

    config: PruneConfig
    """The structure; the build stage replaces it with the built model's (survivors pinned)."""
    inputs: StageInputs
    provenance: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance the bundle's config.json keeps (study, trial, weights, ...)."""

    # filled in by the stages
    recovered: bool = False
    fine_tuned: dict[str, Any] | None = None
    """What the fine-tune stage did (`pruning.training.FineTuneResult`), if it ran."""
    quantisation: dict[str, Any] | None = None
    """What the quantise stage did (precision, scales), if it ran."""
    evaluation: EvalResult | None = None
    logits: torch.Tensor | None = None
    token_counts: torch.Tensor | None = None
    """Tokens each validation image kept at each reducing block (images x reductions), if any were dropped."""
    params: int | None = None
    flops: float | None = None
    """FLOPs per image, counted once by the evaluate stage: what metrics.json, cards and pages all show."""
    flops_images: int | None = None
    """How many validation images `flops` is the mean of, for a model whose token counts differ per
    image; None where every image costs the same."""
    predicted_ms: float | None = None
    latency: LatencyStats | None = None
    metrics: dict[str, Any] | None = None
    """What metrics.json holds (set by the save stage)."""
    bundle: Path | None = None


class Stage(ABC):
    """A step from a chosen config to a bundle; the registry (`pruning.stages`) finds it by `name`."""

    name: ClassVar[str]
    """The stage's name in a stage list, e.g. "build"; its place in the order is `pruning.stages.ORDER`."""

    @abstractmethod
    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        """The model (None before "build") and its record, after this stage."""
