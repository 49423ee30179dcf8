"""The precisions a model can be quantised to (no torch here: the command line and job schemas read it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["FLOAT", "PRECISIONS", "Precision", "precision_label"]

FLOAT = "fp32"
"""The unquantised model's precision."""


class Precision(NamedTuple):
    """How a precision quantises a model, and what a device computes it in."""

    power_of_two: bool
    """Every scale a power of two (shifts instead of multiplies, RAPQ's constraint for accelerators)."""
    weight_bits: int
    """Bits of a weight code (symmetric, one scale per output channel); activations are always 8 bits."""
    dtype: str
    """The device dtype that runs it (`latency_models.devices.analytic.runs_in`): int8 kernels for W8A8; W4A8
    has its own, whose 4-bit weights halve the weight traffic."""
    words: str
    """In words, for help texts."""


PRECISIONS: dict[str, Precision] = {
    "int8": Precision(False, 8, "int8", "W8A8, any scales"),
    "int8-pow2": Precision(True, 8, "int8", "W8A8, power-of-two scales"),
    "w4a8": Precision(False, 4, "w4a8", "4-bit weights, 8-bit activations"),
}
"""Precision name -> how it quantises. `FLOAT` is the unquantised model."""


def precision_label(precision: str, float_blocks: Sequence[int] = ()) -> str:
    """fp32, int8, ... or, for a model that keeps some blocks float, e.g. "int8 but blocks 6/11 fp32"."""
    return f"{precision} but blocks {'/'.join(map(str, float_blocks))} {FLOAT}" if float_blocks else precision
