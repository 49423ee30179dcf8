"""vitprune's search layer: from a job spec to a Pareto front of materialised pruned ViTs.

It knows nothing of HTTP: a search runs the same from the command line, a worker process or a test.
"""

from search.context import InfeasibleJobError, JobContext, JobInputError, check_job
from search.job import JobSpec, SearchSpace
from search.pareto import SearchResult, pareto_trials
from search.run import run_search, run_trials, run_worker, submit

__all__ = [
    "InfeasibleJobError",
    "JobContext",
    "JobInputError",
    "JobSpec",
    "SearchResult",
    "SearchSpace",
    "check_job",
    "pareto_trials",
    "run_search",
    "run_trials",
    "run_worker",
    "submit",
]
