"""The one loop that drives searches, for `vitprune search`, `vitprune worker` and the service's workers.

A process drives a job to its end with `SearchDriver.run`: it creates the job's study (or finds it
again and resumes it), fails the trials of workers that died (which re-enqueues them), runs waiting
trials until none is left, waits while other workers still hold trials, and materialises the Pareto
models. A process without a job of its own helps with `SearchDriver.join_once`: one pass over the
studies in the storage, running the waiting trials of each.

What differs between entry points is a `SearchHooks` object: how progress is shown (a progress bar,
a job row), whether to stop (a job cancelled or its lease lost), and where the results go.
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

from latency_models.registry import Registry
from pruning.compute import compute_device
from search.context import JobContext, can_score
from search.job import JobSpec
from search.pareto import SearchResult, materialise
from search.study import Progress, fail_stale, make_sampler, progress, study_job, submit
from search.trials import SLOT_ATTR, TrialObjective

__all__ = ["POLL_S", "SearchDriver", "SearchHooks", "SearchStopped", "run_trials"]

logger = logging.getLogger(__name__)

POLL_S = 2.0
"""Seconds between looks at a study whose remaining trials other workers hold."""


class SearchStopped(Exception):
    """The hooks asked the driver to stop (the job was cancelled, or its lease was lost)."""


class SearchHooks:
    """What an entry point adds to the driver's loop. Each method here does nothing: override what you need."""

    show_progress: bool = False
    """Draw progress bars (tqdm) while the Pareto models are built."""

    def started(self, context: JobContext, state: Progress) -> None:
        """The job's study is ready (created, or found again and resumed); `state` is where it stands."""

    def progress(self, state: Progress) -> None:
        """After every trial this process ran, and after every pass over the waiting trials."""

    def should_stop(self) -> bool:
        """Asked after every trial and before every step; True ends the run with SearchStopped."""
        return False

    def materialising(self) -> None:
        """Every trial is finished; the Pareto models are built next."""

    def finished(self, result: SearchResult, context: JobContext) -> None:
        """The Pareto models are built and saved; record them where the entry point keeps results."""


class SearchDriver:
    """Runs searches in the Optuna storage every worker shares; counts the trials this process ran.

    `registry` resolves the device tables of new jobs, `cache_dir` keeps decoded images between runs,
    `poll_s` is how long to wait while other workers hold a job's last trials, `compute` is where this
    process scores the trials of jobs that leave it to the worker (`pruning.compute`).
    """

    def __init__(
        self,
        storage: optuna.storages.RDBStorage,
        *,
        registry: Registry | None = None,
        cache_dir: Path | None = None,
        poll_s: float = POLL_S,
        compute: str = "auto",
    ) -> None:
        compute_device(compute)  # a worker told to use a GPU it does not have says so at once
        self.compute = compute
        self.storage = storage
        self.registry = registry
        self.cache_dir = cache_dir
        self.poll_s = poll_s
        self.trials_run = 0
        self._contexts: dict[str, JobContext] = {}
        self._unusable: set[str] = set()
        self._seed = os.getpid()  # workers of one job must not propose the same configs in lockstep

    def run(
        self, job: JobSpec, out: Path, *, hooks: SearchHooks | None = None, name: str | None = None
    ) -> SearchResult:
        """Run (or resume) `job` to the end and materialise its Pareto models under `out`.

        The study is named `name`, by default after the job. Raises SearchStopped when the hooks say stop.
        """
        hooks = hooks or SearchHooks()
        started = time.perf_counter()
        compute_device(job.compute if job.compute != "auto" else self.compute)  # before any study is made
        out.mkdir(parents=True, exist_ok=True)
        study, context = submit(job, self.storage, registry=self.registry, cache_dir=self.cache_dir, name=name)
        context.compute = self.compute
        self._check(hooks)
        state = progress(study)
        hooks.started(context, state)
        hooks.progress(state)

        def report() -> None:
            hooks.progress(progress(study))

        while True:
            fail_stale(study, self.storage)  # a dead worker's trial is failed and re-enqueued here
            self.trials_run += run_trials(study, context, on_trial=report, should_stop=hooks.should_stop)
            self._check(hooks)
            state = progress(study)
            hooks.progress(state)
            if state.finished:
                break
            time.sleep(self.poll_s)  # other workers still hold trials
        hooks.materialising()
        search_s = time.perf_counter() - started
        result = materialise(study, context, out, search_s=search_s, show_progress=hooks.show_progress)
        self._check(hooks)
        hooks.finished(result, context)
        return result

    def join_once(
        self,
        skip: Callable[[str], bool] = lambda name: False,
        should_stop: Callable[[str], bool] | None = None,
    ) -> int:
        """One pass over the vitprune studies in the storage (those `skip` rejects by name left alone),
        running their waiting trials; returns how many this pass ran.

        `should_stop(name)` is asked after every trial of study `name`. A job's context is kept for the
        next pass; a job whose files this machine cannot read is left to other workers.
        """
        ran = 0
        for name in optuna.get_all_study_names(self.storage):
            if name in self._unusable or skip(name):
                continue
            study = optuna.load_study(study_name=name, storage=self.storage)
            job = study_job(study)
            if job is None or not can_score(job, self.compute):  # e.g. a job scored on GPUs, on a CPU worker
                continue
            fail_stale(study, self.storage)
            if progress(study).waiting == 0:
                continue
            sampler = make_sampler(job.sampler, self._seed)
            study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
            context = self._context(name, study)
            if context is not None:
                stop = None if should_stop is None else (lambda name=name: should_stop(name))
                ran += run_trials(study, context, should_stop=stop)
        self.trials_run += ran
        return ran

    def _check(self, hooks: SearchHooks) -> None:
        if hooks.should_stop():
            raise SearchStopped

    def _context(self, name: str, study: optuna.Study) -> JobContext | None:
        if name not in self._contexts:
            logger.info("joining %s", name)
            try:
                self._contexts[name] = JobContext.from_study(study, cache_dir=self.cache_dir)
                self._contexts[name].compute = self.compute
            except (ValueError, OSError) as error:  # e.g. the job's weights or images are not on this machine
                logger.error("cannot work on %s here: %s", name, error)
                self._unusable.add(name)
                return None
        return self._contexts[name]


def run_trials(
    study: optuna.Study,
    context: JobContext,
    on_trial: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Run this job's waiting trials in this process until none is left; returns how many it ran.

    `on_trial` is called after every trial; `should_stop` is asked after every trial (e.g. the job
    was cancelled), and True ends the run.
    """
    job = context.job
    objective = TrialObjective(
        context.space,
        context.predictor,
        context.evaluator,
        batch=job.batch,
        budget_ms=context.budget_ms,
        cheap_images=job.cheap_first,
        objective_name=job.objective,
        predictors=context.predictors,
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
