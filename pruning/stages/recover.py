"""The "recover" stage: weight recovery without training (see `pruning.recovery`)."""

from __future__ import annotations

from dataclasses import replace

from pruning.model import PrunedViT
from pruning.recovery import recover_weights
from pruning.stages._base import ModelRecord, Stage

__all__ = ["Recover"]


class Recover(Stage):
    """Refit the output projections of pruned blocks so each block's output matches the dense block's.

    Runs only when the inputs ask for it (`recover`), on their calibration batches.
    """

    name = "recover"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        if not inputs.recover:
            return model, record
        batches = list(inputs.calibration) if inputs.calibration is not None else []
        if not batches:
            raise ValueError("weight recovery needs calibration images")
        recover_weights(model, inputs.dense, batches)
        return model, replace(record, recovered=True)
