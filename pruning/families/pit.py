"""PiT (timm `PoolingVisionTransformer`): token pruning inside a stage, heads/MLP per block.

A stage ends with a convolution over the token grid, which needs every grid position. Tokens
dropped inside a stage therefore keep the value they had when they were dropped, and are put back
into the grid for the pooling; the package token, a fusion with no grid position, ends with its
stage. The saving is the work of the remaining blocks of that stage.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from timm.models.pit import PoolingVisionTransformer
from torch import nn

from pruning.families._blocks import block_spec
from pruning.spec import ModelSpec
from pruning.tokens import TokenState, paint_canvas


class PiTFamily:
    name = "pit"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, PoolingVisionTransformer)

    def spec(self, model: nn.Module, name: str) -> ModelSpec:
        height, width = model.patch_embed.grid_size
        blocks = []
        for stage, transformer in enumerate(model.transformers):
            grid = height * width
            blocks += [block_spec(b, stage=stage, tokens_in=grid) for b in transformer.blocks]
            height, width = (height + 1) // 2, (width + 1) // 2
        return ModelSpec(
            name=name,
            family=self.name,
            blocks=tuple(blocks),
            num_prefix_tokens=model.num_tokens,
            image_size=tuple(model.patch_embed.img_size),
            num_classes=model.num_classes,
        )

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for stage in model.transformers for block in stage.blocks]

    def embed(self, model: nn.Module, images: torch.Tensor) -> TokenState:
        grid = model.pos_drop(model.patch_embed(images) + model.pos_embed)
        cls_tokens = model.cls_token.expand(grid.shape[0], -1, -1)
        return self._enter_stage(model, 0, grid, cls_tokens)

    def after_block(self, model: nn.Module, state: TokenState, index: int) -> TokenState:
        stage, last = self._stage_end(model, index)
        if not last or stage == len(model.transformers) - 1:
            return state
        cls_tokens = state.x[:, : state.n_prefix]
        patches = state.x[:, state.patch_slice()]
        if state.canvas is not None:
            patches = paint_canvas(state)[:, :-1]
        B, _, C = patches.shape
        height, width = state.grid
        grid = patches.transpose(1, 2).reshape(B, C, height, width)
        return replace(self._enter_stage(model, stage + 1, grid, cls_tokens), counts=state.counts)

    def head(self, model: nn.Module, state: TokenState) -> torch.Tensor:
        return model.forward_head(model.norm(state.x[:, : state.n_prefix]))

    @staticmethod
    def _enter_stage(model: nn.Module, stage: int, grid: torch.Tensor, cls_tokens: torch.Tensor) -> TokenState:
        transformer = model.transformers[stage]
        if transformer.pool is not None:
            grid, cls_tokens = transformer.pool(grid, cls_tokens)
        height, width = grid.shape[-2:]
        x = torch.cat((cls_tokens, grid.flatten(2).transpose(1, 2)), dim=1)
        return TokenState(
            x=transformer.norm(x), n_prefix=cls_tokens.shape[1], track_positions=True, grid=(height, width)
        )

    @staticmethod
    def _stage_end(model: nn.Module, index: int) -> tuple[int, bool]:
        start = 0
        for stage, transformer in enumerate(model.transformers):
            end = start + len(transformer.blocks)
            if index < end:
                return stage, index == end - 1
            start = end
        raise IndexError(index)
