"""The "fine-tune" stage: recovery training by distillation from the dense model (see `pruning.training`)."""

from __future__ import annotations

from dataclasses import replace

from pruning.model import PrunedViT
from pruning.stages._base import ModelRecord, Stage
from pruning.training import fine_tune

__all__ = ["FineTune"]


class FineTune(Stage):
    """Train the pruned model towards the dense one on the inputs' training images.

    Runs only when the inputs ask for it (`fine_tune`); trains on their `compute` device and hands the
    model on, on the CPU, to the stages after it. The result (steps, held-out KL before and after,
    time, recipe) goes on the record and from there to metrics.json and the model card.
    """

    name = "fine-tune"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        if inputs.fine_tune is None:
            return model, record
        if inputs.train is None or len(inputs.train) == 0:
            raise ValueError("fine-tuning needs training images (StageInputs.train), apart from the validation ones")
        result = fine_tune(
            model,
            inputs.dense,
            inputs.train,
            inputs.fine_tune,
            device=inputs.compute,
            checkpoint=inputs.checkpoint,
            progress=inputs.progress,
        )
        inputs.dense.cpu()
        return model.cpu(), replace(record, fine_tuned=result.to_dict())
