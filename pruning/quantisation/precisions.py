"""The precisions a model can be quantised to (no torch here: the command line and job schemas read it)."""

from __future__ import annotations

__all__ = ["FLOAT", "PRECISIONS"]

FLOAT = "fp32"
"""The unquantised model's precision."""

PRECISIONS: dict[str, bool] = {"int8": False, "int8-pow2": True}
"""Precision name -> whether its scales are powers of two (shifts instead of multiplies, RAPQ's
constraint for accelerators). `FLOAT` is the unquantised model."""
