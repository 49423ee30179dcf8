"""The residual stream in 8 bits, as a fully integer device stores it between its layers.

onnxruntime's int8 recipe keeps the residual adds in float. A device that holds every activation in
int8 (a phone's full-int8 model, where the adds are quantised adds; an FPGA of fixed-point units)
stores the residual stream on an 8-bit grid too, and its LayerNorms read it from there. A ViT's
stream is hard to put on one grid: a few channels carry values a hundred times the others', so one
scale for the whole tensor rounds most channels to a handful of codes. FQ-ViT's Power-of-Two Factor
keeps one base scale and gives each channel a factor 2^alpha (alpha in 0..`shifts`), the smallest
that covers the channel's range: integer hardware aligns the channels with shifts, and LayerNorm
still computes on integers. `shifts=0` is the one scale per tensor of a runtime without it.

The grids sit where the stream is read: at each block's input and between its two halves (what its
LayerNorms and residual adds read), and before the final LayerNorm. Each channel's range is its
min-max over the calibration images in the float model; the zero point is per channel (an offset
LayerNorm's integer mean absorbs).

The same device stores the inputs of its nonlinear units in 8 bits too: GELU reads fc1's output, and
softmax the attention logits, each requantised to one uint8 grid per tensor (a phone's int8 GELU and
softmax are lookup tables over those 256 codes; the FPGA's units read 8-bit words). `GELU_SLOT` is
the MLP's grid; the logits' grid belongs to the layer's `AttentionProducts`.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.model import PrunedViT

__all__ = [
    "GELU_SLOT",
    "SLOTS",
    "STREAM_RANGE",
    "StreamGrid",
    "StreamObserver",
    "gelu_slots",
    "stream_qparams",
    "stream_slots",
    "tensor_qparams",
]

STREAM_RANGE = (0, 255)
"""uint8 codes of the stream."""


class StreamGrid(nn.Module):
    """The uint8 grid of the residual stream at one point: `scale` and `zero_point` per channel (buffers,
    saved with the weights)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (torch's fake-quantisation ops do not export) so the ONNX file rounds the same way.
        low, high = STREAM_RANGE
        return (torch.clamp(torch.round(x / self.scale) + self.zero_point, low, high) - self.zero_point) * self.scale

    def extra_repr(self) -> str:
        return f"uint8, {len(self.scale)} channels"


class StreamObserver(nn.Module):
    """Stands where a `StreamGrid` will: records each channel's min and max of what passes, changes nothing.
    `per_tensor`: the grid there will have one scale for the whole tensor."""

    def __init__(self, per_tensor: bool = False) -> None:
        super().__init__()
        self.per_tensor = per_tensor
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().float().reshape(-1, x.shape[-1])
        low, high = flat.amin(dim=0), flat.amax(dim=0)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        return x


def stream_qparams(
    low: torch.Tensor, high: torch.Tensor, shifts: int, power_of_two: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) per channel of a uint8 grid covering each channel's [low, high] (and 0): a base
    scale, the widest channel's over 2^`shifts` (with `power_of_two`, the power of two just above it, so
    every channel's scale is one), times the smallest power of two up to 2^`shifts` that covers the
    channel (see the module docstring)."""
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)
    codes = STREAM_RANGE[1] - STREAM_RANGE[0]
    needed = (high - low).clamp_min(1e-12) / codes
    base = needed.max() / 2**shifts
    if power_of_two:
        base = torch.exp2(torch.ceil(torch.log2(base)))
    alpha = torch.ceil(torch.log2(needed / base)).clamp(0, shifts)
    scale = base * torch.exp2(alpha)
    zero_point = torch.round(-low / scale).clamp(*STREAM_RANGE)
    return scale.float(), zero_point.float()


def tensor_qparams(low: torch.Tensor, high: torch.Tensor, power_of_two: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of one uint8 grid for the whole tensor whose channels ranged over [low, high]."""
    return stream_qparams(low.amin()[None], high.amax()[None], 0, power_of_two)


SLOTS = ("stream_in", "stream_mid")
"""Where a block's stream grids sit (`pruning.block.on_stream_grid`); the model's own is `stream_out`."""


def stream_slots(pruned: PrunedViT, keep_float: list[nn.Module]) -> list[tuple[nn.Module, str, int]]:
    """(module, attribute, channels) of every stream grid of `pruned` but those of the blocks kept float."""
    blocks, skipped = pruned.blocks, {id(block) for block in keep_float}
    slots = [(b, name, b.norm1.normalized_shape[0]) for b in blocks if id(b) not in skipped for name in SLOTS]
    return [*slots, (pruned.model, "stream_out", blocks[-1].norm1.normalized_shape[0])]


GELU_SLOT = "gelu_in"
"""Where an MLP's grid of GELU's input sits (`pruning.block.mlp_hidden`)."""


def gelu_slots(pruned: PrunedViT, keep_float: list[nn.Module]) -> list[tuple[nn.Module, str, int]]:
    """(MLP, `GELU_SLOT`, 1) of every block with hidden channels left but those kept float: one grid per tensor."""
    skipped = {id(block) for block in keep_float}
    return [(b.mlp, GELU_SLOT, 1) for b in pruned.blocks if id(b) not in skipped and b.mlp.fc1.out_features > 0]
