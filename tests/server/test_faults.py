"""Faults the service survives: killed workers, a restarted API, a database that goes away, a full disk,
and several workers on several jobs. Real processes, real SQLite and PostgreSQL."""

from __future__ import annotations

import errno
import logging
import time

import optuna
import pytest
import safetensors.torch
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from search.pareto import pareto_trials
from search.study import open_storage, progress
from server.db.engine import make_engine, migrate
from server.db.models import Job
from server.jobs import create_job
from tests.postgres import new_database, throwaway_cluster
from tests.search.tiny import tiny_job
from tests.server.conftest import spec_json, wait_final
from tests.server.processes import Process, Service, service_env, wait_until

pytestmark = pytest.mark.slow


def job_row(url: str, job_id: int) -> Job:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            job.models  # noqa: B018 (loaded before the session closes)
            return job
    finally:
        engine.dispose()


def check_whole(url: str, job_id: int) -> Job:
    """Done, with exactly its trials, and one model per Pareto-optimal trial: none missing, none twice."""
    job = job_row(url, job_id)
    assert job.status == "done", job.error
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(url))
    state = progress(study)
    assert (state.done, state.running, state.waiting) == (job.trials_total, 0, 0)
    assert sorted(m.trial for m in job.models) == sorted(t.number for t in pareto_trials(study))
    return job


def queue(url: str, *jobs) -> list[int]:
    engine = make_engine(url)
    migrate(engine)
    with Session(engine) as session:
        ids = [create_job(session, job).id for job in jobs]
    engine.dispose()
    return ids


def running_trials(url: str, study_name: str) -> int:
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def test_a_worker_killed_mid_trial_is_replaced_and_the_job_finishes_whole(tiny_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    env = service_env(url, tmp_path / "home", [tiny_root])
    (job_id,) = queue(url, tiny_job(tiny_root, trials=40))
    study_name = job_row(url, job_id).study_name
    for attempt in range(3):  # the kill must land inside a trial; trials are short, so try again if it missed
        first = Process(["worker", "--threads", "1"], env, tmp_path / f"first{attempt}.log")
        wait_until(lambda n=3 + 5 * attempt: job_row(url, job_id).trials_done >= n, "trials", processes=(first,))
        wait_until(lambda: running_trials(url, study_name) > 0, "a running trial", processes=(first,))
        first.kill()
        if running_trials(url, study_name):
            break
    else:
        pytest.fail("three kills all missed a running trial")
    second = Process(["worker", "--threads", "1", "--idle-exit", "3"], env, tmp_path / "second.log")
    assert second.report(timeout=180)["jobs_finished"] == 1  # its lease ran out: the second worker took it over
    job = check_whole(url, job_id)
    assert job.attempts >= 2


def test_a_restarted_api_loses_no_job(tiny_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    env = service_env(url, tmp_path / "home", [tiny_root])
    api = Service(env, tmp_path / "api.log")  # with its in-process worker
    running = api.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=60))}).json()["id"]
    queued = api.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=10, seed=1))}).json()["id"]
    wait_until(lambda: api.get(f"/api/jobs/{running}").json()["progress"]["done"] >= 3, "trials", processes=(api,))
    api.kill()
    again = Service(env, tmp_path / "api-again.log")
    try:
        for job_id in (running, queued):
            wait_until(lambda j=job_id: again.get(f"/api/jobs/{j}").json()["status"] == "done", "done job")
            check_whole(url, job_id)
    finally:
        again.stop()


def test_workers_and_api_recover_when_postgres_goes_away_and_comes_back(tiny_root, tmp_path):
    with throwaway_cluster() as cluster:
        url = new_database(cluster.admin_url, "outage")
        env = service_env(url, tmp_path / "home", [tiny_root])
        api = Service(env, tmp_path / "api.log", "--no-worker")
        worker = Process(["worker", "--threads", "1", "--idle-exit", "3"], env, tmp_path / "worker.log")
        try:
            job_id = api.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=80))}).json()["id"]
            wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["progress"]["done"] >= 3, "trials")
            cluster.stop("fast")
            assert api.get("/api/health").status_code == 503
            time.sleep(4)
            assert worker.alive() and api.alive()
            cluster.start()
            wait_until(lambda: api.get(f"/api/jobs/{job_id}").status_code == 200, "the API back")
            assert worker.report(timeout=240)["jobs_finished"] >= 0
            check_whole(url, job_id)  # finished: nothing left in running
        finally:
            worker.stop()
            api.stop()


def test_a_failed_artifact_write_fails_the_job_clearly_and_leaves_no_half_file(
    make_service, tiny_root, monkeypatch, caplog
):
    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    client = make_service()
    with caplog.at_level(logging.INFO, logger="server.worker"):
        job_id = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=10))}).json()["id"]
        job = wait_final(client, job_id)
    assert job["status"] == "failed" and "No space left on device" in job["error"]
    # The server's log says so too, with how long the job ran and why it failed.
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {job_id} failed after ")]
    assert failed and "No space left on device" in failed[0], [r.getMessage() for r in caplog.records]
    # The job's owner reads the failure without the server's directories; the log keeps them.
    store = str(client.app.state.settings.artifacts)
    assert store in failed[0] and store not in job["error"], job["error"]
    assert client.get(f"/api/jobs/{job_id}/pareto").json()["models"] == []
    home = client.app.state.settings.artifacts / "jobs" / str(job_id)
    assert not list(home.rglob("model.safetensors")), "a half-written bundle was left where it could be served"


def test_three_workers_on_postgres_share_four_jobs_exactly(postgres_db_url, tiny_root, tmp_path):
    env = service_env(postgres_db_url, tmp_path / "home", [tiny_root])
    jobs = [tiny_job(tiny_root, trials=15 + 5 * n, seed=n) for n in range(4)]
    ids = queue(postgres_db_url, *jobs)
    workers = [Process(["worker", "--threads", "1", "--idle-exit", "4"], env, tmp_path / f"w{n}.log") for n in range(3)]
    reports = [w.report(timeout=300) for w in workers]
    assert sum(r["jobs_finished"] for r in reports) == len(ids)
    assert sum(r["trials_run"] for r in reports) == sum(job.trials for job in jobs)  # no trial lost or run twice
    for job_id in ids:
        assert check_whole(postgres_db_url, job_id).attempts == 1  # no job claimed twice
