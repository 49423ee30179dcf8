"""A job's trials as plain records: what a reader outside the search layer may know of a trial.

The trial objective (`search.trials`) keeps its results in Optuna user attributes and constraints
whose names are its own business; the service, the dashboard and reports read trials only through
`trial_records`, so those names can change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.job import FLOAT
from search.pareto import pareto_trials
from search.trials import calib_accuracy, trial_float_blocks, trial_precision

__all__ = ["TrialRecord", "trial_records"]


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str
    """Optuna's trial state in lower case: waiting, running, complete, pruned or fail."""
    params: dict[str, Any]
    """The sampler's parameters."""
    config: dict[str, Any] | None
    """The PruneConfig (JSON) the parameters stand for, once the trial has built it."""
    calib_accuracy: float | None
    """Calibration top-1 (%) of a complete trial (0 for one over budget, which is never scored)."""
    score: float | None
    """The job's objective on the calibration images (`search.objectives`: a percent, higher is
    better), what the search ranks trials by; None before the trial completes."""
    predicted_ms: float | None
    """Predicted latency on the job's device, once the trial is priced."""
    evaluated: bool
    """Scored on images (False for a config priced over budget)."""
    feasible: bool
    """Complete and within the latency budget."""
    pareto: bool
    """On the Pareto front of the trials so far (score up, predicted latency down)."""
    precision: str = FLOAT
    """fp32, or the quantisation the config was scored and priced at."""
    float_blocks: tuple[int, ...] = ()
    """The blocks a quantised trial kept in fp32."""


def trial_records(storage: str | optuna.storages.BaseStorage, study_name: str) -> list[TrialRecord]:
    """Every trial of a job's study so far, by number; none while the study does not exist yet (queued)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return []
    front = {t.number for t in pareto_trials(study)}
    return [_record(t, t.number in front) for t in study.get_trials(deepcopy=False)]


def _record(trial: FrozenTrial, pareto: bool) -> TrialRecord:
    complete = trial.state == TrialState.COMPLETE
    return TrialRecord(
        number=trial.number,
        state=trial.state.name.lower(),
        params=trial.params,
        config=trial.user_attrs.get("config"),
        calib_accuracy=calib_accuracy(trial),
        score=trial.values[0] if complete else None,
        predicted_ms=trial.values[1] if complete else trial.user_attrs.get("predicted_ms"),
        evaluated=bool(trial.user_attrs.get("evaluated")),
        feasible=complete and all(v <= 0 for v in trial.constraints.values()),
        pareto=pareto,
        precision=trial_precision(trial),
        float_blocks=tuple(trial_float_blocks(trial)),
    )
