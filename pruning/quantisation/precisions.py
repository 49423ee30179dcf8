"""The precisions a model can be quantised to (no torch here: the command line and job schemas read it)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["FLOAT", "PRECISIONS", "precision_label"]

FLOAT = "fp32"
"""The unquantised model's precision."""

PRECISIONS: dict[str, bool] = {"int8": False, "int8-pow2": True}
"""Precision name -> whether its scales are powers of two (shifts instead of multiplies, RAPQ's
constraint for accelerators). `FLOAT` is the unquantised model."""


def precision_label(precision: str, float_blocks: Sequence[int] = ()) -> str:
    """fp32, int8, ... or, for a model that keeps some blocks float, e.g. "int8 but blocks 6/11 fp32"."""
    return f"{precision} but blocks {'/'.join(map(str, float_blocks))} {FLOAT}" if float_blocks else precision
