"""FastAPI dependencies: the app's settings, a database session, the artifact store, the device registry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from latency_models.registry import Registry
from server.db.models import Job, PrunedModel
from server.settings import Settings
from server.store import ArtifactStore

__all__ = ["JobDep", "ModelDep", "RegistryDep", "SessionDep", "SettingsDep", "StoreDep", "check_token"]


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def _store(request: Request) -> ArtifactStore:
    return request.app.state.store


def _registry(request: Request) -> Registry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
RegistryDep = Annotated[Registry, Depends(_registry)]


Id = Annotated[int, Path(ge=1, lt=2**31, description="a database id")]


WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC = frozenset({"/api/health"})


def check_token(request: Request) -> None:
    """With a token configured, writes (and, with protect_reads, reads) need `Authorization: Bearer TOKEN`."""
    settings: Settings = request.app.state.settings
    if settings.token is None or request.url.path in PUBLIC:
        return
    if request.method not in WRITES and not settings.protect_reads:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guessed token was right.
    expected = settings.token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), expected):
        raise HTTPException(
            401,
            "this service needs its API token: send 'Authorization: Bearer TOKEN' (vitprune --token, $VITPRUNE_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _job(job_id: Id, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}; list jobs with GET /api/jobs")
    return job


def _model(model_id: Id, session: SessionDep) -> PrunedModel:
    model = session.get(PrunedModel, model_id)
    if model is None:
        raise HTTPException(404, f"no model {model_id}; a job's models are at GET /api/jobs/{{id}}/pareto")
    return model


JobDep = Annotated[Job, Depends(_job)]
ModelDep = Annotated[PrunedModel, Depends(_model)]
