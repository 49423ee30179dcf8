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
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from latency_models.registry import Registry
from pruning.bundle import WEIGHTS_FILE
from search import JobContext, JobInputError, JobSpec, submit
from search.pareto import SearchResult, materialise
from search.run import StudyJoiner, run_trials
from search.study import fail_stale, open_storage, progress
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

class JobLost(Exception):
    """The job was cancelled, or another worker took it over after this one stalled."""


class ServiceWorker:
    def __init__(self, settings: Settings, engine: Engine, registry: Registry | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry or Registry(settings.profiles)
        self.store = ArtifactStore(settings.artifacts)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.storage = open_storage(settings.database_url, settings.heartbeat_s, settings.grace_s)
        self.joiner = StudyJoiner(self.storage, cache_dir=self.store.path("cache"))
        self.trials_run = 0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> int:
        """Work until `stop` is set (or idle for `idle_exit_s`); returns the number of jobs finished."""
        stop = stop or threading.Event()
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
        job_id = claim_job(self.engine, self.id, self.settings.lease_s)
        if job_id is not None:
            return True, int(self.run_job(job_id))
        helped = self.joiner.run_once(skip=self._not_helpable, should_stop=self._stop_helping)
        self.trials_run += helped
        return helped > 0, 0

    def run_job(self, job_id: int) -> bool:
        """Run a claimed job to its end; True when this worker finished it (any final state)."""
        with Session(self.engine) as session:
            row = session.get(Job, job_id)
            spec, study_name = JobSpec.model_validate(row.spec), row.study_name
        logger.info("job %d: %s (%s)", job_id, row.name, study_name)
        self._seen(job_id)
        lease = _Lease(self, job_id)
        try:
            with lease:
                self._search(job_id, spec, study_name, lease)
            return True
        except JobLost:
            logger.info("job %d is no longer this worker's (cancelled or taken over)", job_id)
            return False
        except DATABASE_DOWN:
            raise  # not the job's fault: it must not be marked failed (and cannot be, right now)
        except (JobInputError, ValueError, OSError) as error:  # the user's input: say what is wrong
            logger.warning("job %d failed: %s", job_id, error)
            return finish(self.engine, job_id, self.id, "failed", str(error))
        except Exception as error:  # a bug must fail the job it hit, not kill the worker serving all jobs
            logger.exception("job %d failed", job_id)
            return finish(self.engine, job_id, self.id, "failed", f"internal error: {type(error).__name__}: {error}")

    # -- one job ----------------------------------------------------------------------------------

    def _search(self, job_id: int, spec: JobSpec, study_name: str, lease: _Lease) -> None:
        out = self.store.job_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        study, context = submit(
            spec, self.storage, registry=self.registry, cache_dir=self.store.path("cache"), name=study_name
        )
        lease.check()
        notes = _skipped_images(context)
        update_job(
            self.engine, job_id, self.id, budget_ms=context.budget_ms, dense_ms=context.dense_ms, notes=notes or None
        )
        started, done_at_start = time.monotonic(), progress(study).done

        def report() -> None:
            state = progress(study)
            rate = (state.done - done_at_start) / max(time.monotonic() - started, 1e-6)
            remaining = spec.trials - state.done
            update_job(
                self.engine,
                job_id,
                self.id,
                trials_done=state.done,
                feasible=state.feasible,
                best_accuracy=state.best_accuracy,
                eta_s=round(remaining / rate, 1) if rate > 0 else None,
            )

        report()
        while True:
            fail_stale(study, self.storage)  # a dead helper's trial is failed and re-enqueued here
            self.trials_run += run_trials(study, context, on_trial=report, should_stop=lease.lost.is_set)
            lease.check()
            report()
            if progress(study).finished:
                break
            time.sleep(self.settings.poll_s)  # helpers still hold trials
        update_job(self.engine, job_id, self.id, status="materialising", eta_s=None)
        result = materialise(study, context, out, search_s=time.monotonic() - started, show_progress=False)
        lease.check()
        self._record(job_id, result, out)
        update_job(self.engine, job_id, self.id, dense=_dense(result, context))
        if not finish(self.engine, job_id, self.id, "done"):
            raise JobLost

    def _record(self, job_id: int, result: SearchResult, out: Path) -> None:
        """One row per Pareto model; a job materialised again (after a crash) adds none twice."""
        rows = []
        for model in result.models:
            bundle = out / model["bundle"]
            rows.append(
                {
                    "job_id": job_id,
                    "trial": model["trial"],
                    "config": model["config"],
                    "config_key": model["config_key"],
                    "metrics": model,
                    "val_top1": model["val"]["top1"],
                    "calib_accuracy": model["calib_accuracy"],
                    "predicted_ms": model["predicted_ms"],
                    "measured_ms": model.get("measured_ms"),
                    "params": model["params"],
                    "gflops": model["gflops"],
                    "path": self.store.relative(bundle),
                    "sha256": sha256_of(bundle / WEIGHTS_FILE),
                    "pareto": True,
                }
            )
        if not rows:
            return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with Session(self.engine) as session, session.begin():
            session.execute(dialect.insert(PrunedModel).values(rows).on_conflict_do_nothing())

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

    def _seen(self, job_id: int | None) -> None:
        with Session(self.engine) as session, session.begin():
            updated = session.execute(
                update(Worker)
                .where(Worker.id == self.id)
                .values(seen_at=db_now(), job_id=job_id, trials_run=self.trials_run)
            ).rowcount
            if not updated:
                session.add(Worker(id=self.id, host=socket.gethostname(), pid=os.getpid(), job_id=job_id))


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


def _dense(result: SearchResult, context: JobContext) -> dict:
    """The dense model as the dashboard draws it beside the pruned ones."""
    structure = [{"tokens_in": b.tokens_in, "heads": b.heads, "mlp_hidden": b.mlp_hidden} for b in context.spec.blocks]
    figures = {k: result.dense.get(k) for k in ("val", "predicted_ms", "measured_ms", "params", "gflops")}
    return figures | {"blocks": structure, "num_prefix_tokens": context.spec.num_prefix_tokens}


class _Lease:
    """Renews a job's lease from a background thread while the job runs; `lost` is set when renewal fails."""

    def __init__(self, worker: ServiceWorker, job_id: int) -> None:
        self.worker, self.job_id = worker, job_id
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost

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
