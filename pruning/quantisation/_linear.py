"""A Linear layer computed as an int8 device computes it, and the scale rules that quantise it.

The scheme is the one onnxruntime and most int8 accelerators run (W8A8): weights int8, symmetric, one
scale per output channel (zero point 0, codes -127..127; at 4 bits, W4A8, -7..7); the layer's input
uint8, asymmetric, one scale and zero point for the whole tensor, calibrated on real images. The product accumulates in
int32 and is scaled back to float, so in float arithmetic the layer is exactly

    linear(dequant(quant(x)), dequant(quant(W))) + b

which is what `QuantisedLinear` computes ("fake quantisation"): the accuracy it gives is the device's.
The weights are stored already rounded (their int8 codes times their scales), so the export writes
the same codes and only the input is quantised at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATION_RANGE",
    "SAMPLE_VALUES",
    "WEIGHT_RANGE",
    "QuantisedLinear",
    "activation_qparams",
    "pow2_by_error",
    "weight_range",
    "weight_scales",
    "zero_point_for",
]

WEIGHT_RANGE = (-127, 127)
"""int8 weight codes: symmetric, so -128 is unused (as onnxruntime's symmetric int8)."""
CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(11))
"""Below 8 bits, each channel's scale covers this share of its largest weight, the one with the smallest
squared error: at 15 codes the largest weight alone should not set the step of all the others."""
ACTIVATION_RANGE = (0, 255)
"""uint8 activation codes."""
SAMPLE_VALUES = 16384
"""Input values kept per layer to choose a power-of-two input scale by squared error."""


class _IntegerWeights:
    """What a quantised Linear layer and a quantised convolution share: an int8 (or int4) weight grid, one
    scale per output channel, and a uint8 input grid.

    Buffers (saved with the weights, so a bundle carries its scales): `input_scale` and
    `input_zero_point` (scalars), `weight_scale` (one per output channel). `weight_bits` (8 or 4) follows
    from the precision, which a bundle records.
    """

    weight: nn.Parameter

    def _add_grids(self, channels: int, device, weight_bits: int) -> None:
        self.weight_bits = weight_bits
        self.register_buffer("input_scale", torch.ones((), device=device, dtype=torch.float32))
        self.register_buffer("input_zero_point", torch.zeros((), device=device, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(channels, device=device, dtype=torch.float32))
        self.simulate = True
        """False computes in float (calibration, and the float graph the ONNX export rewrites)."""

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulate:
            return x
        low, high = ACTIVATION_RANGE
        return torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point, low, high)

    def _channel_scales(self) -> torch.Tensor:
        return self.weight_scale.view(-1, *[1] * (self.weight.dim() - 1))

    def weight_codes(self) -> torch.Tensor:
        """The codes of the weights (shaped as the weights), as int8 (within -7..7 at 4 bits)."""
        low, high = weight_range(self.weight_bits)
        return torch.round(self.weight.detach() / self._channel_scales()).clamp(low, high).to(torch.int8)

    def round_weights(self) -> None:
        """Store the weights as their codes times their scales: what the device multiplies with."""
        with torch.no_grad():
            self.weight.copy_(self.weight_codes().float() * self._channel_scales())

    def calibrate_weights(self, power_of_two: bool) -> None:
        """Each output channel's scale from its own weights (`weight_scales`), and the weights rounded to it."""
        self.weight_scale.copy_(weight_scales(self.weight.flatten(1), power_of_two, self.weight_bits))
        self.round_weights()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W{self.weight_bits}A8"


class QuantisedLinear(_IntegerWeights, nn.Linear):
    """`nn.Linear` with an int8 weight grid and a uint8 input grid (see the module docstring)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, weight_bits: int = 8
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._add_grids(out_features, device, weight_bits)

    @classmethod
    def wrap(cls, linear: nn.Linear, weight_bits: int = 8) -> QuantisedLinear:
        """A QuantisedLinear sharing `linear`'s parameters (its scales still to be calibrated)."""
        weight = linear.weight
        bias = linear.bias is not None
        layer = cls(linear.in_features, linear.out_features, bias, weight.device, weight_bits=weight_bits)
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x), self.weight, self.bias)


