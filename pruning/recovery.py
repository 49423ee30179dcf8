"""Weight recovery without training: refit the output projections of pruned blocks.

Removing heads or channels leaves `attn.proj` and `mlp.fc2` tuned for inputs that no longer
exist. For each pruned block, in order, we feed calibration activations through the pruned model
so far and solve a ridge least-squares problem: the new projection (weight and bias) maps the
surviving heads' (channels') outputs as closely as possible to what the dense block's branch
outputs on the same input. Blocks are fitted one after another on the pruned model's own
activations, so later blocks also absorb error accumulated upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pruning.block import attention_half, attention_heads, mlp_half, mlp_hidden
from pruning.tokens import attention_mask

__all__ = ["recover_weights"]

RIDGE = 1e-4
"""Tikhonov term, relative to the mean feature energy: keeps the solve stable when features correlate."""


class _NormalEquations:
    """Accumulates A^T A and A^T T over batches (float64), with a column of ones for the bias."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None

    def add(self, features: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
        if valid is not None:
            features, target = features[valid], target[valid]
        a = features.reshape(-1, features.shape[-1])
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        t = target.reshape(-1, target.shape[-1])
        # One batch's products in float32 (fast), summed over batches in float64 (accurate).
        gram, cross = (a.T @ a).double(), (a.T @ t).double()
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross

    @torch.no_grad()
    def solve_into(self, layer: nn.Linear) -> None:
        gram = self.gram
        ridge = RIDGE * gram.diagonal()[:-1].mean().clamp(min=1e-12)
        gram = gram + torch.diag(torch.cat([torch.full((gram.shape[0] - 1,), ridge), torch.zeros(1)]))
        solution = torch.linalg.solve(gram, self.cross)
        layer.weight.copy_(solution[:-1].T.to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(solution[-1].to(layer.weight.dtype))
        else:
            layer.bias.copy_(solution[-1].to(layer.bias.dtype))


@torch.no_grad()
def recover_weights(pruned: nn.Module, dense_model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Refit `attn.proj` / `mlp.fc2` of every block of `pruned` whose heads / channels were cut."""
    config = pruned.config
    dense_blocks = pruned.family.blocks(dense_model)
    states = [pruned.embed(images) for images in batches]
    for index, (block, dense, cfg) in enumerate(zip(pruned.blocks, dense_blocks, config.blocks, strict=True)):
        if cfg.heads < dense.attn.num_heads:
            fit = _NormalEquations()
            for state in states:
                normed = block.norm1(state.x)
                mask = attention_mask(state)
                features, _ = attention_heads(block.attn, normed, mask, None)
                dense_heads, _ = attention_heads(dense.attn, normed, mask, None)
                fit.add(features, dense.attn.proj(dense_heads), state.valid)
            fit.solve_into(block.attn.proj)
        states = [attention_half(block, cfg, s, config.score, config.package_token) for s in states]
        if cfg.mlp_hidden < dense.mlp.fc1.out_features:
            fit = _NormalEquations()
            for state in states:
                normed = block.norm2(state.x)
                fit.add(mlp_hidden(block.mlp, normed), dense.mlp(normed), state.valid)
            fit.solve_into(block.mlp.fc2)
        states = [pruned.family.after_block(pruned.model, mlp_half(block, s), index) for s in states]
