"""Fit an analytic device model's free parameters to a few measured end-to-end timings.

Each timing is a dense ViT's forward pass; the analytic model prices it as its table would: the
embedding, `depth` x (attention half + MLP half) and the head at the row's tokens and batch (the
parts of the `model` entry that `latency_models.profiling.plan` makes, each priced once by
`model.cost`). What a fit may move are the parameters a vendor's specification does not pin, each
within its physical range (`FREE`): for a phone CPU the achieved share of the SIMD peak per kind of
op, the share of the DRAM peak, the per-op overhead; for an FPGA accelerator the achieved clock,
the GEMM array's and the DMA's achieved shares, the control cycles per op. The specifications
(cores, clocks, SIMD width, array size, bandwidth peaks) stay as the preset cites them.

The fit is a robust least squares (`scipy.optimize.least_squares`, trust-region reflective, box
bounds = the physical ranges) in log parameters, on log-ratio residuals log(predicted / measured):
a timing 3% off weighs one unit (`DATA_SIGMA`), and beyond that counts linearly (soft-L1 loss), so
one bad timing does not drag the rest. A handful of timings cannot pin five parameters, so the
preset's values act as a prior, as residuals of their own (no robust loss on them):

- the parameters marked `common` (the efficiencies) move together by a common factor, free within
  their bounds (a device may run many times below its preset, as phones do against the peak of
  their datasheets: nothing but the timings says by how much); how far each moves apart from that
  factor is held to its `sigma`, because an analytic model's *relative* costs are what it gets
  right;
- the others (overhead, clock) are held to the preset by their own `sigma`.

One timing then sets the common factor; three or more also shape the ratios between kinds of op
where the models' mixes of op differ. The fit is deterministic (it starts at the preset). Its error
is reported per timing, and the leave-one-model-out error refits without each model's timings
(one architecture at one resolution, all its batch sizes: `TimingRow.model_id`) and predicts them.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from latency_models.analytic import FpgaParams, MobileCpuParams, analytic_model
from latency_models.fitting.timings import TimingRow
from latency_models.profiling import composite_parts, entry_id

__all__ = ["DATA_SIGMA", "FREE", "Fit", "Free", "fit", "free_parameters", "predict"]

DATA_SIGMA = 0.03
"""Log-ratio residual of one timing that weighs one unit: the run-to-run spread of an end-to-end
timing on a phone or a board, a few percent (assumption)."""


@dataclass(frozen=True)
class Free:
    """A parameter a fit may move, in log space, within [lower, upper] (x the preset's value if `relative`)."""

    name: str
    lower: float
    upper: float
    sigma: float
    """Prior width in log units: how far from the preset (or, if `common`, from the common factor)."""
    common: bool = False
    """Moves with the device's common factor (the efficiencies of one device scale together)."""
    relative: bool = False
    integer: bool = False
    """Stored as a whole number (rounded after the fit)."""

    def bounds(self, base: float) -> tuple[float, float]:
        return (self.lower * base, self.upper * base) if self.relative else (self.lower, self.upper)


EFFICIENCY = (0.02, 1.0)
"""Achieved share of a peak: at most all of it; at least 2% (below that, the preset's hardware or
core configuration is not what ran)."""

FREE: dict[type, tuple[Free, ...]] = {
    MobileCpuParams: (
        Free("gemm_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        Free("attention_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        Free("elementwise_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        Free("bandwidth_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        # From 0.1 us (no overhead to speak of: ~20 us over a ViT-S's ~200 ops) to 200 us per op (40 ms
        # over a ViT-S: far above any runtime's dispatch and thread-pool cost; a fit that wants more is
        # explaining something else, e.g. one timing the model cannot represent, and says so).
        Free("op_overhead_us", 0.1, 200.0, sigma=math.log(4.0)),
    ),
    FpgaParams: (
        # The clock a design closes timing at: within a quarter and twice the planned one (assumption).
        Free("clock_mhz", 0.25, 2.0, sigma=math.log(1.5), relative=True),
        Free("array_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        Free("ddr_efficiency", *EFFICIENCY, sigma=math.log(2.0), common=True),
        # 1 cycle to 1e5 cycles (0.5 ms at 200 MHz) of control per op.
        Free("layer_overhead_cycles", 1.0, 1e5, sigma=math.log(4.0), integer=True),
    ),
}
"""The free parameters of each analytic model, in the order they are reported."""


def free_parameters(params: MobileCpuParams | FpgaParams) -> tuple[Free, ...]:
    for kind, free in FREE.items():
        if isinstance(params, kind):
            return free
    raise TypeError(f"no free parameters are defined for {type(params).__name__}")


class _Dense:
    """The dense models of some timings, as the table entries their cost is the sum of."""

    def __init__(self, rows: list[TimingRow]) -> None:
        self.keys: dict[str, dict] = {}
        self.counts: list[Counter] = []
        for row in rows:
            counts: Counter = Counter()
            for part in composite_parts(row.key()):
                self.keys.setdefault(entry_id(part), part)
                counts[entry_id(part)] += 1
            self.counts.append(counts)

    def ms(self, params: MobileCpuParams | FpgaParams) -> np.ndarray:
        model = analytic_model(params)
        cost = {key_id: model.cost(key) for key_id, key in self.keys.items()}
        return np.array([sum(cost[k] * n for k, n in counts.items()) for counts in self.counts])


def predict(params: MobileCpuParams | FpgaParams, rows: list[TimingRow]) -> list[float]:
    """Milliseconds of each row's dense model on the device `params` describe."""
    return [float(ms) for ms in _Dense(rows).ms(params)]


def _updated(base, free: tuple[Free, ...], values: np.ndarray, validate: bool = False):
    update = {f.name: float(v) for f, v in zip(free, values, strict=True)}
    if not validate:
        return base.model_copy(update=update)  # unvalidated: the solver's trial points, within bounds
    update = {f.name: round(update[f.name]) if f.integer else update[f.name] for f in free}
    return type(base).model_validate({**base.model_dump(), **update})


def _soft_l1_data(count: int):
    """soft-L1 on the first `count` residuals (the timings), plain squares on the prior's."""

    def loss(z: np.ndarray) -> np.ndarray:
        rho = np.empty((3, z.size))
        rho[0], rho[1], rho[2] = z, 1.0, 0.0
        t = 1.0 + z[:count]
        rho[0, :count] = 2.0 * (np.sqrt(t) - 1.0)
        rho[1, :count] = 1.0 / np.sqrt(t)
        rho[2, :count] = -0.5 * t**-1.5
        return rho

    return loss


def _solve(base, free: tuple[Free, ...], rows: list[TimingRow]):
    """The fitted parameters (validated, rounded where whole), whether the solver converged, and
    which bound holds each parameter back (-1 lower, 1 upper, 0 none: `least_squares`' active mask)."""
    dense = _Dense(rows)
    measured = np.log([row.ms for row in rows])
    bounds = [f.bounds(float(getattr(base, f.name))) for f in free]
    lower = np.log([b[0] for b in bounds])
    upper = np.log([b[1] for b in bounds])
    start = np.clip(np.log(np.maximum([float(getattr(base, f.name)) for f in free], 1e-300)), lower, upper)
    common = np.array([f.common for f in free])
    sigma = np.array([f.sigma for f in free])

    def residuals(x: np.ndarray) -> np.ndarray:
        data = (np.log(dense.ms(_updated(base, free, np.exp(x)))) - measured) / DATA_SIGMA
        delta = x - start
        shared = float(delta[common].mean()) if common.any() else 0.0
        prior = np.where(common, delta - shared, delta) / sigma
        return np.concatenate([data, prior])

    result = least_squares(
        residuals,
        start,
        bounds=(lower, upper),
        loss=_soft_l1_data(len(rows)),
        method="trf",
        xtol=1e-10,
        ftol=1e-10,
        gtol=1e-10,
        max_nfev=500 * (len(free) + 1),
    )
    x = np.clip(result.x, lower, upper)
    active = tuple(int(a) for a in result.active_mask)
    return _updated(base, free, np.exp(x), validate=True), bool(result.success), active


@dataclass(frozen=True)
class Fit:
    """A fitted device: the preset it started from, the fitted parameters, and how well they fit."""

    base: MobileCpuParams | FpgaParams
    params: MobileCpuParams | FpgaParams
    free: tuple[Free, ...]
    rows: tuple[TimingRow, ...]
    base_ms: tuple[float, ...]
    """The preset's prediction of each timing, unfitted."""
    fitted_ms: tuple[float, ...]
    lomo_ms: tuple[float | None, ...]
    """Each timing predicted by a fit without its model's timings (None: no other model to fit on)."""
    converged: bool
    active: tuple[int, ...] = ()
    """Per free parameter, the bound that holds the fit back: -1 lower, 1 upper, 0 none."""

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(row.model_id for row in self.rows))

    def errors(self, which: str = "fitted") -> list[float | None]:
        """Signed relative error of each row's `fitted`, `base` or `lomo` prediction."""
        predicted = {"fitted": self.fitted_ms, "base": self.base_ms, "lomo": self.lomo_ms}[which]
        return [None if p is None else p / row.ms - 1.0 for p, row in zip(predicted, self.rows, strict=True)]

    def at_bound(self) -> list[str]:
        """Free parameters that a bound of their physical range holds back (the timings ask for a
        value beyond it), with which bound."""
        return [
            f"{f.name} = {float(getattr(self.params, f.name)):g} ({'lower' if side < 0 else 'upper'} bound)"
            for f, side in zip(self.free, self.active, strict=False)
            if side
        ]

    def summary(self) -> dict:
        """Timings, models, median and worst |error| of the fit, of leave-one-model-out, of the preset."""
        out: dict = {"timings": len(self.rows), "models": len(self.models)}
        for which, label in (("fitted", "fit"), ("lomo", "lomo"), ("base", "base")):
            errors = [abs(e) for e in self.errors(which) if e is not None]
            out[f"{label}_median_error"] = round(statistics.median(errors), 6) if errors else None
            out[f"{label}_worst_error"] = round(max(errors), 6) if errors else None
        out["at_bound"] = self.at_bound()
        out["converged"] = self.converged
        return out


def fit(
    base: MobileCpuParams | FpgaParams,
    rows: list[TimingRow],
    *,
    free: tuple[Free, ...] | None = None,
    lomo: bool = True,
) -> Fit:
    """Fit `base`'s free parameters to `rows` (all of one core configuration and dtype, which `base`
    already describes); with `lomo`, also refit without each model's rows and predict them."""
    if not rows:
        raise ValueError("no timings to fit")
    free = free_parameters(base) if free is None else free
    params, converged, active = _solve(base, free, rows)
    held_out: dict[int, float] = {}
    models = list(dict.fromkeys(row.model_id for row in rows))
    if lomo and len(models) > 1:
        for model in models:
            train = [row for row in rows if row.model_id != model]
            test = [i for i, row in enumerate(rows) if row.model_id == model]
            refit, *_ = _solve(base, free, train)
            for i, ms in zip(test, predict(refit, [rows[i] for i in test]), strict=True):
                held_out[i] = ms
    return Fit(
        base=base,
        params=params,
        free=free,
        rows=tuple(rows),
        base_ms=tuple(predict(base, rows)),
        fitted_ms=tuple(predict(params, rows)),
        lomo_ms=tuple(held_out.get(i) for i in range(len(rows))),
        converged=converged,
        active=active,
    )
