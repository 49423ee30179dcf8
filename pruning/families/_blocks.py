"""Checks shared by the families: only standard timm blocks can be sliced."""

from __future__ import annotations

from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from pruning.spec import BlockSpec


def block_spec(block: nn.Module, *, stage: int, tokens_in: int) -> BlockSpec:
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        raise ValueError(
            f"unsupported block {type(block).__name__}/{type(getattr(block, 'attn', None)).__name__}: "
            "vitprune slices timm's standard Block with Attention and Mlp"
        )
    if getattr(block.attn, "gate", None) is not None:
        raise ValueError("gated attention is not supported")
    return BlockSpec(
        heads=block.attn.num_heads,
        head_dim=block.attn.head_dim,
        embed_dim=block.attn.qkv.in_features,
        mlp_hidden=block.mlp.fc1.out_features,
        stage=stage,
        tokens_in=tokens_in,
    )
