"""Which heads and MLP channels survive: importance scores per block.

With calibration images, a unit's importance is the mean norm of what it writes into the
residual stream: for head h, ||W_proj[:, h] o_h|| over tokens and images; for MLP channel c,
mean |a_c| * ||W_fc2[:, c]||. This measures each unit's actual contribution on the user's data
with forward passes only. Without data, the same quantity is bounded by weights alone:
||W_v,h|| * ||W_proj[:, h]|| for heads and ||W_fc1[c]|| * ||W_fc2[:, c]|| for channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pruning.config import BlockConfig, PruneConfig
from pruning.spec import ModelSpec

__all__ = [
    "Importance",
    "activation_importance",
    "choose_survivors",
    "needs_importance",
    "weight_importance",
]


@dataclass
class Importance:
    heads: list[torch.Tensor]
    channels: list[torch.Tensor]
    criterion: str

    def save(self, path: str | Path) -> None:
        tensors = {f"heads.{i}": t.contiguous() for i, t in enumerate(self.heads)}
        tensors |= {f"channels.{i}": t.contiguous() for i, t in enumerate(self.channels)}
        save_file(tensors, str(path), metadata={"criterion": self.criterion})

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        tensors = load_file(str(path))
        depth = sum(1 for k in tensors if k.startswith("heads."))
        with safe_open(str(path), "pt") as f:
            criterion = (f.metadata() or {}).get("criterion", "unknown")
        return cls(
            heads=[tensors[f"heads.{i}"] for i in range(depth)],
            channels=[tensors[f"channels.{i}"] for i in range(depth)],
            criterion=criterion,
        )


def _head_columns(attn: nn.Module) -> torch.Tensor:
    """proj.weight as (heads, out, head_dim)."""
    out = attn.proj.weight.shape[0]
    return attn.proj.weight.reshape(out, attn.num_heads, attn.head_dim).permute(1, 0, 2)


@torch.no_grad()
def weight_importance(blocks: list[nn.Module]) -> Importance:
    heads, channels = [], []
    for block in blocks:
        attn, mlp = block.attn, block.mlp
        dim = attn.num_heads * attn.head_dim
        values = attn.qkv.weight[2 * dim : 3 * dim].reshape(attn.num_heads, -1)
        heads.append(values.norm(dim=1) * _head_columns(attn).flatten(1).norm(dim=1))
        channels.append(mlp.fc1.weight.norm(dim=1) * mlp.fc2.weight.norm(dim=0))
    return Importance(heads, channels, criterion="weight-norm")


@torch.no_grad()
def activation_importance(model: nn.Module, blocks: list[nn.Module], batches: Iterable[torch.Tensor]) -> Importance:
    """Mean contribution norms of every head and channel of the dense `model` on `batches` of images."""
    head_sum = [torch.zeros(b.attn.num_heads, dtype=torch.float64) for b in blocks]
    chan_sum = [torch.zeros(b.mlp.fc1.out_features, dtype=torch.float64) for b in blocks]
    counts = [0] * len(blocks)

    def head_hook(i: int, attn: nn.Module):
        def hook(_module, inputs):
            o = inputs[0].reshape(*inputs[0].shape[:-1], attn.num_heads, attn.head_dim)
            contrib = torch.einsum("bnhd,hcd->bnhc", o, _head_columns(attn)).norm(dim=-1)
            head_sum[i] += contrib.flatten(0, 1).sum(0).double()
            counts[i] += contrib.shape[0] * contrib.shape[1]

        return hook

    def chan_hook(i: int, mlp: nn.Module):
        def hook(_module, inputs):
            chan_sum[i] += inputs[0].abs().flatten(0, -2).sum(0).double() * mlp.fc2.weight.norm(dim=0).double()

        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.attn.proj.register_forward_pre_hook(head_hook(i, block.attn)))
        handles.append(block.mlp.fc2.register_forward_pre_hook(chan_hook(i, block.mlp)))
    try:
        model.eval()
        for images in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    if not any(counts):
        raise ValueError("no calibration images: importance needs at least one batch")
    heads = [(s / c).float() for s, c in zip(head_sum, counts, strict=True)]
    channels = [(s / c).float() for s, c in zip(chan_sum, counts, strict=True)]
    return Importance(heads, channels, criterion="activation-contribution")


def choose_survivors(config: PruneConfig, spec: ModelSpec, importance: Importance | None) -> PruneConfig:
    """Fill in `heads_kept` / `channels_kept` where the config leaves them to the criterion.

    A block that keeps every head (channel) needs no criterion; one that drops some needs `importance`.
    """
    blocks: list[BlockConfig] = []
    for i, (block, dense) in enumerate(zip(config.blocks, spec.blocks, strict=True)):
        update = {}
        if block.heads_kept is None:
            update["heads_kept"] = _survivors(importance, "heads", i, block.heads, dense.heads)
        if block.channels_kept is None:
            update["channels_kept"] = _survivors(importance, "channels", i, block.mlp_hidden, dense.mlp_hidden)
        blocks.append(block.model_copy(update=update))
    return config.model_copy(update={"blocks": tuple(blocks)})


def needs_importance(config: PruneConfig, spec: ModelSpec) -> bool:
    return any(
        (b.heads_kept is None and b.heads < d.heads) or (b.channels_kept is None and b.mlp_hidden < d.mlp_hidden)
        for b, d in zip(config.blocks, spec.blocks, strict=True)
    )


def _survivors(importance: Importance | None, kind: str, block: int, keep: int, total: int) -> tuple[int, ...]:
    if keep == total:
        return tuple(range(total))
    if importance is None:
        raise ValueError(f"block {block}: choosing {keep} of {total} {kind} needs importance scores")
    # Stable ordering: ties go to the lower index, so a config rebuilds the same model every time.
    order = torch.argsort(-getattr(importance, kind)[block], stable=True)[:keep]
    return tuple(sorted(order.tolist()))
