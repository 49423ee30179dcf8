"""Forward pass of one (possibly pruned) timm transformer block on a TokenState.

The block's own timm modules hold the physically sliced weights; this module only decides how
they run: fused attention where no scores are needed, explicit attention at the blocks that
reduce tokens (their scores come from this same attention, never from a second pass), key masks
for padded batches, and the token reduction between attention and MLP (as in EViT).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from pruning.config import BlockConfig, ScoreKind
from pruning.tokens import TokenState, reduce_tokens

__all__ = ["attention_half", "attention_heads", "block_forward", "mlp_half", "mlp_hidden"]


def attention_heads(
    attn: nn.Module, x: torch.Tensor, valid: torch.Tensor | None, score: ScoreKind | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenated head outputs (B, N, heads*head_dim) before `attn.proj`, and token scores (B, N).

    Scores are only computed when `score` is given: the class token's attention over all tokens,
    averaged over heads (`cls_attn`) or weighted by each head's importance for this image, the
    norm of the head's class-token output (`head_weighted`).
    """
    B, N, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    if heads == 0:
        return x.new_zeros(B, N, 0), None
    qkv = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    key_mask = None if valid is None else valid[:, None, None, :]
    if score is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        scores = None
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask, float("-inf"))
        probs = logits.softmax(dim=-1)
        out = probs @ v
        cls_attn = probs[:, :, 0, :]
        if score == "head_weighted":
            weight = out[:, :, 0, :].norm(dim=-1)
            weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny)
            scores = (cls_attn * weight[..., None]).sum(dim=1)
        else:
            scores = cls_attn.mean(dim=1)
    return attn.norm(out.transpose(1, 2).reshape(B, N, heads * head_dim)), scores


def mlp_hidden(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activations, the input of `mlp.fc2`."""
    return mlp.norm(mlp.act(mlp.fc1(x)))


def attention_half(
    block: nn.Module, cfg: BlockConfig, state: TokenState, score: ScoreKind, package_token: bool
) -> TokenState:
    """The residual attention branch, then this block's token reduction (if any)."""
    reduces = cfg.reduces_tokens
    heads_out, scores = attention_heads(block.attn, block.norm1(state.x), state.valid, score if reduces else None)
    state = replace(state, x=state.x + block.ls1(block.attn.proj(heads_out)))
    return reduce_tokens(state, scores, cfg.tokens, package_token) if reduces else state


def mlp_half(block: nn.Module, state: TokenState) -> TokenState:
    """The residual MLP branch."""
    return replace(state, x=state.x + block.ls2(block.mlp.fc2(mlp_hidden(block.mlp, block.norm2(state.x)))))


def block_forward(
    block: nn.Module, cfg: BlockConfig, state: TokenState, score: ScoreKind, package_token: bool
) -> TokenState:
    return mlp_half(block, attention_half(block, cfg, state, score, package_token))
