"""The work behind each table entry, in plain torch: what the pruned runtime does, op for op.

The block halves, the ends and the composites are here; each token op's own work is in its
module of `ops`, which this module asks for the kernel of the op's entries and its reducing-chain step.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ops import ENTRY_KINDS, PRICINGS
from .ops._base import randn


class AttentionHalf(nn.Module):
    """x + proj(attention(LayerNorm(x))), with class-attention scores when `scored`.

    The identity modules stand for timm's optional q/k norms, output norm and layer scale, which
    the runtime calls too: at batch 1 their call overhead is a measurable part of a small block.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, head_dim**-0.5
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.q_norm, self.k_norm, self.norm, self.ls1 = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None, scored: bool, keys: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output, and the class-attention scores (`scored`) or the keys (`keys`, for a merge)."""
        B, N, _ = x.shape
        if self.heads == 0:
            return x + self.proj(x.new_zeros(B, N, 0)), None
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        mask = None if valid is None else valid[:, None, None, :]
        extra = k if keys else None
        if scored:
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            probs = logits.softmax(dim=-1)
            out = probs @ v
            extra = probs[:, :, 0, :].mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.ls1(self.proj(self.norm(out.transpose(1, 2).reshape(B, N, -1)))), extra


class MlpHalf(nn.Module):
    """x + fc2(GELU(fc1(LayerNorm(x))))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act, self.norm, self.ls2 = nn.GELU(), nn.Identity(), nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls2(self.fc2(self.norm(self.act(self.fc1(self.norm2(x))))))


class Embed(nn.Module):
    def __init__(self, dim: int, patch: int, tokens: int, prefix: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix_tokens = nn.Parameter(torch.zeros(1, prefix, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        return torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], 1) + self.pos


class Head(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


def _copies(make: Callable[[], nn.Module], device: torch.device, cold_bytes: int) -> list[nn.Module]:
    """Enough copies of a module that cycling through them keeps its weights out of cache.

    A whole model's weights stream through the caches once per forward pass (DeiT-Tiny's 22 MB
    already compete with everything else in a shared L3), so a part timed alone must not find its
    weights still cached from its previous call. Copies are clones (fast), not fresh inits.
    """
    with warnings.catch_warnings():
        # A block without heads or MLP channels has zero-element weights; torch warns on their init.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        first = make().to(device).eval()
    size = sum(p.numel() * p.element_size() for p in first.parameters())
    count = 1 if device.type != "cpu" else max(1, min(256, math.ceil(cold_bytes / max(size, 1))))
    return [first] + [copy.deepcopy(first) for _ in range(count - 1)]


def kernel(key: dict, device: torch.device, cold_bytes: int = 32 << 20) -> Callable[[], object]:
    """A zero-argument callable doing the work of table entry `key` once (a `chain` entry: all its blocks)."""
    B, D, op = key["batch"], key["embed_dim"], key["op"]
    gen = torch.Generator().manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return randn(gen, device, *size)

    cycle = _Cycle()
    if op == "attention":
        N = key["tokens"]
        mods = _copies(lambda: AttentionHalf(D, key["heads"], key["head_dim"]), device, cold_bytes)
        x = rand(B, N, D)
        valid = None
        if key["masked"]:
            valid = torch.ones(B, N, dtype=torch.bool, device=device)
            valid[1:, N - N // 4 :] = False  # a padded batch: some images are shorter than the longest
        return lambda: mods[cycle(len(mods))](x, valid, key["scored"])
    if op == "mlp":
        mods = _copies(lambda: MlpHalf(D, key["mlp_hidden"]), device, cold_bytes)
        x = rand(B, key["tokens"], D)
        return lambda: mods[cycle(len(mods))](x)
    if op in ENTRY_KINDS:  # a token op's own entry
        return ENTRY_KINDS[op].kernel(key, device, gen)
    if op == "embed":
        prefix = key["tokens"] - (key["image_size"] // key["patch_size"]) ** 2
        mods = _copies(lambda: Embed(D, key["patch_size"], key["tokens"], prefix), device, cold_bytes)
        images = rand(B, 3, key["image_size"], key["image_size"])
        return lambda: mods[cycle(len(mods))](images)
    if op == "chain":
        blocks, x = _blocks(key, key["blocks"], device), rand(B, key["tokens"], D)
        return lambda: _through(blocks, x)
    if op == "model":
        blocks = _blocks(key, key["depth"], device)
        prefix = key["tokens"] - (key["image_size"] // key["patch_size"]) ** 2
        embed = Embed(D, key["patch_size"], key["tokens"], prefix).to(device).eval()
        head = Head(D, key["num_classes"]).to(device).eval()
        images = rand(B, 3, key["image_size"], key["image_size"])
        return lambda: head(_through(blocks, embed(images)))
    if op == "reducing_chain":
        return _reducing_chain(key, device, rand)
    if op == "head":
        mods = _copies(lambda: Head(D, key["num_classes"]), device, cold_bytes)
        x = rand(B, key["tokens"], D)
        return lambda: mods[cycle(len(mods))](x)
    raise ValueError(f"unknown op {op!r}")


def _blocks(key: dict, count: int, device: torch.device) -> list[tuple[AttentionHalf, MlpHalf]]:
    """`count` distinct dense blocks of `key`'s shape: run in turn, their weights stream as a model's do."""
    return [
        (
            AttentionHalf(key["embed_dim"], key["heads"], key["head_dim"]).to(device).eval(),
            MlpHalf(key["embed_dim"], key["mlp_hidden"]).to(device).eval(),
        )
        for _ in range(count)
    ]


def _through(blocks: list[tuple[AttentionHalf, MlpHalf]], x: torch.Tensor) -> torch.Tensor:
    for attention, mlp in blocks:
        x = mlp(attention(x, None, False)[0])
    return x


def _reducing_chain(key: dict, device: torch.device, rand: Callable[..., torch.Tensor]) -> Callable[[], object]:
    """Pairs of a dense block and a block reducing its tokens by the chain's token op, each pair
    from the same input."""
    dense, reducing = _blocks(key, key["pairs"], device), _blocks(key, key["pairs"], device)
    x = rand(key["batch"], key["tokens"], key["embed_dim"])
    step = PRICINGS[key["reduction"]].chain_step(key, device)

    def pairs() -> None:
        for (attention, mlp), (reducing_attention, reducing_mlp) in zip(dense, reducing, strict=True):
            reducing_mlp(step(reducing_attention, _through([(attention, mlp)], x)))

    return pairs


class _Cycle:
    def __init__(self) -> None:
        self.i = -1

    def __call__(self, n: int) -> int:
        self.i = (self.i + 1) % n
        return self.i
