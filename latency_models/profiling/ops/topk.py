"""Pricing of top-k token pruning (EViT): the `select` entries with a static gather.

A top-k keeps the same count in every image, so it gathers its survivors with static shapes; in a
batch already padded by a per-image op it compacts instead (`SelectPricing.price`).
"""

from __future__ import annotations

import random

from ._select import GATHER, SelectPricing

__all__ = ["PRICING", "TopKPricing"]


class TopKPricing(SelectPricing):
    kind = "topk"
    order = 1
    method = GATHER
    share = None  # the op a random config uses when no other is drawn

    def sample(self, rng: random.Random, n_patch: int) -> dict:
        return {"keep_ratio": round(rng.uniform(0.3, 0.95), 2)}


PRICING = TopKPricing()
