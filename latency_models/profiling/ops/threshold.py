"""Pricing of threshold token pruning (AS-ViT): the `select` entries with a per-image compaction.

A threshold keeps a different count in every image: its survivors are compacted to the front of
each image and the batch padded to the longest (the predictor then prices masked attention).
"""

from __future__ import annotations

import random

from ._select import COMPACT, SelectPricing

__all__ = ["PRICING", "ThresholdPricing"]


class ThresholdPricing(SelectPricing):
    kind = "threshold"
    order = 2
    method = COMPACT
    share = 0.2

    def sample(self, rng: random.Random, n_patch: int) -> dict:
        return {"threshold": round(rng.uniform(0.3, 1.2), 2)}


PRICING = ThresholdPricing()
