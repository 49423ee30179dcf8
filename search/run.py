"""Running a job: create or resume its study, run trials beside any other workers, materialise the front.

`run_search` is what `vitprune search` does: it is itself a worker, waits for trials that other
workers hold, then materialises the Pareto models. `run_worker` is what `vitprune worker` does:
it joins any job in the storage that has trials left.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from latency_models.registry import Registry
from search.context import JobContext
from search.job import JobSpec
from search.pareto import SearchResult, materialise
from search.study import (
    GRACE_S,
    HEARTBEAT_S,
    add_slots,
    fail_stale,
    make_sampler,
    open_storage,
    progress,
    retried_numbers,
    retry_callback,
    study_job,
)
from search.trials import SLOT_ATTR, TrialObjective

__all__ = ["StudyJoiner", "run_search", "run_trials", "run_worker", "submit"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
"""Calibration accuracy up, predicted latency down."""
POLL_S = 2.0


def run_trials(
    study: optuna.Study,
    context: JobContext,
    on_trial: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Run this job's waiting trials in this process until none is left; returns how many it ran.

    `should_stop` is asked after every trial (e.g. the job was cancelled); True ends the run.
    """
    job = context.job
    objective = TrialObjective(
        context.space,
        context.predictor,
        context.evaluator,
        batch=job.batch,
        budget_ms=context.budget_ms,
        cheap_images=job.cheap_first,
    )
    ran = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        ran += bool(trial.user_attrs.get(SLOT_ATTR))  # not a trial pruned for want of a slot
        if on_trial is not None:
            on_trial()
        if stopping() or not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()

    def stopping() -> bool:
        return should_stop is not None and should_stop()

    while not stopping() and study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            # catch: a trial that raises is recorded as failed and the search goes on.
            study.optimize(objective, callbacks=[after_trial], catch=(Exception,), gc_after_trial=False)
        except UpdateFinishedTrialError:
            # Our trial was declared dead (no heartbeat in time) and retried elsewhere; go on.
            logger.warning("a trial of %s finished elsewhere while this worker ran it", study.study_name)
    return ran


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
    started = time.perf_counter()
    storage = open_storage(storage_url)
    study, context = submit(job, storage, registry=registry, cache_dir=out / "cache")
    bar = tqdm(total=job.trials, desc="trials", unit="trial", disable=not show_progress)

    def show() -> None:
        state = progress(study)
        bar.n = state.done
        best = "-" if state.best_accuracy is None else f"{state.best_accuracy:.1f}%"
        bar.set_postfix(feasible=state.feasible, best_under_budget=best, running=state.running, refresh=False)
        bar.refresh()

    show()
    while True:
        fail_stale(study, storage)  # a dead worker's trial is failed and re-enqueued here
        run_trials(study, context, on_trial=show)
        state = progress(study)
        show()
        if state.finished:
            break
        time.sleep(POLL_S)  # other workers still hold trials
    bar.close()
    search_s = time.perf_counter() - started
    return materialise(study, context, out, search_s=search_s, show_progress=show_progress)


def submit(
    job: JobSpec,
    storage: optuna.storages.BaseStorage,
    *,
    registry: Registry | None = None,
    cache_dir: Path | None = None,
    name: str | None = None,
) -> tuple[optuna.Study, JobContext]:
    """Create the job's study with all its trial slots (or find it again), ready for any worker.

    The study is named `name`, by default after the job itself (so the same job run again
    continues it). A new job is checked here (images apart, budget reachable);
    InfeasibleJobError and JobInputError leave no study behind.
    """
    name = name or job.study_name()
    existing = name in optuna.get_all_study_names(storage)
    context = None if existing else JobContext.prepare(job, registry, cache_dir=cache_dir)
    sampler = make_sampler(job.sampler, job.seed)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=DIRECTIONS, sampler=sampler, load_if_exists=True
    )
    if context is None:
        context = JobContext.from_study(study, cache_dir=cache_dir)
        retry_interrupted(study)
    else:
        context.save_to(study)
    add_slots(study, job, context.space.warm_starts())
    return study, context


def retry_interrupted(study: optuna.Study) -> None:
    """Give failed slots (an interrupted run, a crash) another go when a job is resumed."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    retry = retry_callback()
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get(SLOT_ATTR) and trial.number not in retried:
            retry(study, trial)


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
    storage = open_storage(storage_url, heartbeat_s, grace_s)
    joiner = StudyJoiner(storage, cache_dir=cache_dir)
    ran, idle_since = 0, time.monotonic()
    while idle_exit_s is None or time.monotonic() - idle_since < idle_exit_s:
        done = joiner.run_once()
        ran += done
        if done:
            idle_since = time.monotonic()
        else:
            time.sleep(poll_s)
    return ran


class StudyJoiner:
    """Runs waiting trials of any vitprune study in a storage, keeping each job's context for next time."""

    def __init__(self, storage: optuna.storages.RDBStorage, cache_dir: Path | None = None) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.contexts: dict[str, JobContext] = {}
        self.unusable: set[str] = set()
        self.seed = os.getpid()  # workers of one job must not propose the same configs in lockstep

    def run_once(
        self,
        skip: Callable[[str], bool] = lambda name: False,
        should_stop: Callable[[str], bool] | None = None,
    ) -> int:
        """One pass over the studies (those `skip` rejects by name left alone); returns trials run.

        `should_stop(name)` is asked after every trial of study `name`.
        """
        ran = 0
        for name in optuna.get_all_study_names(self.storage):
            if name in self.unusable or skip(name):
                continue
            study = optuna.load_study(study_name=name, storage=self.storage)
            job = study_job(study)
            if job is None:
                continue
            fail_stale(study, self.storage)
            if progress(study).waiting == 0:
                continue
            sampler = make_sampler(job.sampler, self.seed)
            study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
            context = self._context(name, study)
            if context is not None:
                stop = None if should_stop is None else (lambda name=name: should_stop(name))
                ran += run_trials(study, context, should_stop=stop)
        return ran

    def _context(self, name: str, study: optuna.Study) -> JobContext | None:
        if name not in self.contexts:
            logger.info("joining %s", name)
            try:
                self.contexts[name] = JobContext.from_study(study, cache_dir=self.cache_dir)
            except (ValueError, OSError) as error:  # e.g. the job's weights or images are not on this machine
                logger.error("cannot work on %s here: %s", name, error)
                self.unusable.add(name)
                return None
        return self.contexts[name]
