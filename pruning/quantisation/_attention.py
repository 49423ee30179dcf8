"""The attention products (QK^T and PV) computed in integer, as a fully int8 device computes them.

Phones running a model fully in int8 (XNNPACK, TFLite) and an FPGA's integer array multiply the
attention products in int8 too, where onnxruntime's CPU recipe keeps them float. On such a device:
the scaled query, the keys and the values are int8, symmetric, one scale each per layer, calibrated
on real images (min-max; with power-of-two scales, the power of two with the smaller squared error);
the softmax output is uint8 with the fixed scale 1/256 (TFLite's, a power of two: a probability of 1
is stored as 255/256); the logits, the softmax's input, one uint8 grid per tensor (`logits_in`, a
`StreamGrid` of one channel, where the device stores them in 8 bits: `pruning.quantisation._stream`).
`AttentionProducts` holds those scales; the block's forward
(`pruning.block.attention_heads`) quantises the four operands through it, with operations that the
ONNX file computes the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.block import on_grid
from pruning.quantisation._linear import pow2_by_error

__all__ = ["OPERAND_RANGE", "PROBS_RANGE", "PROBS_SCALE", "AttentionProducts", "operand_scale"]

OPERAND_RANGE = (-128, 127)
"""int8 codes of the query, keys and values (symmetric scales: -128 is the one ONNX's int8 range adds)."""
PROBS_RANGE = (0, 255)
PROBS_SCALE = 1.0 / 256
"""uint8 attention probabilities: the fixed output scale of an int8 softmax."""


class AttentionProducts(nn.Module):
    """The int8 grids of one attention layer's products. Buffers (saved with the weights):
    `query_scale` (of the query already multiplied by the attention's 1/sqrt(head_dim)),
    `key_scale`, `value_scale`."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("query_scale", "key_scale", "value_scale"):
            self.register_buffer(name, torch.ones((), dtype=torch.float32))

    def operands(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The scaled query, keys and values on their int8 grids."""
        return tuple(
            _on_grid(x, s, OPERAND_RANGE)
            for x, s in ((q, self.query_scale), (k, self.key_scale), (v, self.value_scale))
        )

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The attention logits on their grid, where the layer has one (`logits_in`)."""
        return on_grid(self, "logits_in", logits)

    def probs(self, probs: torch.Tensor) -> torch.Tensor:
        """Softmax output on its uint8 grid."""
        return _on_grid(probs, PROBS_SCALE, PROBS_RANGE)

    def extra_repr(self) -> str:
        return "int8 q, k, v; uint8 probabilities"


def _on_grid(x: torch.Tensor, scale: torch.Tensor | float, codes: tuple[int, int]) -> torch.Tensor:
    """`x` rounded to the nearest of the zero-point-0 grid `scale` * `codes`: what an int8 quantise and
    dequantise compute, written out (torch's fake-quantisation ops do not export to ONNX) so that the
    exported file computes it with the same operations (Div, Round half to even, Clip, Mul)."""
    return torch.clamp(torch.round(x / scale), *codes) * scale


def operand_scale(absmax: float, sample: torch.Tensor, power_of_two: bool) -> float:
    """The symmetric int8 scale of an operand whose largest magnitude over the calibration images was
    `absmax` (`sample`: values it took, to choose between the two powers of two)."""
    scale = max(absmax, 1e-12) / OPERAND_RANGE[1]
    if not power_of_two:
        return scale
    return pow2_by_error(scale, lambda s: _on_grid(sample, s, OPERAND_RANGE) - sample)