class QuantisedConv2d(_IntegerWeights, nn.Conv2d):
    """`nn.Conv2d` with the same grids: a ViT's patch embedding (a 16x16 convolution of stride 16, a Linear
    layer over each patch's pixels) as a fully integer device computes it."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d, weight_bits: int = 8) -> QuantisedConv2d:
        """A QuantisedConv2d sharing `conv`'s parameters (its scales still to be calibrated)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
        )
        layer._add_grids(conv.out_channels, conv.weight.device, weight_bits)
        layer.weight, layer.bias = conv.weight, conv.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._input(x), self.weight, self.bias)


def weight_range(bits: int) -> tuple[int, int]:
    """Symmetric codes of `bits`-bit weights: -127..127 at 8 bits, -7..7 at 4."""
    high = 2 ** (bits - 1) - 1
    return -high, high


def weight_scales(weight: torch.Tensor, power_of_two: bool, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric scales: |w|max / 127 (below 8 bits, the share of it in `CLIP_RATIOS` with
    the smallest squared error), or the power of two (the one just below or just above it) that gives the
    channel the smaller squared error."""
    weight = weight.detach()
    absmax = weight.abs().amax(dim=1).clamp_min(1e-12)
    scale = absmax / weight_range(bits)[1]
    if bits < 8:
        candidates = torch.stack([scale * ratio for ratio in CLIP_RATIOS])
        scale = _least_error(weight, candidates, bits)
    if not power_of_two:
        return scale.float()
    return _least_error(weight, torch.stack([_pow2(scale, torch.floor), _pow2(scale, torch.ceil)]), bits).float()


def _least_error(weight: torch.Tensor, candidates: torch.Tensor, bits: int) -> torch.Tensor:
    """Per channel, the candidate scale (rows of `candidates`) with the smallest squared rounding error."""
    errors = torch.stack([_weight_error(weight, s, bits) for s in candidates])
    return candidates.gather(0, errors.argmin(0, keepdim=True))[0]


def activation_qparams(low: float, high: float, sample: torch.Tensor, power_of_two: bool) -> tuple[float, int]:
    """(scale, zero point) of a uint8 input grid covering [low, high] (and 0, which must be exact).

    With `power_of_two` the scale is the power of two just below or just above that grid's: below
    clips the extremes to round the bulk finer, above keeps every value; the one with the smaller
    squared error on `sample` (values the input took on calibration images) wins.
    """
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / (ACTIVATION_RANGE[1] - ACTIVATION_RANGE[0])
    if power_of_two:
        scale = pow2_by_error(scale, lambda s: _activation_rounding(sample, s, zero_point_for(low, s)))
    return scale, zero_point_for(low, scale)


def pow2_by_error(scale: float, residual) -> float:
    """The power of two just below or just above `scale` whose `residual(candidate)` (the rounding
    error of the calibration values on that grid) has the smaller sum of squares."""
    candidates = [float(_pow2(torch.tensor(scale, dtype=torch.float64), r)) for r in (torch.floor, torch.ceil)]
    return min(candidates, key=lambda s: float(residual(s).pow(2).sum()))


def _pow2(scale: torch.Tensor, rounding) -> torch.Tensor:
    """2 to the power of log2(scale) rounded by `rounding` (torch.floor or torch.ceil)."""
    return torch.exp2(rounding(torch.log2(scale)))


def zero_point_for(low: float, scale: float) -> int:
    """The uint8 zero point of a grid of `scale` whose lowest value is `low` (<= 0)."""
    return int(min(max(round(-low / scale), ACTIVATION_RANGE[0]), ACTIVATION_RANGE[1]))


def _weight_error(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    low, high = weight_range(bits)
    rounded = torch.round(weight / scale[:, None]).clamp(low, high) * scale[:, None]
    return (rounded - weight).pow(2).sum(dim=1)


def _activation_rounding(sample: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    low, high = ACTIVATION_RANGE
    return torch.fake_quantize_per_tensor_affine(sample, scale, zero_point, low, high) - sample
