"""Forward pass of one (possibly pruned) timm transformer block on a TokenState.

The block's own timm modules hold the physically sliced weights; this module only decides how
they run: fused attention where no scores are needed, explicit attention at the blocks that
reduce tokens by score (their scores come from this same attention, never from a second pass), key
masks for padded batches, size biases once tokens were merged, and the token reduction or merge
between attention and MLP (as in EViT and ToMe).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pruning.config import BlockConfig, ScoreKind
from pruning.tokens import TokenState, attention_mask

__all__ = ["attention_half", "attention_heads", "block_forward", "mlp_half", "mlp_hidden", "on_stream_grid"]


def attention_heads(
    attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, want: ScoreKind | Literal["keys"] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenated head outputs (B, N, heads*head_dim) before `attn.proj`, and what the token op needs.

    `mask` (B, 1, 1, N), from `attention_mask`: a bool key mask or an additive key bias.
    `want` picks the second result: token scores (B, N), the class token's attention over all
    tokens averaged over heads (`cls_attn`) or weighted by each head's importance for this image,
    the norm of the head's class-token output (`head_weighted`); or the keys averaged over heads
    (B, N, head_dim), the similarity metric of token merging (`keys`); or nothing.
    """
    B, N, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    if heads == 0:
        return x.new_zeros(B, N, 0), None
    qkv = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    products = getattr(attn, "products", None)  # set on a model quantised for a fully integer device
    if want in (None, "keys") and products is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        q = q * attn.scale
        if products is not None:
            q, k, v = products.operands(q, k, v)
        logits = q @ k.transpose(-2, -1)
        if products is not None:
            logits = products.logits(logits)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        probs = logits.softmax(dim=-1)
        # Token scores are read before the softmax output is rounded to its int8 grid (the softmax has
        # them finer): on the 1/256 grid many tokens tie, and ties would decide which are kept.
        out = (products.probs(probs) if products is not None else probs) @ v
    if want is None:
        extra = None
    elif want == "keys":
        extra = k.mean(dim=1)
    else:
        cls_attn = probs[:, :, 0, :]
        if want == "head_weighted":
            weight = out[:, :, 0, :].norm(dim=-1)
            weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny)
            extra = (cls_attn * weight[..., None]).sum(dim=1)
        else:
            extra = cls_attn.mean(dim=1)
    return attn.norm(out.transpose(1, 2).reshape(B, N, heads * head_dim)), extra


def mlp_hidden(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activations, the input of `mlp.fc2` (GELU's input on its grid where a model quantised
    for a fully integer device has one)."""
    return mlp.norm(mlp.act(on_grid(mlp, "gelu_in", mlp.fc1(x))))


def attention_half(
    block: nn.Module, cfg: BlockConfig, state: TokenState, score: ScoreKind, package_token: bool
) -> TokenState:
    """The residual attention branch, then this block's token reduction (if any)."""
    op = cfg.tokens
    want = score if op.needs == "scores" else op.needs
    state = on_stream_grid(block, "stream_in", state)
    heads_out, extra = attention_heads(block.attn, block.norm1(state.x), attention_mask(state), want)
    state = replace(state, x=state.x + block.ls1(block.attn.proj(heads_out)))
    return op.apply(state, extra, package_token)


def mlp_half(block: nn.Module, state: TokenState) -> TokenState:
    """The residual MLP branch."""
    state = on_stream_grid(block, "stream_mid", state)
    return replace(state, x=state.x + block.ls2(block.mlp.fc2(mlp_hidden(block.mlp, block.norm2(state.x)))))


def on_stream_grid(module: nn.Module, name: str, state: TokenState) -> TokenState:
    """The residual stream put on `module`'s grid `name` where a model quantised for a fully integer
    device has one (`pruning.quantisation._stream`), else as it is."""
    return replace(state, x=on_grid(module, name, state.x))


def on_grid(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """`x` on `module`'s grid `name` where it has one, else as it is."""
    grid = getattr(module, name, None)
    return x if grid is None else grid(x)


def block_forward(
    block: nn.Module, cfg: BlockConfig, state: TokenState, score: ScoreKind, package_token: bool
) -> TokenState:
    return mlp_half(block, attention_half(block, cfg, state, score, package_token))
