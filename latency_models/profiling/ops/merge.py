"""Pricing of token merging (ToMe): the `merge` entries, their kernel, grid, predictor step and analytic costs.

A merging block runs fused attention that hands over its keys; the patch tokens alternate into
sets A and B, each A token finds its most similar B token (cosine similarity of the keys averaged
over heads), and the `r` most similar pairs are averaged, weighted by the patches each token holds.
The matching works on keys, so its cost depends on the head count and head dim, which a `select`
entry does not record: merging has entries of its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ._base import COUNT, POSITIVE, EntryKind, TokenFlow, TokenPricing, randn

__all__ = ["MERGE", "PRICING", "MergeEntries", "MergePricing", "merge_counts", "merge_pairs"]


def merge_pairs(
    x: torch.Tensor, k: torch.Tensor, size: torch.Tensor, prefix: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` pairs of the patch tokens of `x` (B, N, C) as `pruning.tokens.merge` does (ToMe bipartite
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


def merge_counts(key: dict) -> tuple[int, int, int, int]:
    """(patch tokens in, tokens of set A, tokens of set B, pairs merged) of a merge entry: the patch
    tokens alternate into A (even positions) and B (odd), and r of the A tokens fold into B."""
    n = key["tokens_in"] - key["prefix"]
    merged = max(0, min(key["tokens_in"] - key["tokens_out"], n // 2))
    return n, (n + 1) // 2, n // 2, merged


def _merged(entry: Any) -> int:
    return entry.tokens_in - entry.tokens_out


class MergeEntries(EntryKind):
    """Token merging (ToMe) between a block's attention and MLP: the keys averaged over `heads`, the
    bipartite matching of the patch tokens on them (cosine similarity, `head_dim` wide), and the
    size-weighted merge of `tokens_in - tokens_out` pairs. Token counts include the `prefix` tokens.

    Its own entry rather than a `select` method: the matching works on keys, so its cost depends on
    the head dim and head count, which a select entry does not record. Tables made before merging
    existed have no such entries; they still price every config without merging.
    """

    op = "merge"
    fields: ClassVar = {
        "tokens_in": POSITIVE,
        "tokens_out": POSITIVE,
        "prefix": COUNT,
        "heads": POSITIVE,
        "head_dim": POSITIVE,
    }
    absent = (
        "Tables made before token merging was priced lack these entries; a cached host-cpu or cuda table "
        "gains them the next time it is used"
    )

    def keys(self, shape: Any, batch: int, tokens: list[int]) -> list[dict]:
        """Tokens in on `tokens`, and merge counts r = tokens in - tokens out on the same grid plus the
        largest r (half the patch tokens). The cost is roughly the matching's, which grows with the
        tokens in, plus a part proportional to r (the pairs merged): with the same r values in every
        row, the predictor interpolates along both axes between like points."""
        keys = []
        for n_in in tokens:
            most = (n_in - shape.prefix) // 2  # at most half of the patch tokens merge at one block
            if most < 1:
                continue
            for r in sorted({r for r in tokens if r < most} | {most}):
                keys.append(
                    {
                        "op": self.op,
                        "batch": batch,
                        "embed_dim": shape.embed_dim,
                        "tokens_in": n_in,
                        "tokens_out": n_in - r,
                        "prefix": shape.prefix,
                        "heads": shape.heads,
                        "head_dim": shape.head_dim,
                    }
                )
        return keys

    def kernel(self, key: dict, device: torch.device, gen: torch.Generator) -> Callable[[], object]:
        B, N, D, heads, head_dim = key["batch"], key["tokens_in"], key["embed_dim"], key["heads"], key["head_dim"]
        x = randn(gen, device, B, N, D)
        # The keys as the runtime holds them: a strided view into the qkv projection's output.
        k = randn(gen, device, B, N, 3 * heads * head_dim).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[1]
        size = torch.randint(1, 4, (B, N), generator=gen).float().to(device)  # tokens merged before
        return lambda: merge_pairs(x, k, size, key["prefix"], N - key["tokens_out"])

    def arrays(self, rows: Callable, grid2: Callable, shape: Any, size: int) -> tuple[dict, Any]:
        entries = rows(self.op, prefix=shape.prefix, heads=shape.heads, head_dim=shape.head_dim)
        # Indexed by the pairs merged, r = tokens_in - tokens_out: the grid has the same r in every row.
        pairs, outside = grid2(entries, "tokens_in", _merged, size, size)
        return {"pairs": pairs}, outside

    def mobile_cpu(self, cpu: Any, key: dict) -> list:
        """`pruning.tokens.merge.merge_tokens` op for op, after the attention that hands it the keys.

        The cost grows with the tokens in. With more pairs merged the matching is the same, the merge
        matmul grows and fewer tokens are written: compute-bound it costs more, memory-starved a little less.
        """
        FP32, copy = cpu.FP32, cpu.copy
        B, D, N, h, hd = key["batch"], key["embed_dim"], key["tokens_in"], key["heads"], key["head_dim"]
        n, a, b, r = merge_counts(key)
        keep, out = a - r, N - r  # A tokens left unmerged; tokens after the merge
        return [
            ([("elementwise", B * N * h * hd)], FP32 * (B * N * h * hd + B * N * hd)),  # keys averaged over heads
            ([("elementwise", 2.0 * B * n * hd)], FP32 * (B * n * hd + B * n)),  # their norms
            ([("elementwise", B * n)], FP32 * 2 * B * n),  # clamped away from zero
            ([("elementwise", B * n * hd)], FP32 * (2 * B * n * hd + B * n)),  # unit keys
            ([("attention", 2.0 * B * a * b * hd)], FP32 * (B * n * hd + B * a * b)),  # similarity |A| x |B| x d
            ([("elementwise", B * a * b)], FP32 * (B * a * b + B * a) + 8 * B * a),  # best partner of each A token
            ([("scalar", B * a * math.log2(max(a, 2)))], FP32 * B * a + 8 * 2 * B * a),  # argsort of the best
            ([("scalar", B * keep * math.log2(max(keep, 2)))], 8 * 2 * B * keep),  # unmerged A back in token order
            ([("elementwise", B * a * D)], FP32 * (2 * B * a * D + B * a)),  # A tokens weighted by their sizes
            ([("elementwise", B * b * r)], 8 * B * r + FP32 * B * b * r),  # one-hot |B| x r: merged A -> partner
            copy(B * r * D),  # gather the merged A tokens
            ([("elementwise", B * b * D)], FP32 * (2 * B * b * D + B * b)),  # B tokens weighted by their sizes
            ([("attention", 2.0 * B * b * r * D)], FP32 * (B * b * r + B * r * D + B * b * D)),  # merge matmul
            cpu.add(B * b * D),
            ([("attention", 2.0 * B * b * r)], FP32 * (B * b * r + 2 * B * r + 2 * B * b)),  # the sizes, alike
            ([("elementwise", B * b * D)], FP32 * (2 * B * b * D + B * b)),  # divided by the new sizes
            copy(B * keep * D),  # gather the unmerged A tokens
            copy(B * out * D),  # concatenate prefix, unmerged A and B tokens
            copy(B * out),  # and their sizes
        ]

    def fpga(self, fpga: Any, key: dict) -> list:
        """ToMe on the accelerator's units, after the attention that gives the keys: the keys averaged
        over heads on the vector unit and normalised on the LayerNorm unit, the |A| x |B| cosine
        similarities a GEMM on the array, the best partner of each A token a pass of the vector unit,
        the ranking a sort of |A| scores on the sorter, the size-weighted merge the runtime's one-hot
        (|B| x r) @ (r x C) product on the array; the surviving tokens move over the on-chip datapath."""
        params, unit, spill = fpga.params, fpga.unit, fpga.spill
        B, D, N, e = key["batch"], key["embed_dim"], key["tokens_in"], params.element_bytes
        h, hd = key["heads"], key["head_dim"]
        n, a, b, r = merge_counts(key)
        lanes, latency = params.sorter_lanes, params.nonlinear_latency_cycles
        keys, metric = B * N * h * hd * e, B * n * hd * e
        similarity = B * a * b * fpga.ACCUMULATOR
        ranking = math.ceil(B * a * max(1, math.ceil(math.log2(max(a, 2)))) / lanes) + latency
        ranking += math.ceil(B * a / lanes) + latency  # a streaming pass marks the merged A tokens
        tokens_in, tokens_out = B * N * D * e, B * (N - r) * D * e
        merged = B * r * D * e
        return [
            unit(B * N * h * hd, params.vector_lanes, 1, [keys, B * N * hd * e]),  # keys averaged over heads
            unit(B * n * hd, params.layernorm_lanes, 2, [metric, metric]),  # norms, then unit keys
            (fpga.matmul_cycles(B, a, hd, b), spill(similarity)),  # similarity |A| x |B| x d
            unit(B * a * b, params.vector_lanes, 1, [similarity]),  # best partner of each A token
            (ranking, 0.0),
            unit(B * n * D, params.vector_lanes, 1, [tokens_in]),  # tokens weighted by their sizes
            (fpga.matmul_cycles(B, b, r, D), spill(merged)),  # one-hot (|B| x r) @ merged A tokens
            unit(B * b * D, params.vector_lanes, 2, [tokens_in]),  # added to B, divided by the new sizes
            (math.ceil(tokens_out / params.onchip_bytes_per_cycle), spill(tokens_in) + spill(tokens_out)),
        ]


MERGE = MergeEntries()


class MergePricing(TokenPricing):
    kind = "merge"
    order = 3
    entry = MERGE
    share = 0.3
    run = True

    def chain_tokens_out(self, tokens_in: int, prefix: int, tokens: list[int]) -> int:
        """About an eighth of the patch tokens merged (ToMe's usual count at every block), on `tokens`."""
        most = (tokens_in - prefix) // 2
        r = max(r for r in [*tokens, most] if r <= max(1, min(most, (tokens_in - prefix) // 8)))
        return tokens_in - r

    def chain_parts(self, key: dict, attention: Callable[..., dict]) -> list[dict]:
        cut = {"tokens_in": key["tokens"], "tokens_out": key["tokens_out"], "prefix": key["prefix"]}
        heads = {"heads": key["heads"], "head_dim": key["head_dim"]}
        merge = {"op": self.entry.op, "batch": key["batch"], "embed_dim": key["embed_dim"], **cut, **heads}
        return [attention(key["tokens"]), merge]

    def chain_step(self, key: dict, device: torch.device) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        N, prefix, r = key["tokens"], key["prefix"], key["tokens"] - key["tokens_out"]
        size = torch.ones(key["batch"], N, device=device)

        def step(attention: Any, x: torch.Tensor) -> torch.Tensor:
            x, keys = attention(x, None, False, keys=True)
            return merge_pairs(x, keys, size, prefix, r)[0]

        return step

    def chain_cost(self, look: Any, key: Any, heads: int) -> float:
        attention = look.attention[(False, False)][key.tokens, heads]
        return attention + look.entries(self.entry.op)["pairs"][key.tokens, key.tokens - key.tokens_out]

    def price(self, look: Any, flow: TokenFlow, kept: int, package_token: bool) -> tuple[float, bool]:
        merged, cost, outside = flow.n_patch - kept, 0.0, False
        if merged > 0:  # nothing to pair up (one patch token left): the runtime does no work
            # The package token (if a top-k made one) passes through unmatched.
            n_in, op = flow.prefix + flow.n_patch, self.entry.op
            cost = look.entries(op)["pairs"][n_in, merged] + look.reducing[self.correction][flow.tokens]
            outside = bool(look.outside[op][n_in, merged])
        flow.tokens, flow.n_patch = flow.prefix + kept + int(flow.package), kept
        return cost, outside

    def sample(self, rng: random.Random, n_patch: int) -> dict:
        """Counts on the search's grid of 2, up to an eighth of the patch tokens at each block."""
        return {"r": 2 * rng.randint(1, max(1, n_patch // 16))}


PRICING = MergePricing()
