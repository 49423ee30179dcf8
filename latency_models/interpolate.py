"""Piecewise-linear interpolation of a gridded table onto every integer point of its axes.

The predictor looks latencies up millions of times during a search, so each (model, batch) pair
is expanded once into dense arrays indexed by the integer key (tokens, heads, channels); a
prediction is then a handful of array reads. Outside the measured range values are extended
linearly from the nearest segment, and the expanded points are marked so a caller can say
that a prediction extrapolates.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expand_1d", "expand_2d"]


def expand_1d(xs: np.ndarray, values: np.ndarray, size: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Values at x = 0..size-1 along `axis`, and a mask of the x outside [xs.min(), xs.max()].

    `xs` must be sorted and distinct. With a single sample the value is constant along the axis
    (and every other x counts as extrapolated).
    """
    xs = np.asarray(xs, dtype=np.float64)
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    grid = np.arange(size, dtype=np.float64)
    outside = (grid < xs[0]) | (grid > xs[-1])
    if len(xs) == 1:
        out = np.repeat(values[:1], size, axis=0)
        return np.moveaxis(out, 0, axis), outside
    # Segment index for every x (the first or last segment outside the range), then linear weights.
    seg = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, len(xs) - 2)
    x0, x1 = xs[seg], xs[seg + 1]
    t = ((grid - x0) / (x1 - x0)).reshape(-1, *([1] * (values.ndim - 1)))
    out = values[seg] * (1.0 - t) + values[seg + 1] * t
    return np.moveaxis(out, 0, axis), outside


def expand_2d(
    xs: np.ndarray, ys: np.ndarray, values: np.ndarray, size_x: int, size_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear expansion of `values[i, j]` (at xs[i], ys[j]) to a (size_x, size_y) array, and its mask."""
    along_y, out_y = expand_1d(ys, values, size_y, axis=1)
    full, out_x = expand_1d(xs, along_y, size_x, axis=0)
    return full, out_x[:, None] | out_y[None, :]
