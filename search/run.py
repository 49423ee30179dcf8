"""The command line's searches: `vitprune search` and `vitprune worker`, both on the one `SearchDriver`.

`run_search` is what `vitprune search` does: it is itself a worker, waits for trials that other
workers hold, then materialises the Pareto models, with a progress bar. `run_worker` is what
`vitprune worker` does: it joins any job in the storage that has trials left.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from latency_models.registry import Registry
from search.context import JobContext
from search.driver import POLL_S, SearchDriver, SearchHooks
from search.job import JobSpec
from search.pareto import SearchResult
from search.study import GRACE_S, HEARTBEAT_S, Progress, open_storage

__all__ = ["ProgressBar", "run_search", "run_worker"]


def run_search(
    job: JobSpec,
    storage_url: str,
    out: Path,
    *,
    registry: Registry | None = None,
    show_progress: bool = True,
) -> SearchResult:
    """Run (or resume) `job` to the end and materialise its Pareto models under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    driver = SearchDriver(open_storage(storage_url), registry=registry, cache_dir=out / "cache")
    return driver.run(job, out, hooks=ProgressBar(job.trials, show=show_progress))


class ProgressBar(SearchHooks):
    """A tqdm bar of a job's `trials`: done, feasible, best accuracy under budget, running (here or elsewhere)."""

    def __init__(self, trials: int, *, show: bool = True) -> None:
        self.trials = trials
        self.show_progress = show
        self.bar: tqdm | None = None

    def started(self, context: JobContext, state: Progress) -> None:
        for op, ratio in context.token_payoff().items():
            if ratio >= 1.0:  # say it plainly: the search will leave that op unused or find nothing with it
                tqdm.write(
                    f"note: {op} does not pay on {context.job.device} at batch {context.job.batch}: its best uniform "
                    f"config is priced at {ratio:.2f}x the dense model",
                    file=sys.stderr,  # stdout may carry --json
                )
        self.bar = tqdm(total=self.trials, desc="trials", unit="trial", disable=not self.show_progress)

    def progress(self, state: Progress) -> None:
        self.bar.n = state.done
        best = "-" if state.best_accuracy is None else f"{state.best_accuracy:.1f}%"
        self.bar.set_postfix(feasible=state.feasible, best_calib_top1=best, running=state.running, refresh=False)
        self.bar.refresh()

    def materialising(self) -> None:
        self.bar.close()


def run_worker(
    storage_url: str,
    *,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
    cache_dir: Path | None = None,
    idle_exit_s: float | None = None,
    poll_s: float = POLL_S,
) -> int:
    """Join every vitprune job in the storage that has trials left, until idle for `idle_exit_s`.

    Returns the number of trials this worker ran.
    """
    driver = SearchDriver(open_storage(storage_url, heartbeat_s, grace_s), cache_dir=cache_dir)
    idle_since = time.monotonic()
    while idle_exit_s is None or time.monotonic() - idle_since < idle_exit_s:
        if driver.join_once():
            idle_since = time.monotonic()
        else:
            time.sleep(poll_s)
    return driver.trials_run
