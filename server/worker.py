"""The service's worker: claims jobs, runs their searches, materialises and records their Pareto models.

A worker that holds no job helps the running jobs of other workers through their Optuna studies
(Optuna hands each waiting trial to exactly one process), and stops helping as soon as a job is
queued, so new jobs never wait behind long searches. `vitprune serve` runs one worker in-process;
`vitprune worker` runs more, on this or other machines sharing the database and artifact store.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from latency_models.calibration import trust
from latency_models.registry import Registry
from pruning.bundle import WEIGHTS_FILE
from pruning.compute import compute_device, compute_name
from search.context import JobContext, JobInputError
from search.driver import SearchDriver, SearchHooks, SearchStopped
from search.job import JobSpec
from search.pareto import SearchResult
from search.study import Progress, open_storage
from server.api.paths import public_message
from server.db.engine import db_now
from server.db.models import Job, PrunedModel, Worker
from server.jobs import claim_job, finish, renew_lease, update_job
from server.settings import Settings
from server.store import ArtifactStore, sha256_of

__all__ = ["ServiceWorker"]

logger = logging.getLogger(__name__)

DATABASE_DOWN = (OperationalError, InterfaceError)
"""What SQLAlchemy raises when the database cannot be reached (as opposed to a query that is wrong)."""
MAX_BACKOFF_S = 30.0


class JobLost(SearchStopped):
    """The job was cancelled, or another worker took it over after this one stalled."""


class ServiceWorker:
    def __init__(self, settings: Settings, engine: Engine, registry: Registry | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry or Registry(settings.profiles)
        self.store = ArtifactStore(settings.artifacts)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.storage = open_storage(settings.database_url, settings.heartbeat_s, settings.grace_s)
        self.driver = SearchDriver(
            self.storage,
            registry=self.registry,
            cache_dir=self.store.path("cache"),
            poll_s=settings.poll_s,
            compute=settings.compute,
        )
        device = compute_device(settings.compute)
        self.gpu, self.compute = device.type == "cuda", compute_name(device)  # what it advertises

    @property
    def trials_run(self) -> int:
        """Trials this worker ran, of its own jobs and of the jobs it helped."""
        return self.driver.trials_run

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> int:
        """Work until `stop` is set (or idle for `idle_exit_s`); returns the number of jobs finished.

        Meanwhile the worker's row beats (GET /api/health counts the workers whose row is recent), and
        it is removed when the worker stops, so a restarted service does not count the old worker too.
        """
        with _Heartbeat(self):
            return self._work(stop or threading.Event(), idle_exit_s)

    def _work(self, stop: threading.Event, idle_exit_s: float | None) -> int:
        finished, idle_since, outages = 0, time.monotonic(), 0
        while not stop.is_set():
            try:
                worked, done = self._step()
                outages = 0
            except DATABASE_DOWN as error:
                # The database restarts or the network blips: wait and try again. A job this worker held
                # keeps its study; its lease runs out meanwhile and whoever claims it next resumes it.
                outages += 1
                delay = min(MAX_BACKOFF_S, self.settings.poll_s * 2**outages)
                logger.warning("database unreachable (%s); retrying in %.0f s", type(error).__name__, delay)
                stop.wait(delay)
                continue
            finished += done
            if worked:
                idle_since = time.monotonic()
                continue
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            stop.wait(self.settings.poll_s)
        return finished

    def _step(self) -> tuple[bool, int]:
        """Claim and run a job, else help running ones; returns (worked, jobs finished)."""
        self._seen(None)
        job_id = claim_job(self.engine, self.id, self.settings.lease_s, gpu=self.gpu)
        if job_id is not None:
            return True, int(self.run_job(job_id))
        helped = self.driver.join_once(skip=self._not_helpable, should_stop=self._stop_helping)
        return helped > 0, 0

    def run_job(self, job_id: int) -> bool:
        """Run a claimed job to its end; True when this worker finished it (any final state)."""
        with Session(self.engine) as session:
            row = session.get(Job, job_id)
            spec, study_name = JobSpec.stored(row.spec), row.study_name
        logger.info("job %d started: %r, %d trials (study %s)", job_id, row.name, spec.trials, study_name)
        self._seen(job_id)
        lease = _Lease(self, job_id)
        try:
            with lease:
                hooks = _JobHooks(self, job_id, spec.trials, lease)
                self.driver.run(spec, self.store.job_dir(job_id), hooks=hooks, name=study_name)
            return True
        except SearchStopped:
            logger.info("job %d is no longer this worker's (cancelled or taken over)", job_id)
            return False
        except DATABASE_DOWN:
            raise  # not the job's fault: it must not be marked failed (and cannot be, right now)
        except (JobInputError, ValueError, OSError) as error:  # the user's input: say what is wrong
            logger.warning("job %d failed after %s: %s", job_id, _took(lease.began), error)
            return finish(self.engine, job_id, self.id, "failed", self._public(str(error), spec))
        except Exception as error:  # a bug must fail the job it hit, not kill the worker serving all jobs
            logger.exception("job %d failed after %s: %s: %s", job_id, _took(lease.began), type(error).__name__, error)
            reason = self._public(f"internal error: {type(error).__name__}: {error}", spec)
            return finish(self.engine, job_id, self.id, "failed", reason)

    def _public(self, message: str, spec: JobSpec) -> str:
        """A failure as the job's owner may read it: the server's root and store directories hidden
        (the log keeps the whole message)."""
        return public_message(message, spec, self.settings, self.store)

    # -- helping other workers' jobs --------------------------------------------------------------

    def _job_states(self) -> dict[str, str]:
        with Session(self.engine) as session:
            return dict(session.execute(select(Job.study_name, Job.status)).all())

    def _not_helpable(self, study_name: str) -> bool:
        # Studies of CLI searches (`vitprune search`) sharing the database are helped too.
        status = self._job_states().get(study_name)
        return status is not None and status != "running"

    def _stop_helping(self, study_name: str) -> bool:
        with Session(self.engine) as session:
            queued = session.scalar(select(Job.id).where(Job.status == "queued").limit(1))
            status = session.scalar(select(Job.status).where(Job.study_name == study_name))
        return queued is not None or (status is not None and status != "running")

    def retire(self) -> None:
        """Remove this worker's row: it no longer counts as live (GET /api/health). Called when it stops."""
        try:
            with Session(self.engine) as session, session.begin():
                session.execute(delete(Worker).where(Worker.id == self.id))
        except DATABASE_DOWN:  # the row goes stale instead, and stops counting after the health window
            logger.warning("worker %s stopped; could not remove its row (database unreachable)", self.id)

    def _seen(self, job_id: int | None) -> None:
        with Session(self.engine) as session, session.begin():
            updated = session.execute(
                update(Worker)
                .where(Worker.id == self.id)
                .values(seen_at=db_now(), job_id=job_id, trials_run=self.trials_run)
            ).rowcount
            if not updated:
                host, pid = socket.gethostname(), os.getpid()
                session.add(Worker(id=self.id, host=host, pid=pid, job_id=job_id, compute=self.compute))


