"""Jobs: submit, list, get, cancel, trials, Pareto front."""

from __future__ import annotations

from typing import Annotated, Any

import optuna
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from optuna.trial import TrialState
from sqlalchemy import select

from search import JobInputError, check_job
from search.trials import is_pareto_candidate
from server.api.deps import JobDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from server.api.paths import PathError, resolve_paths
from server.api.schemas import JobOut, JobSubmit, ModelOut, ParetoOut, TrialOut
from server.api.summary import summarise
from server.db.models import JOB_STATES, PrunedModel
from server.jobs import cancel_job, create_job, list_jobs

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobOut)
async def submit(
    body: JobSubmit, session: SessionDep, settings: SettingsDep, store: StoreDep, registry: RegistryDep
) -> JobOut:
    """Queue a search job. Its model, weights, images, device and budget are checked first, so a job
    that cannot run is refused now with the reason (e.g. the cheapest config's latency) instead of
    failing in the queue."""
    try:
        spec = resolve_paths(body.spec, settings, store)
        # Loading weights and pricing the model take seconds: not on the event loop.
        await run_in_threadpool(check_job, spec, registry)
    except (PathError, JobInputError, ValueError, OSError) as error:
        raise HTTPException(400, str(error)) from error
    return JobOut.of(create_job(session, spec, body.name))


@router.get("", response_model=list[JobOut])
def jobs(
    session: SessionDep,
    status: Annotated[str | None, Query(description=f"one of {', '.join(JOB_STATES)}")] = None,
    model: str | None = None,
    device: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[JobOut]:
    if status is not None and status not in JOB_STATES:
        raise HTTPException(400, f"unknown status {status!r}; use one of {', '.join(JOB_STATES)}")
    found = list_jobs(session, status=status, model=model, device=device, limit=limit, offset=offset)
    return [JobOut.of(job) for job in found]


@router.get("/{job_id}", response_model=JobOut)
def job(job: JobDep) -> JobOut:
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job: JobDep, session: SessionDep) -> JobOut:
    """Cancel a queued or running job; its worker stops within a trial or two. A finished job is left as it is."""
    if not cancel_job(session, job):
        raise HTTPException(409, f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled")
    return JobOut.of(job)


@router.get("/{job_id}/trials", response_model=list[TrialOut])
def trials(job: JobDep, request: Request) -> list[TrialOut]:
    """Every trial of the job's study so far (calibration accuracy, predicted latency, feasibility)."""
    storage = request.app.state.optuna_storage
    try:
        study = optuna.load_study(study_name=job.study_name, storage=storage)
    except KeyError:
        return []  # queued: the study is created when a worker starts the job
    return [_trial(t) for t in study.get_trials(deepcopy=False)]


def _trial(trial: optuna.trial.FrozenTrial) -> TrialOut:
    complete = trial.state == TrialState.COMPLETE
    config: dict[str, Any] | None = trial.user_attrs.get("config")
    return TrialOut(
        number=trial.number,
        state=trial.state.name.lower(),
        accuracy=trial.values[0] if complete else None,
        latency_ms=trial.values[1] if complete else trial.user_attrs.get("predicted_ms"),
        feasible=is_pareto_candidate(trial) or (complete and all(v <= 0 for v in trial.constraints.values())),
        evaluated=bool(trial.user_attrs.get("evaluated")),
        params=trial.params,
        summary=summarise(config) if config else None,
    )


@router.get("/{job_id}/pareto", response_model=ParetoOut)
def pareto(job: JobDep, session: SessionDep) -> ParetoOut:
    """The job's materialised Pareto models, fastest first (empty until the job is done)."""
    models = session.scalars(
        select(PrunedModel).where(PrunedModel.job_id == job.id).order_by(PrunedModel.predicted_ms)
    ).all()
    return ParetoOut(
        job_id=job.id,
        status=job.status,
        budget_ms=job.budget_ms,
        dense_ms=job.dense_ms,
        dense=job.dense,
        models=[ModelOut.of(m) for m in models],
    )
