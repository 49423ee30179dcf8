"""Dropping patch tokens by score (EViT, AS-ViT), shared by the ops that keep the best-scoring tokens.

With the same count in every image on an unpadded batch, the kept tokens are gathered with static
shapes (fast, exportable). Anything with per-image counts builds a keep mask and compacts each
image's kept tokens to the front, padding to the longest image in the batch. With `package_token`,
the dropped tokens are fused into one score-weighted token that later blocks carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from pruning.tokens._state import TokenState, package_valid, paint_canvas, patch_valid, start_tracking

__all__ = ["drop_by_score"]

KeepMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(patch scores (B, n), valid (B, n)) -> (B, n) bool: the patch tokens an image keeps."""


def drop_by_score(
    state: TokenState,
    scores: torch.Tensor,
    package_token: bool,
    keep_mask: KeepMask,
    fixed_count: Callable[[int], int] | None = None,
) -> TokenState:
    """Drop the low-scoring patch tokens of `state`; `scores` (B, N) come from this block's attention.

    `fixed_count(n)`: the patch tokens every image keeps, for ops that keep the same count; on a
    compact, unpadded batch they are gathered. Otherwise `keep_mask` picks each image's tokens."""
    patches = state.x[:, state.patch_slice()]
    patch_scores = scores[:, state.patch_slice()]
    package_score = scores[:, -1] if state.has_package else None
    if state.track_positions and state.positions is None:
        state = start_tracking(state)
    if state.canvas is not None:
        state = replace(state, canvas=paint_canvas(state))

    if fixed_count is not None and state.valid is None and state.compact:
        k = fixed_count(state.n_patch)
        return _gather_topk(state, patches, patch_scores, package_score, k, package_token)

    if state.size is not None:
        raise ValueError("merged tokens can only be reduced further by top-k on compact, unpadded batches")
    valid = patch_valid(state)
    keep = keep_mask(patch_scores, valid)
    return _compact(state, patches, patch_scores, package_score, valid, keep, package_token)


def _gather_topk(
    state: TokenState,
    patches: torch.Tensor,
    patch_scores: torch.Tensor,
    package_score: torch.Tensor | None,
    k: int,
    package_token: bool,
) -> TokenState:
    B, n, C = patches.shape
    order = patch_scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    kept = patches.gather(1, order[..., None].expand(B, k, C))
    parts = [state.x[:, : state.n_prefix], kept]
    fuse = package_token and (k < n or state.has_package)
    if fuse:
        dropped = torch.ones_like(patch_scores, dtype=torch.bool).scatter(1, order, False)
        parts.append(_package(state, patches, patch_scores, package_score, dropped)[:, None])
    positions = state.positions.gather(1, order) if state.positions is not None else None
    count = torch.full((B,), k, dtype=torch.long, device=patches.device)
    size = None
    if state.size is not None:
        # Kept tokens keep their sizes; the package token, a score-weighted blend, counts as one.
        sizes = [state.size[:, : state.n_prefix], state.size[:, state.patch_slice()].gather(1, order)]
        size = torch.cat(sizes + [state.size.new_ones(B, 1)] * fuse, 1)
    return replace(
        state,
        x=torch.cat(parts, 1),
        has_package=fuse,
        positions=positions,
        counts=[*state.counts, count],
        size=size,
    )


def _compact(
    state: TokenState,
    patches: torch.Tensor,
    patch_scores: torch.Tensor,
    package_score: torch.Tensor | None,
    patch_valid: torch.Tensor,
    keep: torch.Tensor,
    package_token: bool,
) -> TokenState:
    B, _, C = patches.shape
    prefix = state.x[:, : state.n_prefix]
    prefix_valid = torch.ones(B, state.n_prefix, dtype=torch.bool, device=patches.device)
    count = keep.sum(1)
    if state.compact:
        # Kept tokens first, in their original order; the rest becomes padding past `width`.
        order = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, : int(count.max())]
        kept = patches.gather(1, order[..., None].expand(-1, -1, C))
        kept_valid = keep.gather(1, order)
        positions = None
        if state.positions is not None:
            spare = state.canvas.shape[1] - 1
            positions = state.positions.gather(1, order).masked_fill(~kept_valid, spare)
    else:
        kept, kept_valid, positions = patches, keep, state.positions
    parts, valids = [prefix, kept], [prefix_valid, kept_valid]
    fuse = package_token
    if fuse:
        dropped = patch_valid & ~keep
        package = _package(state, patches, patch_scores, package_score, dropped)
        fused_valid = dropped.any(1) | (state.has_package & package_valid(state))
        parts.append(package[:, None])
        valids.append(fused_valid[:, None])
    valid = torch.cat(valids, 1)
    return replace(
        state,
        x=torch.cat(parts, 1),
        valid=None if state.compact and bool(valid.all()) else valid,
        has_package=fuse,
        positions=positions,
        counts=[*state.counts, count],
    )


def _package(
    state: TokenState,
    patches: torch.Tensor,
    patch_scores: torch.Tensor,
    package_score: torch.Tensor | None,
    dropped: torch.Tensor,
) -> torch.Tensor:
    """Fuse the dropped patch tokens (and the previous package token) into one score-weighted token."""
    weights = patch_scores * dropped
    total = (weights[..., None] * patches).sum(1)
    mass = weights.sum(1)
    if state.has_package:
        old_weight = package_score * package_valid(state)
        total = total + old_weight[:, None] * state.x[:, -1]
        mass = mass + old_weight
    return total / mass.clamp(min=torch.finfo(total.dtype).tiny)[:, None]
