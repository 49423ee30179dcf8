"""The "evaluate" stage: accuracy and fidelity on the validation images, parameters and FLOPs.

FLOPs are counted here, once, and every figure shown elsewhere (metrics.json, the model card, the
dashboard) is this one. A model with the same token counts in every image is counted on one image
(no validation images needed); one whose counts differ per image (`PruneConfig.per_image`) gets the
mean over up to `FLOP_IMAGES` validation images spread over the set, each run alone so that no padding
is counted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from pruning.flops import count_flops, count_params
from pruning.metrics import classification_metrics
from pruning.model import PrunedViT
from pruning.stages._base import ModelRecord, Stage

if TYPE_CHECKING:
    from pruning.data import ImageSet

__all__ = ["FLOP_IMAGES", "Evaluate"]

FLOP_IMAGES = 32
"""Validation images whose FLOPs are averaged for a model whose token counts differ per image. A
counted forward pass costs several plain ones; on DeiT-Tiny with thresholds at blocks 3, 6 and 9 the
mean of 32 spread images was within 1% of the mean of 160."""


class Evaluate(Stage):
    """Count the parameters and FLOPs; with validation images, also score the model on them.

    The logits (a reference for other models) and the tokens every image kept (what the time stage
    prices, for ops whose counts differ per image) are kept on the record.
    """

    name = "evaluate"

    def run(self, model: PrunedViT | None, record: ModelRecord) -> tuple[PrunedViT, ModelRecord]:
        inputs = record.inputs
        record = replace(record, params=count_params(model))
        if not model.config.per_image:
            record = replace(record, flops=_fixed_flops(model))
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
        record = replace(
            record,
            evaluation=classification_metrics(all_logits, inputs.val.labels, inputs.reference),
            logits=all_logits,
            token_counts=torch.cat(counts) if counts else None,
        )
        if model.config.per_image:
            sample = _spread(inputs.val, FLOP_IMAGES)
            images = torch.cat([batch for batch, _ in sample.batches(len(sample))])
            record = replace(record, flops=count_flops(model, images.to(_device(model))), flops_images=len(sample))
        return model, record


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _fixed_flops(model: PrunedViT) -> float:
    """FLOPs of one image, for a model whose cost does not depend on the image's content."""
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    return count_flops(model, torch.zeros(1, channels, *model.spec.image_size, device=_device(model)))


def _spread(images: ImageSet, limit: int) -> ImageSet:
    """At most `limit` images, evenly spread over the (class-ordered) set."""
    if len(images) <= limit:
        return images
    return images.subset(torch.linspace(0, len(images) - 1, limit).round().long().unique())
