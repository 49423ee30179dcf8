"""Token merging (ToMe, Bolya et al. 2023): bipartite soft matching on attention keys.

Written with gathers, comparisons and matrix products only (no scatter_reduce), so the graph
has static shapes for a given input size, exports to ONNX and gives each image the same result
alone or in any batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pruning.config import MergeReduction
from pruning.tokens import TokenState

__all__ = ["merge_tokens"]


def merge_tokens(state: TokenState, keys: torch.Tensor, reduction: MergeReduction) -> TokenState:
    """Merge `reduction.r` pairs of the patch tokens of `state`; `keys` (B, N, d): this block's
    attention keys averaged over heads, the similarity metric.

    Patch tokens alternate into sets A (even positions) and B (odd). Every A token finds its most
    similar B token (cosine similarity); the r A tokens with the most similar partners are folded
    into them, as size-weighted averages. The result holds prefix tokens, the unmerged A tokens
    (in their original order), every B token, then the package token if there is one.
    """
    if state.valid is not None or not state.compact:
        raise ValueError("token merging needs a compact, unpadded batch (no threshold reduction before it)")
    B, N, C = state.x.shape
    patch = state.patch_slice()
    n = state.n_patch
    r = n - reduction.kept(n)
    size = state.size if state.size is not None else state.x.new_ones(B, N)
    if r == 0:
        count = torch.full((B,), n, dtype=torch.long, device=state.x.device)
        return replace(state, counts=[*state.counts, count])

    metric = keys[:, patch]
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(metric.dtype).tiny)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)  # a stable sort would not export to ONNX
    merged = ranked[:, :r]  # A tokens folded into their partners
    kept = ranked[:, r:].sort(dim=-1).values  # A tokens that stay, in their original order

    patches, patch_size = state.x[:, patch], size[:, patch]
    x_a, x_b = patches[:, ::2], patches[:, 1::2]
    size_a, size_b = patch_size[:, ::2], patch_size[:, 1::2]
    weighted_a = x_a * size_a[..., None]
    # (B, |B|, r): which merged A token goes into which B token; a matrix product sums them.
    into = (partner.gather(1, merged)[:, None, :] == torch.arange(x_b.shape[1], device=x_b.device)[:, None])
    into = into.to(x_b.dtype)
    total_b = x_b * size_b[..., None] + into @ weighted_a.gather(1, merged[..., None].expand(B, r, C))
    new_size_b = size_b + (into @ size_a.gather(1, merged)[..., None])[..., 0]
    new_b = total_b / new_size_b[..., None]

    parts = [state.x[:, : state.n_prefix], x_a.gather(1, kept[..., None].expand(-1, -1, C)), new_b]
    sizes = [size[:, : state.n_prefix], size_a.gather(1, kept), new_size_b]
    if state.has_package:
        parts.append(state.x[:, -1:])
        sizes.append(size[:, -1:])
    count = torch.full((B,), n - r, dtype=torch.long, device=state.x.device)
    return replace(state, x=torch.cat(parts, 1), size=torch.cat(sizes, 1), counts=[*state.counts, count])
