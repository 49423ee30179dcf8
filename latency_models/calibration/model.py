"""The end-to-end correction of a latency table and its fit (see `latency_models.schema.Calibration`).

For a config whose uncalibrated prediction is `raw` ms, of which `blocks` ms are its blocks, and whose
blocks reducing by token op k take t tokens in:

    correction = scale x blocks + offset + sum over reducing blocks (per_block[k] + per_token[k] x t / T)

with T the dense model's tokens. `scale` is what every block costs in a whole model over its parts
(proportional to the work), `offset` what a forward pass pays once (the embedding and head started
cold, the pass's own allocations), and the per-op terms what a token reduction costs in a model
beyond its entries, as a line in the tokens it takes in. Each term is bounded to a physical range (a
block cannot cost a third more or less than its parts; no reduction costs more than half a dense
block beyond its entries) and pulled gently to zero, so a draw without some op, or with few configs,
gives that op no correction rather than a wild one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from latency_models.schema import Calibration, LatencyTable
from pruning.spec import ModelSpec

__all__ = ["KEY_FIELDS", "MIN_CONFIGS", "calibration_for", "correct", "fit", "shape_key", "trust"]

KEY_FIELDS = ("batch", "embed_dim", "heads", "head_dim", "mlp_hidden", "tokens", "depth", "image_size", "num_classes")
MIN_CONFIGS = 8
"""Fewer timed models than this cannot pin the terms."""
MIN_OP_CONFIGS = 3
"""A token op's terms are fitted only when at least this many models use it; otherwise they stay 0."""
PRIOR = 0.01
"""Weight of the pull to zero: a term at its prior scale costs as much as a 1% error on one model."""
SCALE_BOUND = 0.3
OFFSET_BOUND = 0.15
"""The offset lies within +-15% of the dense model's latency."""
OP_BOUND = 0.5
"""A token op's terms lie within +-half a dense block."""


def shape_key(spec: ModelSpec, batch: int) -> tuple:
    """The key of `Calibration.shape_key` for `spec`'s dense shape at `batch`."""
    block = spec.blocks[0]
    return (
        batch, block.embed_dim, block.heads, block.head_dim, block.mlp_hidden,
        spec.num_prefix_tokens + block.tokens_in, len(spec.blocks), spec.image_size[0], spec.num_classes,
    )  # fmt: skip


def calibration_for(table: LatencyTable, spec: ModelSpec, batch: int) -> Calibration | None:
    """The table's calibration of `spec` at exactly `batch`, if it has one."""
    if not table.calibrations:
        return None
    key = shape_key(spec, batch)
    return next((c for c in table.calibrations if c.shape_key() == key), None)


def correct(calibration: Calibration, blocks_ms: float, reductions: Sequence[tuple[str, int]], tokens: int) -> float:
    """Milliseconds the calibration adds to an uncalibrated prediction (see the module docstring)."""
    extra = calibration.scale * blocks_ms + calibration.offset_ms
    for kind, tokens_in in reductions:
        extra += calibration.per_block_ms.get(kind, 0.0) + calibration.per_token_ms.get(kind, 0.0) * tokens_in / tokens
    return extra


def _design(blocks: np.ndarray, reductions: Sequence[Sequence[tuple[str, int]]], kinds: list[str], tokens: int):
    """Columns: blocks, 1, then per kind its reducing blocks and their tokens in / T."""
    columns = [blocks, np.ones_like(blocks)]
    for kind in kinds:
        columns.append(np.array([sum(k == kind for k, _ in r) for r in reductions], dtype=float))
        columns.append(np.array([sum(t for k, t in r if k == kind) / tokens for r in reductions], dtype=float))
    return np.stack(columns, axis=1)


def fit(
    spec: ModelSpec,
    batch: int,
    *,
    raw_ms: Sequence[float],
    blocks_ms: Sequence[float],
    reductions: Sequence[Sequence[tuple[str, int]]],
    measured_ms: Sequence[float],
    seed: int,
) -> Calibration:
    """Fit the correction to models timed end to end: robust least squares on relative errors
    (soft L1, so one model timed in a stall does not pull the fit), within the physical bounds.
    The first model must be the dense one (it sets the bounds' scales)."""
    from scipy.optimize import least_squares

    raw, measured = np.asarray(raw_ms, float), np.asarray(measured_ms, float)
    blocks = np.asarray(blocks_ms, float)
    if len(raw) < MIN_CONFIGS:
        raise ValueError(f"calibration needs at least {MIN_CONFIGS} timed models, got {len(raw)}")
    if not (len(raw) == len(blocks) == len(reductions) == len(measured)) or (measured <= 0).any():
        raise ValueError("calibration needs one positive measurement, prediction and breakdown per model")
    tokens = spec.num_prefix_tokens + spec.blocks[0].tokens_in
    dense_ms, dense_block = raw[0], blocks[0] / len(spec.blocks)
    counts: dict[str, int] = {}
    for r in reductions:
        for kind in {k for k, _ in r}:
            counts[kind] = counts.get(kind, 0) + 1
    kinds = sorted(k for k, n in counts.items() if n >= MIN_OP_CONFIGS)
    design = _design(blocks, reductions, kinds, tokens)
    priors = np.array([0.1, 0.05 * dense_ms] + [0.1 * dense_block] * 2 * len(kinds))
    bounds = np.array([SCALE_BOUND, OFFSET_BOUND * dense_ms] + [OP_BOUND * dense_block] * 2 * len(kinds))

    def residuals(theta: np.ndarray) -> np.ndarray:
        errors = (raw + design @ theta - measured) / measured
        return np.concatenate([errors, PRIOR * theta / priors])

    solution = least_squares(
        residuals, np.zeros(len(priors)), bounds=(-bounds, bounds), loss="soft_l1", f_scale=0.02, method="trf"
    )
    theta = solution.x
    fitted = raw + design @ theta
    per_block = {kind: float(theta[2 + 2 * i]) for i, kind in enumerate(kinds)}
    per_token = {kind: float(theta[3 + 2 * i]) for i, kind in enumerate(kinds)}
    return Calibration(
        **dict(zip(KEY_FIELDS, shape_key(spec, batch), strict=True)),
        scale=float(theta[0]),
        offset_ms=float(theta[1]),
        per_block_ms=per_block,
        per_token_ms=per_token,
        configs=len(raw),
        seed=seed,
        fit_mape=float(np.mean(np.abs(fitted - measured) / measured)),
        raw_bias=float(np.median((raw - measured) / measured)),
        created=datetime.now(timezone.utc),
    )


def trust(table: LatencyTable, spec: ModelSpec, batch: int) -> str:
    """How far a budget priced by `table` for `spec` at `batch` can be trusted, in a line."""
    kind = table.device.kind
    calibration = calibration_for(table, spec, batch)
    if calibration is not None and calibration.check is not None:
        check = calibration.check
        return (
            f"measured and calibrated end to end: {100 * check.within_10pct:.0f}% of {check.configs} fresh pruned "
            f"models within +-10% of the prediction, bias {100 * check.bias:+.1f}%, 95% within "
            f"+{100 * check.under_p95:.1f}% over it"
        )
    if kind == "fitted":
        return table.device.notes.split(". ")[0] or "fitted to measured timings"
    if kind == "analytic":
        return "specifications only: an analytic model that ranks configs; its milliseconds are not measured"
    return f"{kind} table, not calibrated end to end: its parts are measured, whole models were not checked"
