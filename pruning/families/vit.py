"""ViT and DeiT (timm `VisionTransformer`, `VisionTransformerDistilled`)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pruning.families._blocks import block_spec
from pruning.spec import ModelSpec
from pruning.tokens import TokenState


class ViTFamily:
    name = "vit"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def spec(self, model: nn.Module, name: str) -> ModelSpec:
        if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
            raise ValueError(f"{name}: pooling '{model.global_pool}' is not supported (token or avg)")
        n_patch = model.patch_embed.num_patches
        return ModelSpec(
            name=name,
            family=self.name,
            blocks=tuple(block_spec(b, stage=0, tokens_in=n_patch) for b in model.blocks),
            num_prefix_tokens=model.num_prefix_tokens,
            image_size=tuple(model.patch_embed.img_size),
            num_classes=model.num_classes,
        )

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def embed(self, model: nn.Module, images: torch.Tensor) -> TokenState:
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.norm_pre(model.patch_drop(x))
        return TokenState(x=x, n_prefix=model.num_prefix_tokens)

    def after_block(self, model: nn.Module, state: TokenState, index: int) -> TokenState:
        return state

    def head(self, model: nn.Module, state: TokenState) -> torch.Tensor:
        x = model.norm(state.x)
        if model.global_pool == "avg" and (state.valid is not None or state.size is not None):
            # Average only real patch tokens (and the package token), never padding; a merged
            # token weighs as many patches as it holds.
            weight = x.new_ones(x.shape[:2]) if state.valid is None else state.valid.to(x.dtype)
            if state.size is not None:
                weight = weight * state.size
            weight = weight[:, state.n_prefix :, None]
            pooled = (x[:, state.n_prefix :] * weight).sum(1) / weight.sum(1)
            return model.head(model.head_drop(model.fc_norm(pooled)))
        return model.forward_head(x)
