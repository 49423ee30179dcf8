"""The Optuna study of a job, in the storage every worker shares.

A job's study is named after the job (`JobSpec.study_name`), so running the same job again finds
it and continues. The study carries what a worker on another machine needs (the job, the budget
in milliseconds, the device's latency table, head / channel importance) as study attributes,
and holds exactly `job.trials` enqueued slots: workers only run enqueued trials, so the number
of trials never exceeds what was asked however many workers join. A worker that dies stops
sending heartbeats; its trial is then failed and re-enqueued (same parameters) by whichever
process next checks for stale trials.

`submit` creates a job's study with its slots, or finds it again and gives the slots of an
interrupted run another go.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from latency_models.registry import Registry
from search.context import JobContext
from search.job import JobSpec
from search.objectives import objective
from search.trials import SLOT_ATTR, calib_accuracy, is_pareto_candidate

__all__ = [
    "DIRECTIONS",
    "Progress",
    "add_slots",
    "fail_stale",
    "make_sampler",
    "metric_names",
    "open_storage",
    "progress",
    "retried_numbers",
    "retry_callback",
    "retry_interrupted",
    "study_job",
    "submit",
]

DIRECTIONS = ("maximize", "minimize")
"""The job's objective score up (`search.objectives`), predicted latency down."""


def metric_names(job: JobSpec) -> list[str]:
    """The two values' names, stored on every study: optuna-dashboard and other Optuna tools show them
    instead of "Objective 0" and "Objective 1"."""
    return [objective(job.objective).label, "predicted latency ms"]


HEARTBEAT_S = 10
GRACE_S = 45
"""A running trial without a heartbeat for this long belongs to a dead worker."""
RETRIES = 3
STORAGE_ATTEMPTS = 5


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> RDBStorage:
    """Optuna's RDB storage at `url` (sqlite:///file.db or postgresql+psycopg://...), with heartbeats."""
    sqlite = url.startswith("sqlite")
    # SQLite ignores SELECT ... FOR UPDATE, with which Optuna claims a waiting trial: two workers
    # could both take one. Transactions that start with BEGIN IMMEDIATE take the write lock first.
    engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with _stable_enough():
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s,
                    heartbeat_stale_trial_callback=retry_callback(),
                )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            # Processes that start together on a new database race to create Optuna's tables (PostgreSQL
            # says "type ... already exists" to the loser); the loser finds them made when it tries again.
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Re-enqueues a failed slot with the same parameters, at most RETRIES times."""
    with _stable_enough():
        return RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)


def fail_stale(study: optuna.Study, storage: RDBStorage) -> None:
    """Fail (and so re-enqueue) the running trials of workers that died.

    Optuna finds trials whose heartbeat stopped. A worker can also die after it claimed a trial
    and before the trial's first heartbeat (the sampler runs in between); such a trial has no
    heartbeat at all and is failed once it has been running for twice the grace period (its start
    time comes from the worker's clock, which may differ from ours).
    """
    with _stable_enough():
        fail_stale_trials(study)
    now = datetime.now()
    limit = 2 * storage.grace_period
    old = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > limit
    ]
    if not old:
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = {storage.get_trial_id_from_study_id_trial_number(study_id, t.number): t for t in old}
    query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
        sqlalchemy.bindparam("ids", expanding=True)
    )
    with storage.engine.connect() as connection:
        beating = {row[0] for row in connection.execute(query, {"ids": list(ids)})}
    for trial_id in set(ids) - beating:
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another process failed it first
        with _stable_enough():
            retry_callback()(study, storage.get_trial(trial_id))


@contextmanager
def _stable_enough() -> Iterator[None]:
    # Heartbeats and their retry callback have been in Optuna since 2.8 and are what we rely on;
    # their "experimental" label is noise for our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The job's sampler. Constraints (the budget) reach every sampler through `trial.set_constraint`."""
    if name == "tpe":
        # constant_liar: parallel workers see each other's running trials and spread out.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}: choose tpe, nsga2 or gp")


def study_job(study: optuna.Study) -> JobSpec | None:
    """The job a study belongs to, or None for a study vitprune did not create."""
    raw = study.user_attrs.get("job")
    return JobSpec.stored(raw) if raw else None


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
    continues it). A new job is checked here (model options, images apart, budget reachable);
    InfeasibleJobError, JobInputError and ModelOptionsError leave no study behind.
    """
    name = name or job.study_name()
    existing = name in optuna.get_all_study_names(storage)
    context = None if existing else JobContext.prepare(job, registry, cache_dir=cache_dir)
    sampler = make_sampler(job.sampler, job.seed)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=DIRECTIONS, sampler=sampler, load_if_exists=True
    )
    if study.metric_names != metric_names(job):  # also names the values of studies made before they were
        with _stable_enough():
            study.set_metric_names(metric_names(job))
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


def add_slots(study: optuna.Study, job: JobSpec, warm_starts: list[dict]) -> int:
    """Enqueue trials until the job holds `job.trials` slots; warm starts fill the first ones.

    Returns how many slots were added (0 when the study already has them all, e.g. on a rerun).
    """
    existing = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(SLOT_ATTR) and not t.system_attrs.get("retry_history")
    ]
    missing = job.trials - len(existing)
    already = {json.dumps(t.params, sort_keys=True) for t in existing}
    starts = [p for p in warm_starts if json.dumps(p, sort_keys=True) not in already]
    for index in range(max(0, missing)):
        params = starts[index] if index < len(starts) else {}
        study.enqueue_trial(params, user_attrs={SLOT_ATTR: True})
    return max(0, missing)


@dataclass
class Progress:
    done: int
    running: int
    waiting: int
    feasible: int
    evaluated: int
    best_accuracy: float | None
    """Best calibration top-1 among evaluated trials within budget, whatever the objective."""

    @property
    def finished(self) -> bool:
        return self.running == 0 and self.waiting == 0


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Failed trials whose slot was handed to a retry (the retry counts instead)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def progress(study: optuna.Study) -> Progress:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    slots = [t for t in trials if t.user_attrs.get(SLOT_ATTR) and t.number not in retried]
    done = [t for t in slots if t.state.is_finished()]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    return Progress(
        done=len(done),
        running=sum(t.state == TrialState.RUNNING for t in slots),
        waiting=sum(t.state == TrialState.WAITING for t in slots),
        feasible=sum(all(v <= 0 for v in t.constraints.values()) for t in complete),
        evaluated=sum(bool(t.user_attrs.get("evaluated")) for t in complete),
        best_accuracy=max((calib_accuracy(t) for t in complete if is_pareto_candidate(t)), default=None),
    )
