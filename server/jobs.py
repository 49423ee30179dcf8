"""Job life cycle and leases: queued -> running -> materialising -> done | failed | cancelled.

A worker claims a job atomically (PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so two workers
never wait on or take the same row; SQLite: one UPDATE, which SQLite runs under its single write
lock) and holds it by a lease it renews with the database clock. A job whose lease ran out (its
worker died) is claimed again by the next worker that looks; the search itself resumes from its
Optuna study, so nothing done is lost. Every write a worker makes is conditional on still holding
the lease, so a worker that lost its job (cancelled, or re-claimed after a stall) cannot overwrite it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from search.job import JobSpec
from server.db.engine import db_after, db_now
from server.db.models import ACTIVE, FINAL, Job

__all__ = ["cancel_job", "claim_job", "create_job", "finish", "list_jobs", "renew_lease", "update_job"]


def create_job(session: Session, spec: JobSpec, name: str | None = None) -> Job:
    job = Job(
        name=name or f"{spec.model} on {spec.device}",
        status="queued",
        spec=spec.model_dump(mode="json"),
        model=spec.model,
        device=spec.device,
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


def claim_job(engine: Engine, worker: str, lease_s: int) -> int | None:
    """Take the oldest queued job, or a running job whose worker stopped renewing its lease."""
    values = {
        "lease_owner": worker,
        "lease_expires_at": db_after(lease_s),
        "attempts": Job.attempts + 1,
    }
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            query = select(Job.id).where(_claimable()).order_by(Job.id).limit(1).with_for_update(skip_locked=True)
            job_id = session.scalar(query)
            if job_id is None:
                return None
            session.execute(update(Job).where(Job.id == job_id).values(**values))
        else:
            oldest = select(Job.id).where(_claimable()).order_by(Job.id).limit(1).scalar_subquery()
            claim = update(Job).where(Job.id == oldest, _claimable()).values(**values).returning(Job.id)
            job_id = session.scalar(claim)
            if job_id is None:
                return None
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="running", started_at=db_now())
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
