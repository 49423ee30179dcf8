"""The service commands: `vitprune serve` (API + dashboard + a worker) and `vitprune worker` (more workers)."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# The service (FastAPI, SQLAlchemy, torch) is imported when a command runs, not when the parser is built.
if TYPE_CHECKING:
    from server.demo_job import DemoPreparation
    from server.settings import Settings

__all__ = ["add_commands"]


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment (VITPRUNE_*), overridden by the options given."""
    from server.settings import Settings

    overrides = {
        "home": args.home,
        "db_url": args.db,
        "heartbeat_s": getattr(args, "heartbeat", None),
        "grace_s": getattr(args, "grace", None),
        "compute": args.compute,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _setup(args: argparse.Namespace) -> None:
    import optuna
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    _setup(args)
    settings = _settings(args)
    # The demo job is listed before the server starts; its model is trained in the background while it answers.
    demo = _start_demo(settings) if args.demo else None
    print(f"vitprune: dashboard at http://{args.host}:{args.port}/ (data in {settings.home.resolve()})", flush=True)
    try:
        uvicorn.run(create_app(settings, worker=not args.no_worker), host=args.host, port=args.port, log_level="info")
    finally:
        if demo is not None:
            demo.stop()
    return 0


def _start_demo(settings: Settings) -> DemoPreparation | None:
    """The demo job, listed now and prepared in a background thread (None when it needs no preparing)."""
    from server.demo_job import start_demo

    demo = start_demo(settings)
    if demo is not None:
        print(
            f"vitprune: demo job {demo.job_id}: preparing the demo model in the background (a few minutes; "
            "its progress is on the dashboard), then its search runs",
            flush=True,
        )
    return demo


def cmd_worker(args: argparse.Namespace) -> int:
    from server.db.engine import make_engine, migrate
    from server.worker import ServiceWorker

    _setup(args)
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    migrate(engine)
    worker = ServiceWorker(settings, engine)
    stop = threading.Event()
    try:
        jobs = worker.run(stop, idle_exit_s=args.idle_exit)
    except KeyboardInterrupt:
        jobs = 0
    print(json.dumps({"trials_run": worker.trials_run, "jobs_finished": jobs}))
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="data directory: database and artifacts (default: $VITPRUNE_HOME)")
    parser.add_argument(
        "--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: $VITPRUNE_DB_URL, else SQLite)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--compute",
        help="where this worker scores trials: cpu, cuda, cuda:N or auto (the GPU when torch sees one; default: "
        "$VITPRUNE_COMPUTE, else auto); with a GPU it takes the jobs that need one first",
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the service: REST API, dashboard and a worker")
    _add_common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="API and dashboard only; jobs run in `vitprune worker`")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="list a demo job at once; train its small ViT on generated images in the background, then search it",
    )
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="run jobs (and trials of running searches) from a shared database")
    _add_common(worker)
    worker.add_argument("--idle-exit", type=float, help="exit after this many seconds without work")
    worker.add_argument("--heartbeat", type=int, help="seconds between lease renewals and trial heartbeats")
    worker.add_argument("--grace", type=int, help="seconds without a trial heartbeat after which it is retried")
    worker.set_defaults(run=cmd_worker)
