"""Model families: how each timm architecture embeds, walks its blocks and classifies.

A family adapter turns a dense timm model into a ModelSpec and runs the three parts of a pruned
forward pass: `embed` (image -> TokenState), `after_block` (stage transitions, e.g. PiT pooling)
and `head` (TokenState -> logits). Block internals are shared (`pruning.block`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from pruning.families.pit import PiTFamily
from pruning.families.vit import ViTFamily
from pruning.spec import ModelSpec
from pruning.tokens import TokenState

__all__ = ["Family", "UnsupportedModelError", "family_of"]


class UnsupportedModelError(ValueError):
    """The timm model is not a ViT family that vitprune can prune."""


class Family(Protocol):
    name: str

    def matches(self, model: nn.Module) -> bool: ...

    def spec(self, model: nn.Module, name: str) -> ModelSpec: ...

    def blocks(self, model: nn.Module) -> list[nn.Module]: ...

    def embed(self, model: nn.Module, images: torch.Tensor) -> TokenState: ...

    def after_block(self, model: nn.Module, state: TokenState, index: int) -> TokenState: ...

    def head(self, model: nn.Module, state: TokenState) -> torch.Tensor: ...


FAMILIES: tuple[Family, ...] = (ViTFamily(), PiTFamily())


def family_of(model: nn.Module) -> Family:
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise UnsupportedModelError(
        f"{type(model).__name__} is not supported: vitprune prunes timm VisionTransformer models"
        " (ViT, DeiT, DeiT distilled) and PoolingVisionTransformer (PiT)"
    )
