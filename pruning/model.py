"""PrunedViT: a physically pruned timm ViT, and `prune_model`, which builds one.

The timm model inside keeps timm's module names and classes, with sliced weights, so its
state_dict is a smaller timm state_dict. The forward pass is split into `embed`, `run_blocks`
and `head` so a caller can cache the activations of a prefix of blocks and resume from them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from pruning.block import block_forward, on_stream_grid
from pruning.config import PruneConfig
from pruning.families import Family, family_of
from pruning.importance import (
    Importance,
    calibrated_importance,
    choose_survivors,
    needs_importance,
    weight_importance,
)
from pruning.recovery import recover_weights
from pruning.slicing import slice_heads, slice_mlp
from pruning.spec import ModelSpec
from pruning.tokens import TokenState

__all__ = ["PrunedViT", "describe", "prune_model"]


class PrunedViT(nn.Module):
    """A timm ViT with some tokens, heads and MLP channels physically removed.

    Args:
        model: the timm model whose blocks are already sliced to `config`.
        config: the PruneConfig, with survivor indices filled in.
        spec: the dense model's structure.
        family: the family adapter that knows how `model` embeds, pools stages and classifies.
    """

    def __init__(self, model: nn.Module, config: PruneConfig, spec: ModelSpec, family: Family) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.spec = spec
        self.family = family
        self.compact_tokens = True
        self.last_token_counts: list[torch.Tensor] = []
        self.quantisation: dict | None = None
        """What `pruning.quantisation.quantise` did to the model (precision, scales); None: float."""

    @property
    def blocks(self) -> list[nn.Module]:
        return self.family.blocks(self.model)

    def embed(self, images: torch.Tensor) -> TokenState:
        state = self.family.embed(self.model, images)
        state.compact = self.compact_tokens
        return state

    def run_blocks(self, state: TokenState, start: int = 0, stop: int | None = None) -> TokenState:
        blocks = self.blocks
        stop = len(blocks) if stop is None else stop
        for index in range(start, stop):
            state = block_forward(
                blocks[index], self.config.blocks[index], state, self.config.score, self.config.package_token
            )
            state = self.family.after_block(self.model, state, index)
        return state

    def head(self, state: TokenState) -> torch.Tensor:
        return self.family.head(self.model, on_stream_grid(self.model, "stream_out", state))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        state = self.run_blocks(self.embed(images))
        self.last_token_counts = state.counts
        return self.head(state)


def describe(model: nn.Module, name: str | None = None) -> ModelSpec:
    """The ModelSpec of a dense timm model."""
    name = name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    return family_of(model).spec(model, name)


def prune_model(
    model: nn.Module,
    config: PruneConfig,
    *,
    name: str | None = None,
    importance: Importance | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
    recover: bool = False,
) -> PrunedViT:
    """Build the pruned version of a dense timm `model` described by `config`.

    The dense model is not modified. Heads and channels that `config` does not pin are chosen by
    `importance`, else by calibrated importance on `calibration` batches, else by weight norms.
    With `recover=True` the output projections of pruned blocks are refitted by least squares on
    `calibration` so that each block's output matches the dense block's (see `pruning.recovery`).
    """
    family = family_of(model)
    spec = family.spec(model, name or describe(model).name)
    config.check(spec)
    batches = list(calibration) if calibration is not None else None
    if recover and not batches:
        raise ValueError("weight recovery needs calibration images")
    if importance is None and needs_importance(config, spec):
        dense_blocks = family.blocks(model)
        importance = calibrated_importance(model, dense_blocks, batches) if batches else weight_importance(dense_blocks)
    config = choose_survivors(config, spec, importance)

    sliced = copy.deepcopy(model).eval()
    for block, cfg in zip(family.blocks(sliced), config.blocks, strict=True):
        slice_heads(block.attn, cfg.heads_kept)
        slice_mlp(block.mlp, cfg.channels_kept)
    pruned = PrunedViT(sliced, config, spec, family).eval()
    if recover:
        recover_weights(pruned, model, batches)
    return pruned
