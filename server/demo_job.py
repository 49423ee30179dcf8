"""The job of `vitprune serve --demo`: listed at once, its model prepared in the background, then searched.

Training the demo ViT takes minutes on a small machine, and the service must answer meanwhile. So the job is
created first, `preparing`, naming the files it will use; a thread makes them (`server.demo`) and records each
stage's progress on the job's row, which the job list, the job page and `vitprune jobs` show. Once the files
exist the job is queued and a worker searches it like any other. A failure ends the job as failed with the
reason; cancelling the job stops the training; a server stopped while preparing leaves the job preparing, and the
next `vitprune serve --demo` resumes it (files a finished preparation made are reused at once).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from server.db.engine import make_engine, migrate
from server.db.models import Job
from server.demo import DEMO_LABEL, TRAIN_STEPS, demo_assets_at, demo_job, make_demo_assets
from server.jobs import create_job, preparation_failed, prepared, report_preparation
from server.settings import Settings

__all__ = ["DEMO_NAME", "DemoPreparation", "start_demo"]

logger = logging.getLogger(__name__)

DEMO_NAME = "DEMO: self-trained ViT on generated shapes (not ImageNet)"
REPORT_EVERY_S = 1.0
"""Progress is written at most this often per stage (and at every new stage): enough for a live bar."""
DEMO_TRIALS = 60
STAGE_PREFIX = "preparing the demo model: "


class _Stopped(Exception):
    """The job was cancelled, or the server is stopping: leave the preparation where it is."""


class DemoPreparation:
    """The demo job and the thread preparing its model (None when there is nothing left to prepare)."""

    def __init__(self, engine: Engine, job_id: int, root: Path, steps: int) -> None:
        self.engine, self.job_id, self.root, self.steps = engine, job_id, root, steps
        self._stop = threading.Event()
        self._stage, self._reported_at = "", 0.0
        self.thread = threading.Thread(target=self._run, name=f"demo-{job_id}", daemon=True)

    def start(self) -> DemoPreparation:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop preparing (at the next progress report) and wait for the thread; the job stays `preparing`."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        try:
            assets = make_demo_assets(self.root, steps=self.steps, progress=False, report=self._report)
            if prepared(self.engine, self.job_id):
                logger.info(
                    "demo job %d: demo ViT ready, %.1f%% top-1 on its validation shapes; queued for its search",
                    self.job_id,
                    assets.accuracy,
                )
            else:
                logger.info("demo job %d was cancelled while its model was prepared", self.job_id)
        except _Stopped as why:
            logger.info("demo job %d: stopped preparing (%s)", self.job_id, why)
        except Exception as error:  # whatever broke, the job must end saying so, not stay preparing for ever
            logger.exception("demo job %d: preparing the demo model failed", self.job_id)
            try:
                preparation_failed(self.engine, self.job_id, self._message(error))
            except Exception:
                logger.exception("demo job %d: could not record the failure", self.job_id)
        finally:
            self.engine.dispose()

    def _report(self, stage: str, done: int, total: int) -> None:
        if self._stop.is_set():
            raise _Stopped("the server is stopping; the next `vitprune serve --demo` resumes it")
        now = time.monotonic()
        if stage == self._stage and now - self._reported_at < REPORT_EVERY_S:
            return
        if stage != self._stage:
            logger.info("demo job %d: %s%s", self.job_id, STAGE_PREFIX, stage)
        self._stage, self._reported_at = stage, now
        try:
            preparing = report_preparation(self.engine, self.job_id, f"{STAGE_PREFIX}{stage}", done, total)
        except (OperationalError, InterfaceError):  # progress is for show: a busy or absent database must not fail it
            logger.warning("demo job %d: could not record progress", self.job_id, exc_info=True)
            return
        if not preparing:
            raise _Stopped("the job was cancelled")

    def _message(self, error: Exception) -> str:
        """What went wrong, for the job's page: the cause without the server's folders, and what to do."""
        if isinstance(error, OSError) and error.strerror:
            cause = error.strerror
        else:
            cause = f"{type(error).__name__}: {error}".replace(str(self.root), "the demo folder")[:300]
        return (
            f"preparing the demo model failed: {cause}. The server log has the details; "
            "fix the cause and start `vitprune serve --demo` again to retry."
        )


def start_demo(settings: Settings, *, steps: int = TRAIN_STEPS, trials: int = DEMO_TRIALS) -> DemoPreparation | None:
    """List the demo job (created `preparing` unless it exists) and prepare its model in a background thread.

    Returns None when the demo job exists and needs nothing (queued, searching or finished). A demo job left
    preparing by a stopped server, or one whose preparation failed, is prepared again.
    """
    engine = make_engine(settings.database_url)
    migrate(engine)
    root = Path(settings.home) / "demo"
    with Session(engine) as session:
        job = session.scalars(select(Job).where(Job.name == DEMO_NAME).order_by(Job.id.desc())).first()
        if job is None:
            spec = demo_job(demo_assets_at(root), trials=trials)
            job = create_job(session, spec, DEMO_NAME, label=DEMO_LABEL, preparing=True)
        elif job.status == "failed" and job.started_at is None:  # failed before any worker took it: preparing
            session.execute(
                update(Job).where(Job.id == job.id).values(status="preparing", error=None, finished_at=None)
            )
            session.commit()
        elif job.status != "preparing":
            if job.model_label is None:  # a demo job listed before jobs had labels
                session.execute(update(Job).where(Job.id == job.id).values(model_label=DEMO_LABEL))
                session.commit()
            engine.dispose()
            return None
        job_id = job.id
    report_preparation(engine, job_id, f"{STAGE_PREFIX}starting", 0, 1)
    logger.info("demo job %d: preparing the demo model in the background", job_id)
    return DemoPreparation(engine, job_id, root, steps).start()
