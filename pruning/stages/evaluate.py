"""The "evaluate" stage: accuracy and fidelity on the validation images, parameters and FLOPs."""

from __future__ import annotations

from dataclasses import replace

import torch

from pruning.flops import count_flops, count_params
from pruning.metrics import classification_metrics
from pruning.model import PrunedViT
from pruning.stages._base import ModelRecord, Stage

__all__ = ["Evaluate"]


class Evaluate(Stage):
    """Count the parameters; with validation images, also score the model on them and count its FLOPs.

    The logits (a reference for other models) and the tokens every image kept (what the time stage
    prices, for ops whose counts differ per image) are kept on the record.
    """

    name = "evaluate"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        record = replace(record, params=count_params(model))
        if inputs.val is None:
            return model, record
        logits, counts = [], []
        model.eval()
        with torch.inference_mode():
            for images, _ in inputs.val.batches(inputs.eval_batch):
                logits.append(model(images).float())
                if model.last_token_counts:
                    counts.append(torch.stack(model.last_token_counts, dim=1))
        all_logits = torch.cat(logits)
        return model, replace(
            record,
            evaluation=classification_metrics(all_logits, inputs.val.labels, inputs.reference),
            logits=all_logits,
            token_counts=torch.cat(counts) if counts else None,
            flops=count_flops(model, next(inputs.val.batches(1))[0]),
        )
