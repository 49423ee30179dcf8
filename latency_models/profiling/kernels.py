"""The work behind each table entry, in plain torch: what the pruned runtime does, op for op."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, prefix: int, keep: int, method: str, package: bool
) -> torch.Tensor:
    """Keep `keep` patch tokens of `x` by score: a static top-k gather, or mask-and-compact as for thresholds."""
    B, _, C = x.shape
    patches, patch_scores = x[:, prefix:], scores[:, prefix:]
    if method == "gather":
        order = patch_scores.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values
        dropped = torch.ones_like(patch_scores, dtype=torch.bool).scatter(1, order, False) if package else None
    else:
        # Per-image keep masks (here: scores above the image's mean, at least `keep` tokens wide
        # after padding), compacted to the front as `pruning.tokens` does for thresholds.
        mean = patch_scores.mean(1, keepdim=True)
        keep_mask = patch_scores >= mean
        keep_mask[:, :keep] = True
        order = (~keep_mask).to(torch.int8).argsort(dim=1, stable=True)[:, :keep]
        dropped = ~keep_mask if package else None
    kept = patches.gather(1, order[..., None].expand(B, keep, C))
    parts = [x[:, :prefix], kept]
    if dropped is not None:
        weights = patch_scores * dropped
        fused = (weights[..., None] * patches).sum(1) / weights.sum(1).clamp(min=1e-30)[:, None]
        parts.append(fused[:, None])
    return torch.cat(parts, 1)


def merge_pairs(
    x: torch.Tensor, k: torch.Tensor, size: torch.Tensor, prefix: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` pairs of the patch tokens of `x` (B, N, C) as `pruning.merging` does (ToMe bipartite
    soft matching): `k` (B, heads, N, head_dim) the attention keys, averaged over heads into the
    similarity metric; `size` (B, N) the patches each token already holds. Returns the tokens and sizes."""
    B, _, C = x.shape
    metric = k.mean(dim=1)[:, prefix:]  # the merging block's attention returns this mean with its output
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(metric.dtype).tiny)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    best, partner = similarity.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)
    merged, kept = ranked[:, :r], ranked[:, r:].sort(dim=-1).values
    patches, patch_size = x[:, prefix:], size[:, prefix:]
    x_a, x_b = patches[:, ::2], patches[:, 1::2]
    size_a, size_b = patch_size[:, ::2], patch_size[:, 1::2]
    weighted_a = x_a * size_a[..., None]
    into = partner.gather(1, merged)[:, None, :] == torch.arange(x_b.shape[1], device=x.device)[:, None]
    into = into.to(x.dtype)
    total_b = x_b * size_b[..., None] + into @ weighted_a.gather(1, merged[..., None].expand(B, r, C))
    new_size_b = size_b + (into @ size_a.gather(1, merged)[..., None])[..., 0]
    new_b = total_b / new_size_b[..., None]
    tokens = torch.cat([x[:, :prefix], x_a.gather(1, kept[..., None].expand(-1, -1, C)), new_b], 1)
    return tokens, torch.cat([size[:, :prefix], size_a.gather(1, kept), new_size_b], 1)


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
        return torch.randn(*size, generator=gen).to(device)

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
    if op == "select":
        x, scores = rand(B, key["tokens_in"], D), rand(B, key["tokens_in"]).softmax(-1)
        package = key["package"]
        keep = key["tokens_out"] - key["prefix"] - int(package)
        if keep < 1:
            keep, package = 1, False
        return lambda: select_tokens(x, scores, key["prefix"], keep, key["method"], package)
    if op == "merge":
        N, heads, head_dim = key["tokens_in"], key["heads"], key["head_dim"]
        x = rand(B, N, D)
        # The keys as the runtime holds them: a strided view into the qkv projection's output.
        k = rand(B, N, 3 * heads * head_dim).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[1]
        size = torch.randint(1, 4, (B, N), generator=gen).float().to(device)  # tokens merged before
        return lambda: merge_pairs(x, k, size, key["prefix"], N - key["tokens_out"])
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
    """Pairs of a dense block and a block reducing its tokens, each pair from the same input."""
    B, N, prefix, reduction = key["batch"], key["tokens"], key["prefix"], key["reduction"]
    dense, reducing = _blocks(key, key["pairs"], device), _blocks(key, key["pairs"], device)
    x = rand(B, N, key["embed_dim"])
    size = torch.ones(B, N, device=device)
    keep = key["tokens_out"] - prefix
    method = "gather" if reduction == "topk" else "compact"

    def pairs() -> None:
        for (attention, mlp), (reducing_attention, reducing_mlp) in zip(dense, reducing, strict=True):
            y = _through([(attention, mlp)], x)
            if reduction == "merge":
                y, keys = reducing_attention(y, None, False, keys=True)
                y = merge_pairs(y, keys, size, prefix, N - key["tokens_out"])[0]
            else:
                y, scores = reducing_attention(y, None, True)
                y = select_tokens(y, scores, prefix, keep, method, package=False)
            reducing_mlp(y)

    return pairs


class _Cycle:
    def __init__(self) -> None:
        self.i = -1

    def __call__(self, n: int) -> int:
        self.i = (self.i + 1) % n
        return self.i
