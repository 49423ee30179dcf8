"""The "save" stage: the model and its record as a bundle (see `pruning.bundle`)."""

from __future__ import annotations

from dataclasses import replace

from pruning.bundle import save_bundle
from pruning.model import PrunedViT
from pruning.stages._base import ModelRecord, Stage

__all__ = ["Save"]


class Save(Stage):
    """Write the bundle at the inputs' `out`, with metrics.json made by their `report` from the record."""

    name = "save"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        if inputs.out is None:
            raise ValueError("the save stage needs an output path (StageInputs.out)")
        metrics = inputs.report(record)
        path = save_bundle(
            model,
            inputs.out,
            metrics=metrics,
            provenance=record.provenance,
            weights=inputs.weights,
            model_kwargs=inputs.model_kwargs,
            onnx=inputs.onnx,
            overwrite=inputs.overwrite,
        )
        return model, replace(record, metrics=metrics, bundle=path)
