"""Dropping tokens by score, shared by top-k and threshold: the `select` entries and their pricing.

Both ops keep the patch tokens the class token attends to most; they differ in how the survivors
are moved: a top-k with the same count in every image gathers them with static shapes (`gather`),
a threshold keeps a different count per image and compacts each image's survivors to the front,
padding the batch (`compact`). Either may fuse the dropped tokens into one package token. One
`select` entry times both ways, keyed by its `method`; `SelectPricing` prices an op by its way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ._base import BOOL, COUNT, POSITIVE, EntryKind, TokenFlow, TokenPricing, randn

__all__ = ["COMPACT", "GATHER", "SELECT", "SelectPricing", "select_counts", "select_tokens"]

GATHER, COMPACT = "gather", "compact"


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, prefix: int, keep: int, method: str, package: bool
) -> torch.Tensor:
    """Keep `keep` patch tokens of `x` by score: a static top-k gather, or mask-and-compact as for thresholds."""
    B, _, C = x.shape
    patches, patch_scores = x[:, prefix:], scores[:, prefix:]
    if method == GATHER:
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


def select_counts(key: dict) -> tuple[int, int, bool]:
    """(patch tokens in, patch tokens kept, package) of a select entry, as its kernel runs it."""
    n = key["tokens_in"] - key["prefix"]
    package = key["package"]
    keep = key["tokens_out"] - key["prefix"] - int(package)
    if keep < 1:  # no room for a kept patch next to the package token: the kernel keeps one, no package
        keep, package = 1, False
    return n, min(keep, n), package


class SelectEntries(EntryKind):
    """Dropping patch tokens by score between a block's attention and its MLP: `tokens_in` to
    `tokens_out` tokens (prefix and package token included). `method`: `gather` is a static top-k
    on an unpadded batch, `compact` keep masks compacted with padding. `package`: the dropped
    tokens are fused into one package token, weighted by their scores."""

    op = "select"
    fields: ClassVar = {
        "tokens_in": POSITIVE,
        "tokens_out": POSITIVE,
        "prefix": COUNT,
        "method": (GATHER, COMPACT),
        "package": BOOL,
    }

    def keys(self, shape: Any, batch: int, tokens: list[int]) -> list[dict]:
        keys = []
        for n_in in tokens:
            if n_in <= shape.prefix:
                continue
            for n_out in tokens:
                if shape.prefix < n_out <= n_in:
                    for method in (GATHER, COMPACT):
                        for package in (False, True):
                            keys.append(
                                {
                                    "op": self.op,
                                    "batch": batch,
                                    "embed_dim": shape.embed_dim,
                                    "tokens_in": n_in,
                                    "tokens_out": n_out,
                                    "prefix": shape.prefix,
                                    "method": method,
                                    "package": package,
                                }
                            )
        return keys

    def kernel(self, key: dict, device: torch.device, gen: torch.Generator) -> Callable[[], object]:
        B, N, D = key["batch"], key["tokens_in"], key["embed_dim"]
        x, scores = randn(gen, device, B, N, D), randn(gen, device, B, N).softmax(-1)
        package = key["package"]
        keep = key["tokens_out"] - key["prefix"] - int(package)
        if keep < 1:
            keep, package = 1, False
        return lambda: select_tokens(x, scores, key["prefix"], keep, key["method"], package)

    def arrays(self, rows: Callable, grid2: Callable, shape: Any, size: int) -> tuple[dict, Any]:
        found = {}
        for method in (GATHER, COMPACT):
            for package in (False, True):
                entries = rows(self.op, prefix=shape.prefix, method=method, package=package)
                found[(method, package)], outside = grid2(entries, "tokens_in", "tokens_out", size, size)
        return found, outside

    def mobile_cpu(self, cpu: Any, key: dict) -> list:
        FP32 = cpu.FP32
        B, D = key["batch"], key["embed_dim"]
        n, keep, package = select_counts(key)
        log_n, log_k = math.log2(max(n, 2)), math.log2(max(keep, 2))
        ops = []
        if key["method"] == GATHER:
            ops += [
                ([("scalar", B * n * log_k)], FP32 * B * (n + 2 * keep)),  # top-k: a heap of k over n scores
                ([("scalar", B * keep * log_k)], 8 * 2 * B * keep),  # indices back in token order
            ]
        else:
            ops += [
                ([("elementwise", B * n)], FP32 * B * n),  # mean score
                ([("elementwise", B * n)], FP32 * B * n + B * n),  # scores >= mean
                ([], B * keep),  # at least `keep` tokens kept
                ([("elementwise", B * n)], 2 * B * n),  # ~mask as int8
                ([("scalar", B * n * log_n)], B * n + 8 * B * n),  # stable argsort of the mask
            ]
        ops.append(cpu.copy(B * keep * D))  # gather the kept token vectors
        if package:
            ops += [
                ([("scalar", B * n)], B * n + 8 * B * keep),  # dropped mask (ones + scatter, or ~keep)
                ([("elementwise", B * n)], FP32 * 2 * B * n),  # scores * dropped
                ([("elementwise", 2.0 * B * n * D)], FP32 * (B * n * D + B * n + B * D)),  # weighted sum
                ([("elementwise", B * n)], FP32 * B * n),  # total weight
                ([("elementwise", B * D)], FP32 * 2 * B * D),  # normalise
            ]
        ops.append(cpu.copy(B * (key["prefix"] + keep + int(package)) * D))  # concatenate prefix, kept, package
        return ops

    def fpga(self, fpga: Any, key: dict) -> list:
        """Top-k by a merge-sort network (n * ceil(log2 n) comparisons per image), then a streaming pass
        that marks the kept tokens in token order; compaction in two streaming passes (mean, then compare
        and prefix-sum); the kept token vectors move over the on-chip datapath."""
        params = fpga.params
        B, D, a = key["batch"], key["embed_dim"], params.element_bytes
        n, keep, package = select_counts(key)
        lanes, latency = params.sorter_lanes, params.nonlinear_latency_cycles
        if key["method"] == GATHER:
            comparisons = B * n * max(1, math.ceil(math.log2(max(n, 2))))
            order = (math.ceil(comparisons / lanes) + latency) + (math.ceil(B * n / lanes) + latency)
        else:  # mean of the scores, then compare and prefix-sum: two streaming passes
            order = 2 * (math.ceil(B * n / lanes) + latency)
        in_bytes = B * key["tokens_in"] * D * a
        out_bytes = B * (key["prefix"] + keep + int(package)) * D * a
        ops = [
            (order, 0.0),
            (math.ceil(out_bytes / params.onchip_bytes_per_cycle), fpga.spill(in_bytes) + fpga.spill(out_bytes)),
        ]
        if package:  # every patch token streams through the MACs, weighted by its score if dropped
            ops.append(fpga.unit(B * n * D + B * D, params.vector_lanes, 1, [in_bytes]))
        return ops


SELECT = SelectEntries()


class SelectPricing(TokenPricing):
    """An op that drops tokens by class-attention score, priced by the `select` entries of its `method`."""

    entry = SELECT
    method: str

    @property
    def correction(self) -> str:
        # A top-k in a padded batch compacts like a threshold, and takes the compaction's correction.
        return self.method

    def chain_tokens_out(self, tokens_in: int, prefix: int, tokens: list[int]) -> int:
        """About half of the patch tokens: a cut a search often makes at one block."""
        return _nearest([n for n in tokens if prefix < n < tokens_in], prefix + (tokens_in - prefix) / 2)

    def chain_parts(self, key: dict, attention: Callable[..., dict]) -> list[dict]:
        cut = {"tokens_in": key["tokens"], "tokens_out": key["tokens_out"], "prefix": key["prefix"]}
        select = {"op": self.entry.op, "batch": key["batch"], "embed_dim": key["embed_dim"], **cut}
        return [attention(key["tokens"], scored=True), {**select, "method": self.method, "package": False}]

    def chain_step(self, key: dict, device: torch.device) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        prefix, keep = key["prefix"], key["tokens_out"] - key["prefix"]

        def step(attention: Any, x: torch.Tensor) -> torch.Tensor:
            x, scores = attention(x, None, True)
            return select_tokens(x, scores, prefix, keep, self.method, package=False)

        return step

    def chain_cost(self, look: Any, key: Any, heads: int) -> float:
        attention = look.attention[(True, False)][key.tokens, heads]
        return attention + look.entries(self.entry.op)[(self.method, False)][key.tokens, key.tokens_out]

    def price(self, look: Any, flow: TokenFlow, kept: int, package_token: bool) -> tuple[float, bool]:
        # After a per-image op has padded the batch, every selection compacts per image, as the runtime does.
        method = COMPACT if flow.masked else self.method
        fuse = package_token and (method == COMPACT or kept < flow.n_patch or flow.package)
        tokens = flow.prefix + kept + int(fuse)
        op = self.entry.op
        cost = look.entries(op)[(method, fuse)][flow.tokens, tokens] + look.reducing[method][flow.tokens]
        outside = bool(look.outside[op][flow.tokens, tokens])
        flow.tokens, flow.n_patch, flow.package = tokens, kept, fuse
        return cost, outside


def _nearest(values: list[int], target: float) -> int:
    return min(values, key=lambda v: (abs(v - target), v))