SKIPPED_SHOWN = 50


def _skipped_images(context: JobContext) -> dict:
    """Images that could not be read (skipped, not fatal): how many and which, per image set."""
    notes = {}
    for which in ("calib", "val"):
        skipped = context.calib.skipped if which == "calib" else context.images("val").skipped
        if skipped:
            notes[f"skipped_{which}_images"] = {
                "count": len(skipped),
                "files": [{"file": path, "reason": reason} for path, reason in skipped[:SKIPPED_SHOWN]],
            }
    return notes


def _latency_note(context: JobContext) -> dict:
    """What the job's budget rests on: the table's checked error, and the safety margin kept below it."""
    return {
        "trust": trust(context.predictor.table, context.spec, context.job.batch),
        "margin": round(context.margin, 4),
        "requested_budget_ms": round(context.requested_ms, 4),
    }


def _dense(result: SearchResult, context: JobContext) -> dict:
    """The dense model as the dashboard draws it beside the pruned ones."""
    structure = [{"tokens_in": b.tokens_in, "heads": b.heads, "mlp_hidden": b.mlp_hidden} for b in context.spec.blocks]
    figures = {k: result.dense.get(k) for k in ("val", "predicted_ms", "measured_ms", "params", "gflops")}
    return figures | {"blocks": structure, "num_prefix_tokens": context.spec.num_prefix_tokens}


