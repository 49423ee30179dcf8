"""Token state carried through a pruned ViT from block to block.

Layout of `TokenState.x` (B, N, C): prefix tokens (class, distillation, registers), then the
surviving patch tokens in their original order, then the package token if one exists. Padded
slots (after a reduction with per-image counts) are marked invalid and masked out as attention
keys, so an image's result does not depend on its batch neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

__all__ = ["TokenState", "attention_mask", "padded_widths", "paint_canvas", "patch_valid", "start_tracking"]


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


def patch_valid(state: TokenState) -> torch.Tensor:
    """(B, n_patch) bool: which patch slots hold real tokens."""
    if state.valid is None:
        return torch.ones(state.x.shape[0], state.n_patch, dtype=torch.bool, device=state.x.device)
    return state.valid[:, state.patch_slice()]


def package_valid(state: TokenState) -> torch.Tensor:
    if state.valid is None:
        return torch.ones(state.x.shape[0], dtype=torch.bool, device=state.x.device)
    return state.valid[:, -1]


def start_tracking(state: TokenState) -> TokenState:
    B, n, C = state.x.shape[0], state.n_patch, state.x.shape[2]
    canvas = state.x.new_zeros(B, n + 1, C)
    positions = torch.arange(n, device=state.x.device).expand(B, n)
    return replace(state, canvas=canvas, positions=positions)


def paint_canvas(state: TokenState) -> torch.Tensor:
    """The canvas with each live patch token written at its grid position (padding goes to the spare slot)."""
    spare = state.canvas.shape[1] - 1
    positions = state.positions.masked_fill(~patch_valid(state), spare)
    index = positions[..., None].expand(-1, -1, state.canvas.shape[2])
    return state.canvas.scatter(1, index, state.x[:, state.patch_slice()])


def padded_widths(counts: torch.Tensor, batch: int) -> list[float]:
    """Tokens a batch of `batch` images really runs at, per reduction, from per-image counts (images x
    reductions): a padded batch runs at its longest image's count. Averaged over consecutive groups of
    `batch` images (a last, shorter group counts as it is); at batch 1, the mean count. What a latency
    table prices a model with per-image counts at."""
    groups = counts.split(batch)
    widths = torch.stack([g.max(dim=0).values for g in groups]).double()
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float64)
    return ((widths * sizes[:, None]).sum(0) / sizes.sum()).tolist()
