"""Fixtures of the quantisation tests on the small model: 24 random images and a pruned model (top-k 0.7
at blocks 1 and 2, two thirds of the heads); a module that needs others defines its own."""

from __future__ import annotations

import pytest

from pruning.config import PruneConfig
from pruning.data import ImageSet
from pruning.model import describe, prune_model
from tests.search.tiny import MODEL, random_images, tiny_model


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return random_images(24)


@pytest.fixture(scope="module")
def pruned():
    dense = tiny_model()
    config = PruneConfig.uniform(describe(dense, MODEL), keep_ratio=0.7, at=(1, 2), head_ratio=0.67)
    return prune_model(dense, config)
