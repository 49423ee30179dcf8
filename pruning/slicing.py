"""Physical slicing of timm attention heads and MLP channels.

The timm modules are rebuilt with smaller `nn.Linear`s and their bookkeeping (`num_heads`,
`attn_dim`) updated, so timm's own forward keeps working on a sliced block.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["slice_heads", "slice_mlp"]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding copies of the given slices (built on `meta`: no wasted initialisation)."""
    with warnings.catch_warnings():  # a fully pruned branch (heads=0, mlp_hidden=0) has zero-size weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    return layer


def _no_norm_over_pruned_dim(norm: nn.Module) -> nn.Module:
    """A norm over the pruned dimension (timm's scale_norm options) would change its statistics."""
    if not isinstance(norm, nn.Identity):
        raise NotImplementedError(f"cannot prune through a {type(norm).__name__} over the pruned channels")
    return norm


@torch.no_grad()
def slice_heads(attn: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the heads `keep` of a timm `Attention` (q, k and v rows of qkv; columns of proj)."""
    heads, head_dim = attn.num_heads, attn.head_dim
    if list(keep) == list(range(heads)):
        return
    per_head = torch.arange(head_dim)
    cols = torch.cat([h * head_dim + per_head for h in keep]) if keep else torch.zeros(0, dtype=torch.long)
    attn_dim = heads * head_dim
    rows = torch.cat([part * attn_dim + cols for part in range(3)])
    qkv_bias = attn.qkv.bias[rows] if attn.qkv.bias is not None else None
    attn.qkv = _linear(attn.qkv.weight[rows], qkv_bias)
    attn.proj = _linear(attn.proj.weight[:, cols], attn.proj.bias)
    attn.norm = _no_norm_over_pruned_dim(attn.norm)
    attn.num_heads = len(keep)
    attn.attn_dim = len(keep) * head_dim


@torch.no_grad()
def slice_mlp(mlp: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the hidden channels `keep` of a timm `Mlp` (rows of fc1, columns of fc2)."""
    if list(keep) == list(range(mlp.fc1.out_features)):
        return
    index = torch.as_tensor(list(keep), dtype=torch.long)
    fc1_bias = mlp.fc1.bias[index] if mlp.fc1.bias is not None else None
    mlp.fc1 = _linear(mlp.fc1.weight[index], fc1_bias)
    mlp.fc2 = _linear(mlp.fc2.weight[:, index], mlp.fc2.bias)
    mlp.norm = _no_norm_over_pruned_dim(mlp.norm)
