"""The "time" stage: latency on the target device, predicted from its table and, on this machine, measured."""

from __future__ import annotations

from dataclasses import replace

from pruning.model import PrunedViT
from pruning.stages._base import ModelRecord, Stage
from pruning.timing import measure_latency

__all__ = ["Time"]

ROUNDS = 5
IMAGES_PER_ROUND = 8
"""Each timed round runs at least this many images (one forward at batch 8 and above)."""


class Time(Stage):
    """Predicted latency from the inputs' `price`; measured latency when the inputs ask to `measure`.

    Models whose token counts differ per image are timed on real validation images (their cost
    depends on them), others on random inputs.
    """

    name = "time"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        if inputs.price is not None:
            record = replace(record, predicted_ms=inputs.price(model, record.token_counts))
        if inputs.measure:
            batch = inputs.latency_batch
            images = None
            if model.config.per_image and inputs.val is not None:
                images = next(inputs.val.batches(batch))[0]
            stats = measure_latency(
                model,
                batch_size=batch,
                input_size=(3, *model.spec.image_size),  # random inputs at the model's own size
                inputs=images,
                threads=inputs.threads,
                rounds=ROUNDS,
                iters=max(1, IMAGES_PER_ROUND // batch),
            )
            record = replace(record, latency=stats)
        return model, record
