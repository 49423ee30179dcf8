"""Job life cycle and leases: [preparing ->] queued -> running -> materialising -> done | failed | cancelled.

A job whose inputs are still being made (the demo's model, trained by `vitprune serve --demo`) is created as
`preparing`, so it is listed at once with its preparation's progress; no worker claims it until it is queued.

A worker claims a job atomically (PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so two workers
never wait on or take the same row; SQLite: one UPDATE, which SQLite runs under its single write
lock) and holds it by a lease it renews with the database clock. A job whose lease ran out (its
worker died) is claimed again by the next worker that looks; the search itself resumes from its
Optuna study, so nothing done is lost. Every write a worker makes is conditional on still holding
the lease, so a worker that lost its job (cancelled, or re-claimed after a stall) cannot overwrite it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, case, or_, select, true, update
from sqlalchemy.orm import Session

from search.job import JobSpec
from server.db.engine import db_after, db_now
from server.db.models import ACTIVE, FINAL, Job

__all__ = [
    "cancel_job",
    "claim_job",
    "create_job",
    "finish",
    "list_jobs",
    "model_label",
    "preparation_failed",
    "prepared",
    "renew_lease",
    "report_preparation",
    "update_job",
]

LABEL_LENGTH = 200


def model_label(spec: JobSpec) -> str:
    """The model as people should read it: the timm name, with the options the job changes (depth, width, ...),
    which make it another model than the name says."""
    if not spec.model_kwargs:
        return spec.model
    options = ", ".join(f"{key}={value}" for key, value in spec.model_kwargs.items())
    label = f"{spec.model} ({options})"
    return label if len(label) <= LABEL_LENGTH else label[: LABEL_LENGTH - 2] + "…)"


def create_job(
    session: Session, spec: JobSpec, name: str | None = None, *, label: str | None = None, preparing: bool = False
) -> Job:
    """A new job, queued; or `preparing` (with no progress yet) when its inputs are still being made."""
    job = Job(
        name=name or f"{spec.model} on {spec.device}",
        status="preparing" if preparing else "queued",
        spec=spec.model_dump(mode="json"),
        model=spec.model,
        model_label=(label or model_label(spec))[:LABEL_LENGTH],
        device=spec.device,
        compute=spec.compute.split(":")[0],  # cuda:1 asks for a GPU like cuda: it is claimed by GPU workers
        study_name="",
        trials_total=spec.trials,
    )
    session.add(job)
    session.flush()  # the id names the job's study, so two identical submissions stay two jobs
    job.study_name = f"vitprune-job-{job.id}-{spec.study_key()}"
    session.commit()
    return job


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    model: str | None = None,
    device: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model == model)
    if device:
        query = query.where(Job.device == device)
    return list(session.scalars(query))


def cancel_job(session: Session, job: Job) -> bool:
    """Cancel a job that has not finished; its worker sees it at its next lease renewal."""
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.not_in(FINAL))
        .values(status="cancelled", finished_at=db_now(), eta_s=None)
    ).rowcount
    session.commit()
    session.refresh(job)
    return bool(done)


def _claimable():
    expired = and_(Job.status.in_(ACTIVE), or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < db_now()))
    return or_(Job.status == "queued", expired)


def _for_compute(gpu: bool):
    """The jobs a worker can score, those it suits best first: a GPU worker takes the jobs that need a GPU
    first, then those left to any worker, then CPU jobs; a CPU worker never takes a job that needs a GPU."""
    if gpu:
        return true(), case((Job.compute == "cuda", 0), (Job.compute == "auto", 1), else_=2)
    return Job.compute != "cuda", case((Job.compute == "cpu", 0), else_=1)


def claim_job(engine: Engine, worker: str, lease_s: int, *, gpu: bool = False) -> int | None:
    """Take the oldest queued job this worker can score (`gpu`: it has a GPU), or a running job whose
    worker stopped renewing its lease; among those, the jobs that suit its compute first."""
    values = {
        "lease_owner": worker,
        "lease_expires_at": db_after(lease_s),
        "attempts": Job.attempts + 1,
    }
    scorable, preference = _for_compute(gpu)
    claimable = and_(_claimable(), scorable)
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            query = select(Job.id).where(claimable).order_by(preference, Job.id).limit(1)
            query = query.with_for_update(skip_locked=True)
            job_id = session.scalar(query)
            if job_id is None:
                return None
            session.execute(update(Job).where(Job.id == job_id).values(**values))
        else:
            oldest = select(Job.id).where(claimable).order_by(preference, Job.id).limit(1).scalar_subquery()
            claim = update(Job).where(Job.id == oldest, claimable).values(**values).returning(Job.id)
            job_id = session.scalar(claim)
            if job_id is None:
                return None
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued").values(status="running", started_at=db_now())
        )
    return job_id


def _held(job_id: int, worker: str):
    return and_(Job.id == job_id, Job.lease_owner == worker, Job.status.in_(ACTIVE))


def renew_lease(engine: Engine, job_id: int, worker: str, lease_s: int) -> bool:
    """Extend the lease; False when the job is no longer this worker's (cancelled, re-claimed)."""
    return update_job(engine, job_id, worker, lease_expires_at=db_after(lease_s))


def update_job(engine: Engine, job_id: int, worker: str, **values: Any) -> bool:
    """Progress, budget or status of a job this worker holds; False when it no longer holds it."""
    with Session(engine) as session, session.begin():
        return bool(session.execute(update(Job).where(_held(job_id, worker)).values(**values)).rowcount)


def finish(engine: Engine, job_id: int, worker: str, status: str, error: str | None = None) -> bool:
    """End a held job: done, failed (with a message for the user) or cancelled."""
    assert status in FINAL
    return update_job(
        engine, job_id, worker, status=status, error=error, finished_at=db_now(), lease_expires_at=None, eta_s=None
    )


# -- preparation (no worker holds a preparing job: its writes are conditional on the status instead) ---------------


def _preparing(engine: Engine, job_id: int, **values: Any) -> bool:
    with Session(engine) as session, session.begin():
        query = update(Job).where(Job.id == job_id, Job.status == "preparing").values(**values)
        return bool(session.execute(query).rowcount)


def report_preparation(engine: Engine, job_id: int, stage: str, done: int, total: int) -> bool:
    """Record how far the preparation is; False when the job is no longer preparing (it was cancelled)."""
    return _preparing(engine, job_id, preparation={"stage": stage, "done": done, "total": total})


def prepared(engine: Engine, job_id: int) -> bool:
    """Queue a job whose inputs are ready; False when it is no longer preparing (it was cancelled)."""
    return _preparing(engine, job_id, status="queued", preparation=None)


def preparation_failed(engine: Engine, job_id: int, error: str) -> bool:
    """End a job whose inputs could not be made, with the reason for the user."""
    return _preparing(engine, job_id, status="failed", error=error, finished_at=db_now(), preparation=None)
