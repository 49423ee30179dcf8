"""The "build" stage: the physically pruned model of the record's config, sliced from the dense model."""

from __future__ import annotations

from dataclasses import replace

from pruning.model import PrunedViT, prune_model
from pruning.stages._base import ModelRecord, Stage

__all__ = ["Build"]


class Build(Stage):
    """Slice the dense model to the config; heads and channels it leaves open are chosen by importance.

    The record's config becomes the built one, with every survivor pinned, so later stages and the
    bundle describe exactly this model. The incoming model is ignored: building starts from the dense one.
    """

    name = "build"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        pruned = prune_model(
            inputs.dense,
            record.config,
            name=inputs.name,
            importance=inputs.importance,
            calibration=inputs.calibration,
        )
        return pruned, replace(record, config=pruned.config)
