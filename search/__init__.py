"""vitprune's search layer: from a job spec to a Pareto front of materialised pruned ViTs.

It knows nothing of HTTP: a search runs the same from the command line, a worker process or a test.

Where things are:
- `job`: JobSpec, what a user asks (shared by the CLI and the REST API); `space`: the trial space.
- `context`: everything a process needs to run a job's trials, and `check_job`, the checks every
  entry point makes before a job waits in a queue (`model_options`: the model's options, depth cap).
- `study`: the job's Optuna study in the shared storage (slots, heartbeats, retries, `submit`).
- `trials`: one trial's objective (`evaluator` scores a config on the calibration images);
  `records`: a study's trials as plain records, the one way readers outside this layer see them.
- `driver`: the one loop that drives a search (`SearchDriver`), with `SearchHooks` for what an
  entry point adds; `run`: the command line's `run_search` and `run_worker` on it.
- `pareto`: the Pareto front, materialised as physically pruned models.

Names are imported on first use, so `from search import JobSpec` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning._lazy import lazy_exports

if TYPE_CHECKING:
    from search.context import InfeasibleJobError, JobContext, JobInputError, check_job
    from search.driver import SearchDriver, SearchHooks, SearchStopped, run_trials
    from search.job import JobSpec, SearchSpace
    from search.model_options import ModelOptionsError
    from search.pareto import SearchResult, pareto_trials
    from search.records import TrialRecord, trial_records
    from search.run import run_search, run_worker
    from search.study import submit

_HOMES = {
    "InfeasibleJobError": "search.context",
    "JobContext": "search.context",
    "JobInputError": "search.context",
    "check_job": "search.context",
    "SearchDriver": "search.driver",
    "SearchHooks": "search.driver",
    "SearchStopped": "search.driver",
    "run_trials": "search.driver",
    "JobSpec": "search.job",
    "SearchSpace": "search.job",
    "ModelOptionsError": "search.model_options",
    "SearchResult": "search.pareto",
    "pareto_trials": "search.pareto",
    "TrialRecord": "search.records",
    "trial_records": "search.records",
    "run_search": "search.run",
    "run_worker": "search.run",
    "submit": "search.study",
}

__all__ = [
    "InfeasibleJobError",
    "JobContext",
    "JobInputError",
    "JobSpec",
    "ModelOptionsError",
    "SearchDriver",
    "SearchHooks",
    "SearchResult",
    "SearchSpace",
    "SearchStopped",
    "TrialRecord",
    "check_job",
    "pareto_trials",
    "run_search",
    "run_trials",
    "run_worker",
    "submit",
    "trial_records",
]


__getattr__ = lazy_exports(__name__, _HOMES, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
