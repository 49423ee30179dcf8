"""What a search maximises on the calibration images: its objective.

Top-1 on a few hundred images is noisy (at 500 images one image is 0.2 points and one standard error
about 2), so the best of a hundred trials by calibration top-1 is partly the luckiest. Fidelity to
the dense model needs no labels and varies far less from image to image: KL divergence of the
logits, or top-1 agreement. Measured on held-out images (bench/results/objective_choice.md), the
model a KL-scored search picks loses 0.01 points to the best it could have picked, agreement 0.03,
top-1 0.17; so KL is the default.

Every objective is a score in percent to maximise, so that a trial over budget (never scored) is 0
whatever the objective: KL enters as fidelity 100·exp(-KL), 100 for the dense model itself, a
monotone map that leaves the Pareto front exactly the front of KL. Whatever the objective, every
trial also records top-1 (with labels), agreement and KL, each with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pruning.metrics import EvalResult

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "STORED_OBJECTIVE", "Objective", "objective"]


@dataclass(frozen=True)
class Objective:
    name: str
    short: str
    """The score's name in a sentence: "calibration {short} 95.1%"."""
    label: str
    """The score's name on the study (Optuna tools show it) and on plots."""
    help: str
    score: Callable[[EvalResult], float]
    standard_error: Callable[[EvalResult], float]
    """One standard error of `score` over the images (cheap-first evaluation stops at two)."""


def _fidelity(metrics: EvalResult) -> float:
    return 100.0 * math.exp(-metrics.kl)


def _top1(metrics: EvalResult) -> float:
    # An unlabelled calibration set has no top-1: agreement with the dense model's top-1 stands in.
    return metrics.top1 if metrics.top1 is not None else metrics.agreement


def _top1_se(metrics: EvalResult) -> float:
    return metrics.top1_se if metrics.top1 is not None else metrics.agreement_se


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "kl",
            "fidelity 100·exp(-KL)",
            "calibration fidelity % (100·exp(-KL to dense))",
            "KL divergence from the dense model's predictions, as fidelity 100·exp(-KL): label-free, least noisy",
            _fidelity,
            # Delta method: d(100·exp(-KL)) = fidelity · dKL.
            lambda m: _fidelity(m) * m.kl_se,
        ),
        Objective(
            "agreement",
            "agreement",
            "calibration agreement with dense %",
            "share of images whose top-1 class is the dense model's: label-free",
            lambda m: m.agreement,
            lambda m: m.agreement_se,
        ),
        Objective(
            "top1",
            "top-1",
            "calibration top-1 %",
            "top-1 against the labels (agreement for unlabelled images): noisiest on few images",
            _top1,
            _top1_se,
        ),
    )
}

DEFAULT_OBJECTIVE = "kl"

STORED_OBJECTIVE = "top1"
"""What a job stored before jobs named their objective was ranked by."""


def objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}: choose {', '.join(OBJECTIVES)}") from None
