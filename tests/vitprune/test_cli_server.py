"""`vitprune worker` (and `serve`'s options): the service worker from the command line."""

from __future__ import annotations

import json
import threading

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from server.db.engine import make_engine, migrate
from server.db.models import Job
from server.demo import DEMO_LABEL
from server.jobs import create_job
from tests.search.tiny import tiny_job
from vitprune.cli import build_parser, main


def test_worker_on_the_embedded_default_exits_when_idle_and_reports(capsys, tmp_path):
    code = main(["worker", "--home", str(tmp_path / "home"), "--idle-exit", "0.3"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out) == {"trials_run": 0, "jobs_finished": 0}
    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'vitprune.db'}")
    assert "vp_jobs" in inspect(engine).get_table_names()  # it migrated the database it was given


def test_worker_runs_a_queued_job_to_its_pareto_models(capsys, tmp_path, tiny_root):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = make_engine(url)
    migrate(engine)
    with Session(engine) as session:
        job_id = create_job(session, tiny_job(tiny_root, trials=10)).id
    code = main(["worker", "--db", url, "--home", str(tmp_path / "home"), "--idle-exit", "1", "--heartbeat", "1"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report == {"trials_run": 10, "jobs_finished": 1}
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job.status == "done" and job.trials_done == 10 and job.models


def test_serve_options():
    args = build_parser().parse_args(["serve", "--no-worker", "--host", "0.0.0.0", "--port", "9000", "--demo"])
    assert (args.no_worker, args.host, args.port, args.demo) == (True, "0.0.0.0", 9000, True)


def test_serve_demo_lists_the_demo_job_before_the_server_starts_and_prepares_it_meanwhile(tmp_path, monkeypatch):
    import uvicorn

    from server.demo_job import DEMO_NAME

    home = tmp_path / "home"
    seen: dict = {}

    def run(app, **options) -> None:
        # What a user finds the moment the server listens: the demo job, preparing, with its progress.
        engine = make_engine(f"sqlite:///{home / 'vitprune.db'}")
        with Session(engine) as session:
            seen["jobs"] = [(job.name, job.status, job.model_label) for job in session.query(Job)]
        engine.dispose()
        seen["preparing"] = [thread.name for thread in threading.enumerate() if thread.name.startswith("demo-")]

    monkeypatch.setattr(uvicorn, "run", run)
    assert main(["serve", "--demo", "--home", str(home), "--no-worker"]) == 0
    assert seen["jobs"] == [(DEMO_NAME, "preparing", DEMO_LABEL)]
    assert seen["preparing"] == ["demo-1"]
    # The server stopped: so did the preparation, and the job waits, preparing, for the next `serve --demo`.
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("demo-")]
    engine = make_engine(f"sqlite:///{home / 'vitprune.db'}")
    with Session(engine) as session:
        assert [job.status for job in session.query(Job)] == ["preparing"]
    engine.dispose()