class _JobHooks(SearchHooks):
    """What the service adds to the search driver for a job it holds: the job's row, its lease, its models."""

    def __init__(self, worker: ServiceWorker, job_id: int, trials: int, lease: _Lease) -> None:
        self.worker, self.job_id, self.trials, self.lease = worker, job_id, trials, lease
        self.started_at, self.done_at_start = 0.0, 0

    def _update(self, **values) -> bool:
        return update_job(self.worker.engine, self.job_id, self.worker.id, **values)

    def started(self, context: JobContext, state: Progress) -> None:
        scoring = {"compute": compute_name(context.compute_device), "dtype": context.job.score_dtype}
        notes = _skipped_images(context) | {
            "latency": _latency_note(context),
            "scoring": scoring,
            "token_payoff": context.token_payoff(),
        }
        self._update(budget_ms=context.budget_ms, dense_ms=context.dense_ms, notes=notes)
        self.started_at, self.done_at_start = time.monotonic(), state.done

    def progress(self, state: Progress) -> None:
        rate = (state.done - self.done_at_start) / max(time.monotonic() - self.started_at, 1e-6)
        remaining = self.trials - state.done
        self._update(
            trials_done=state.done,
            feasible=state.feasible,
            best_accuracy=state.best_accuracy,
            eta_s=round(remaining / rate, 1) if rate > 0 else None,
        )

    def should_stop(self) -> bool:
        return self.lease.lost.is_set()

    def materialising(self) -> None:
        self._update(status="materialising", eta_s=None)

    def finished(self, result: SearchResult, context: JobContext) -> None:
        self._record(result)
        self._update(dense=_dense(result, context))
        if not finish(self.worker.engine, self.job_id, self.worker.id, "done"):
            raise JobLost
        complete = result.trials.get("complete", 0)
        logger.info(
            "job %d done in %s: %d of %d trials complete, %d Pareto models",
            *(self.job_id, _took(self.lease.began), complete, self.trials, len(result.models)),
        )

    def _record(self, result: SearchResult) -> None:
        """One row per Pareto model; a job materialised again (after a crash) adds none twice."""
        store, engine = self.worker.store, self.worker.engine
        out = store.job_dir(self.job_id)
        rows = []
        for model in result.models:
            bundle = out / model["bundle"]
            rows.append(
                {
                    "job_id": self.job_id,
                    "trial": model["trial"],
                    "variant": model.get("variant", "searched"),  # pareto.json of older jobs: no variant
                    "config": model["config"],
                    "config_key": model["config_key"],
                    "metrics": model,
                    "val_top1": model["val"]["top1"],
                    "calib_accuracy": model.get("calib_accuracy"),  # none for a model trained on those images
                    "predicted_ms": model["predicted_ms"],
                    "measured_ms": model.get("measured_ms"),
                    "params": model["params"],
                    "gflops": model["gflops"],
                    "path": store.relative(bundle),
                    "sha256": sha256_of(bundle / WEIGHTS_FILE),
                    "pareto": True,
                }
            )
        if not rows:
            return
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        with Session(engine) as session, session.begin():
            session.execute(dialect.insert(PrunedModel).values(rows).on_conflict_do_nothing())


class _Lease:
    """Renews a job's lease from a background thread while the job runs; `lost` is set when renewal fails."""

    def __init__(self, worker: ServiceWorker, job_id: int) -> None:
        self.worker, self.job_id = worker, job_id
        self.began = time.monotonic()  # when this worker took the job: its log lines say how long it ran
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        settings = self.worker.settings
        while not self._stop.wait(settings.heartbeat_s):
            try:
                held = renew_lease(self.worker.engine, self.job_id, self.worker.id, settings.lease_s)
            except Exception:  # the database is briefly away: keep the job, try again next beat
                logger.warning("job %d: lease renewal failed, retrying", self.job_id, exc_info=True)
                continue
            if not held:
                self.lost.set()
                return


def _took(began: float) -> str:
    """Seconds since `began` (time.monotonic), as a log line says them: '95 s', '12.4 min'."""
    seconds = time.monotonic() - began
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


class _Heartbeat:
    """Keeps the worker's row recent from a background thread, whatever the worker is busy with, and
    removes the row when the worker stops: GET /api/health counts the workers whose row is recent.

    (The work loop also writes the row, with the job in hand, at every step; a trial or a materialisation
    can last longer than the health check's window, hence a thread.)
    """

    def __init__(self, worker: ServiceWorker) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.worker.retire()

    def _beat(self) -> None:
        worker = self.worker
        while not self._stop.wait(worker.settings.heartbeat_s):
            try:
                with Session(worker.engine) as session, session.begin():
                    beat = update(Worker).where(Worker.id == worker.id)
                    session.execute(beat.values(seen_at=db_now(), trials_run=worker.trials_run))
            except Exception:  # the database is briefly away: the work loop says so; beat again next time
                logger.debug("worker heartbeat failed", exc_info=True)
