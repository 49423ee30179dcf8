"""Token state carried through a pruned ViT, and the token reductions that shrink it.

Layout of `TokenState.x` (B, N, C): prefix tokens (class, distillation, registers), then the
surviving patch tokens in their original order, then the package token if one exists.

Top-k with a fixed count on an unpadded batch gathers with static shapes (fast, exportable).
Anything with per-image counts (thresholds, or top-k after a threshold) builds a keep mask and
compacts each image's kept tokens to the front, padding to the longest image in the batch; padded
slots are marked invalid and masked out as attention keys, so an image's result does not depend
on its batch neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from pruning.config import ThresholdReduction, TopKReduction

__all__ = ["TokenState", "attention_mask", "paint_canvas", "reduce_tokens"]


@dataclass
class TokenState:
    x: torch.Tensor
    n_prefix: int
    has_package: bool = False
    valid: torch.Tensor | None = None
    """(B, N) bool, False for padding; None when every slot is a real token."""
    compact: bool = True
    """False keeps dropped tokens in place and only masks them (same results, static shapes)."""
    canvas: torch.Tensor | None = None
    """(B, grid + 1, C): last value of every grid position, for families that pool a grid (PiT)."""
    positions: torch.Tensor | None = None
    """(B, n_patch) grid position of each patch slot; padding points at the canvas' spare slot."""
    track_positions: bool = False
    grid: tuple[int, int] | None = None
    """(height, width) of the patch grid, for families that pool it (PiT)."""
    counts: list[torch.Tensor] = field(default_factory=list)
    """Patch tokens kept per image at each reduction so far."""
    size: torch.Tensor | None = None
    """(B, N) how many original patches each token stands for, once tokens were merged; None: all 1."""

    @property
    def n_patch(self) -> int:
        return self.x.shape[1] - self.n_prefix - int(self.has_package)

    def patch_slice(self) -> slice:
        return slice(self.n_prefix, self.n_prefix + self.n_patch)


def attention_mask(state: TokenState) -> torch.Tensor | None:
    """What the attention adds to its keys, shaped (B, 1, 1, N): None, a bool mask hiding padding, or
    log(size) once tokens were merged (proportional attention, ToMe), with -inf at padding."""
    if state.size is None:
        return None if state.valid is None else state.valid[:, None, None, :]
    bias = state.size.log()
    if state.valid is not None:
        bias = bias.masked_fill(~state.valid, float("-inf"))
    return bias[:, None, None, :]


def reduce_tokens(
    state: TokenState,
    scores: torch.Tensor,
    reduction: TopKReduction | ThresholdReduction,
    package_token: bool,
) -> TokenState:
    """Drop the low-scoring patch tokens of `state`; `scores` (B, N) come from this block's attention."""
    patches = state.x[:, state.patch_slice()]
    patch_scores = scores[:, state.patch_slice()]
    package_score = scores[:, -1] if state.has_package else None
    if state.track_positions and state.positions is None:
        state = _start_tracking(state)
    if state.canvas is not None:
        state = replace(state, canvas=paint_canvas(state))

    if isinstance(reduction, TopKReduction) and state.valid is None and state.compact:
        k = reduction.kept(state.n_patch)
        return _gather_topk(state, patches, patch_scores, package_score, k, package_token)

    if state.size is not None:
        raise ValueError("merged tokens can only be reduced further by top-k on compact, unpadded batches")
    patch_valid = _patch_valid(state)
    keep = _keep_mask(patch_scores, patch_valid, reduction)
    return _compact(state, patches, patch_scores, package_score, patch_valid, keep, package_token)


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


def _patch_valid(state: TokenState) -> torch.Tensor:
    if state.valid is None:
        return torch.ones(state.x.shape[0], state.n_patch, dtype=torch.bool, device=state.x.device)
    return state.valid[:, state.patch_slice()]


def _keep_mask(
    scores: torch.Tensor, valid: torch.Tensor, reduction: TopKReduction | ThresholdReduction
) -> torch.Tensor:
    n_valid = valid.sum(1, keepdim=True)
    masked = scores.masked_fill(~valid, float("-inf"))
    if isinstance(reduction, TopKReduction):
        k = torch.ceil(reduction.keep_ratio * n_valid).clamp(min=1)
        rank = masked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        return (rank < k) & valid
    mean = scores.masked_fill(~valid, 0.0).sum(1, keepdim=True) / n_valid.clamp(min=1)
    keep = (scores >= reduction.threshold * mean) & valid
    best = masked.argmax(dim=1, keepdim=True)
    return keep.scatter(1, best, True)


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
        package_valid = dropped.any(1) | (state.has_package & _package_valid(state))
        parts.append(package[:, None])
        valids.append(package_valid[:, None])
    valid = torch.cat(valids, 1)
    return replace(
        state,
        x=torch.cat(parts, 1),
        valid=None if state.compact and bool(valid.all()) else valid,
        has_package=fuse,
        positions=positions,
        counts=[*state.counts, count],
    )


def _package_valid(state: TokenState) -> torch.Tensor:
    if state.valid is None:
        return torch.ones(state.x.shape[0], dtype=torch.bool, device=state.x.device)
    return state.valid[:, -1]


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
        old_weight = package_score * _package_valid(state)
        total = total + old_weight[:, None] * state.x[:, -1]
        mass = mass + old_weight
    return total / mass.clamp(min=torch.finfo(total.dtype).tiny)[:, None]


def _start_tracking(state: TokenState) -> TokenState:
    B, n, C = state.x.shape[0], state.n_patch, state.x.shape[2]
    canvas = state.x.new_zeros(B, n + 1, C)
    positions = torch.arange(n, device=state.x.device).expand(B, n)
    return replace(state, canvas=canvas, positions=positions)


def paint_canvas(state: TokenState) -> torch.Tensor:
    """The canvas with each live patch token written at its grid position (padding goes to the spare slot)."""
    spare = state.canvas.shape[1] - 1
    positions = state.positions.masked_fill(~_patch_valid(state), spare)
    index = positions[..., None].expand(-1, -1, state.canvas.shape[2])
    return state.canvas.scatter(1, index, state.x[:, state.patch_slice()])
