"""ModelSpec: what a dense ViT looks like to the pruner (blocks, heads, widths, tokens)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["BlockSpec", "ModelSpec"]


class BlockSpec(BaseModel):
    """One dense transformer block."""

    model_config = ConfigDict(frozen=True)

    heads: int
    head_dim: int
    embed_dim: int
    mlp_hidden: int
    stage: int = 0
    tokens_in: int
    """Patch tokens entering the block in the dense model (class/distillation tokens excluded)."""
    can_reduce_tokens: bool = True


class ModelSpec(BaseModel):
    """A dense model's structure, read from the timm module by its family adapter."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    blocks: tuple[BlockSpec, ...]
    num_prefix_tokens: int
    image_size: tuple[int, int]
    num_classes: int

    @property
    def depth(self) -> int:
        return len(self.blocks)
