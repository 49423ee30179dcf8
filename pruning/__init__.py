"""vitprune's library layer: physically pruned timm ViTs, their evaluation and export."""

from pruning.config import (
    BlockConfig,
    ConfigError,
    MergeReduction,
    NoReduction,
    PruneConfig,
    ThresholdReduction,
    TopKReduction,
)
from pruning.families import UnsupportedModelError
from pruning.importance import Importance
from pruning.model import PrunedViT, describe, prune_model
from pruning.spec import BlockSpec, ModelSpec

__all__ = [
    "BlockConfig",
    "BlockSpec",
    "ConfigError",
    "Importance",
    "MergeReduction",
    "ModelSpec",
    "NoReduction",
    "PruneConfig",
    "PrunedViT",
    "ThresholdReduction",
    "TopKReduction",
    "UnsupportedModelError",
    "describe",
    "prune_model",
]
