"""The vitprune service: REST API, dashboard and (optionally) an in-process worker, in one FastAPI app."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from latency_models.registry import Registry
from search.study import open_storage
from server.api.deps import check_token
from server.api.errors import document_validation_answers, validation_error
from server.api.routes import devices, health, jobs, models, uploads
from server.dashboard import router as dashboard
from server.db.engine import make_engine, make_sessions, migrate
from server.settings import Settings
from server.store import ArtifactStore
from server.worker import ServiceWorker

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, worker: bool = True) -> FastAPI:
    """The app; with `worker`, a worker thread in the same process runs the jobs (the embedded default)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        migrate(engine)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = make_sessions(engine)
        app.state.store = ArtifactStore(settings.artifacts)
        app.state.registry = Registry(settings.profiles)
        app.state.optuna_storage = open_storage(settings.database_url)
        stop = threading.Event()
        thread = None
        if worker:
            service_worker = ServiceWorker(settings, engine, app.state.registry)
            thread = threading.Thread(target=service_worker.run, args=(stop,), name="worker", daemon=True)
            thread.start()
        # torch and timm leave millions of long-lived objects behind their imports; a full garbage
        # collection walking them all stalls every request for ~300 ms. Frozen, collections skip them.
        gc.collect()
        gc.freeze()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=30)  # a trial in progress finishes; an unfinished job is resumed at the next start
            service_worker.retire()  # even if a job held it past the wait: the process ends, the worker with it
        engine.dispose()

    app = FastAPI(
        title="vitprune",
        version=_version(),
        summary="Hardware-aware pruning search for Vision Transformers",
        lifespan=lifespan,
        dependencies=[Depends(check_token)],
    )
    for module in (jobs, models, devices, uploads, health):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, validation_error)
    document_validation_answers(app)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(dashboard)
    return app


def _version() -> str:
    """The installed package's version, as `vitprune.__version__` and bundles give it."""
    try:
        return version("vitprune")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+local"


async def _database_down(request: Request, error: Exception) -> JSONResponse:
    # The engine's pre-ping reconnects once the database is back; until then say so, and when to retry.
    logger.warning("database unreachable on %s %s: %s", request.method, request.url.path, type(error).__name__)
    return JSONResponse(
        {"detail": "the database is unreachable; retry in a few seconds"}, status_code=503, headers={"Retry-After": "5"}
    )


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # A bug must not show a traceback to the client; the log has it.
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
