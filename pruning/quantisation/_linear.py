"""A Linear layer computed as an int8 device computes it, and the scale rules that quantise it.

The scheme is the one onnxruntime and most int8 accelerators run (W8A8): weights int8, symmetric, one
scale per output channel (zero point 0, codes -127..127); the layer's input uint8, asymmetric, one
scale and zero point for the whole tensor, calibrated on real images. The product accumulates in
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
    "weight_scales",
    "zero_point_for",
]

WEIGHT_RANGE = (-127, 127)
"""int8 weight codes: symmetric, so -128 is unused (as onnxruntime's symmetric int8)."""
ACTIVATION_RANGE = (0, 255)
"""uint8 activation codes."""
SAMPLE_VALUES = 16384
"""Input values kept per layer to choose a power-of-two input scale by squared error."""


class QuantisedLinear(nn.Linear):
    """`nn.Linear` with an int8 weight grid and a uint8 input grid (see the module docstring).

    Buffers (saved with the weights, so a bundle carries its scales): `input_scale` and
    `input_zero_point` (scalars), `weight_scale` (one per output channel).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("input_scale", torch.ones((), device=device, dtype=torch.float32))
        self.register_buffer("input_zero_point", torch.zeros((), device=device, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device, dtype=torch.float32))
        self.simulate = True
        """False computes in float (calibration, and the float graph the ONNX export rewrites)."""

    @classmethod
    def wrap(cls, linear: nn.Linear) -> QuantisedLinear:
        """A QuantisedLinear sharing `linear`'s parameters (its scales still to be calibrated)."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device)
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.simulate:
            low, high = ACTIVATION_RANGE
            x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point, low, high)
        return F.linear(x, self.weight, self.bias)

    def weight_codes(self) -> torch.Tensor:
        """The int8 codes of the weights (out_features, in_features)."""
        low, high = WEIGHT_RANGE
        return torch.round(self.weight.detach() / self.weight_scale[:, None]).clamp(low, high).to(torch.int8)

    def round_weights(self) -> None:
        """Store the weights as their codes times their scales: what the device multiplies with."""
        with torch.no_grad():
            self.weight.copy_(self.weight_codes().float() * self.weight_scale[:, None])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W8A8"


def weight_scales(weight: torch.Tensor, power_of_two: bool) -> torch.Tensor:
    """Per-output-channel symmetric scales: |w|max / 127, or the power of two (the one just below or just
    above it) that gives the channel the smaller squared error."""
    absmax = weight.detach().abs().amax(dim=1).clamp_min(1e-12)
    scale = absmax / WEIGHT_RANGE[1]
    if not power_of_two:
        return scale.float()
    candidates = torch.stack([_pow2(scale, torch.floor), _pow2(scale, torch.ceil)])  # (2, out)
    errors = torch.stack([_weight_error(weight, s) for s in candidates])
    return candidates.gather(0, errors.argmin(0, keepdim=True))[0].float()


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


def _weight_error(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    low, high = WEIGHT_RANGE
    rounded = torch.round(weight / scale[:, None]).clamp(low, high) * scale[:, None]
    return (rounded - weight).pow(2).sum(dim=1)


def _activation_rounding(sample: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    low, high = ACTIVATION_RANGE
    return torch.fake_quantize_per_tensor_affine(sample, scale, zero_point, low, high) - sample
