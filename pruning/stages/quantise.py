"""The "quantise" stage: post-training W8A8 quantisation (see `pruning.quantisation`)."""

from __future__ import annotations

from dataclasses import replace

from pruning.model import PrunedViT
from pruning.quantisation import quantise
from pruning.quantisation.precisions import FLOAT
from pruning.stages._base import ModelRecord, Stage

__all__ = ["Quantise"]


class Quantise(Stage):
    """Quantise the model to the inputs' `precision`, its input ranges calibrated on their calibration batches.

    Runs only when the inputs ask for a precision other than fp32. After it, the model computes as the
    int8 device does, so the evaluate stage scores what the device will run.
    """

    name = "quantise"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        if inputs.precision in (None, FLOAT):
            return model, record
        chosen = inputs.quantisation_batches if inputs.quantisation_batches is not None else inputs.calibration
        batches = list(chosen) if chosen is not None else []
        quantised = quantise(
            model,
            batches,
            inputs.precision,
            reconstruct=inputs.reconstruct,
            network_scales=inputs.network_scales,
            attention=inputs.integer_attention,
            stream=inputs.stream_shifts,
            float_blocks=inputs.float_blocks,
        )
        return quantised, replace(record, quantisation=quantised.quantisation)
