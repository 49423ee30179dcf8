"""Job life cycle and leases on SQLite and PostgreSQL: atomic claims, expiry and re-claim, cancellation."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.db.engine import VERSION_TABLE, alembic_config, make_engine, migrate
from server.db.models import Job
from server.jobs import cancel_job, claim_job, create_job, finish, list_jobs, renew_lease, update_job
from tests.search.tiny import tiny_job


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    sqlite = request.param == "sqlite"
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if sqlite else request.getfixturevalue("postgres_db_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def spec(tiny_root):
    return tiny_job(tiny_root)


def test_migrations_create_our_tables_apart_from_optunas(engine):
    migrate(engine)  # a second run changes nothing
    tables = set(inspect(engine).get_table_names())
    assert {"vp_jobs", "vp_models", "vp_devices", "vp_workers", VERSION_TABLE} <= tables
    assert "alembic_version" not in tables  # Optuna's own version table stays Optuna's


def _insert_model(connection, job_id: int, variant: str | None) -> None:
    """A model row as written before (variant None) or after migration 0007."""
    columns, values = ("variant, ", ":variant, ") if variant else ("", "")
    connection.execute(
        text(
            f"INSERT INTO vp_models (job_id, trial, {columns}config, config_key, metrics, predicted_ms, params,"
            f" gflops, path, sha256, pareto) VALUES (:job, 3, {values}'{{}}', 'k', '{{}}', 1.0, 1, 1.0, 'p', 's', :yes)"
        ),
        {"job": job_id, "variant": variant, "yes": True},
    )


def test_models_stored_before_variants_are_searched_and_a_trial_may_gain_a_fine_tuned_model(engine, spec):
    command.downgrade(alembic_config(engine), "0006")
    with Session(engine) as session:
        job_id = create_job(session, spec, name="old").id
    with engine.begin() as connection:
        _insert_model(connection, job_id, None)
    migrate(engine)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT trial, variant FROM vp_models")).all() == [(3, "searched")]
        _insert_model(connection, job_id, "fine-tuned")
    with pytest.raises(IntegrityError), engine.begin() as connection:  # still one row per trial and variant
        _insert_model(connection, job_id, "fine-tuned")
    command.downgrade(alembic_config(engine), "0006")  # back: the fine-tuned rows go, the searched one stays
    with engine.begin() as connection:
        assert connection.execute(text("SELECT trial FROM vp_models")).all() == [(3,)]
    migrate(engine)


def test_every_job_is_claimed_by_exactly_one_of_many_concurrent_workers(engine, spec):
    with Session(engine) as session:
        ids = {create_job(session, spec).id for _ in range(6)}
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda n: claim_job(engine, f"w{n % 8}", 60), range(16)))
    taken = [c for c in claims if c is not None]
    assert sorted(taken) == sorted(ids), f"claims {claims}"
    with Session(engine) as session:
        assert {j.status for j in list_jobs(session)} == {"running"}


def test_jobs_that_need_a_gpu_go_to_gpu_workers_and_gpu_workers_take_them_first(engine, spec):
    with Session(engine) as session:
        cpu, auto, cuda = (
            create_job(session, spec.model_copy(update={"compute": c})).id for c in ("cpu", "auto", "cuda:1")
        )
    assert claim_job(engine, "gpu-worker", 60, gpu=True) == cuda  # newest, but it needs a GPU
    assert claim_job(engine, "gpu-worker", 60, gpu=True) == auto
    with Session(engine) as session:
        late_cuda = create_job(session, spec.model_copy(update={"compute": "cuda"})).id
    assert claim_job(engine, "cpu-worker", 60) == cpu
    assert claim_job(engine, "cpu-worker", 60) is None  # the job left needs a GPU
    assert claim_job(engine, "gpu-worker", 60, gpu=True) == late_cuda


def test_an_expired_lease_is_reclaimed_and_the_old_worker_loses_the_job(engine, spec):
    with Session(engine) as session:
        job_id = create_job(session, spec).id
    assert claim_job(engine, "first", 1) == job_id
    assert claim_job(engine, "second", 60) is None  # the lease still holds
    time.sleep(2.2)  # SQLite's clock has whole seconds
    assert claim_job(engine, "second", 60) == job_id
    assert not renew_lease(engine, job_id, "first", 60)
    assert not update_job(engine, job_id, "first", trials_done=3)
    assert renew_lease(engine, job_id, "second", 60)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert (job.lease_owner, job.attempts, job.trials_done, job.status) == ("second", 2, 0, "running")


def test_a_cancelled_job_cannot_be_renewed_or_finished_by_its_worker(engine, spec):
    with Session(engine) as session:
        job = create_job(session, spec)
        assert claim_job(engine, "w", 60) == job.id
        assert cancel_job(session, job)
        assert job.status == "cancelled" and job.finished_at is not None
        assert not cancel_job(session, job)  # a finished job stays as it is
    assert not renew_lease(engine, job.id, "w", 60)
    assert not finish(engine, job.id, "w", "done")
    assert claim_job(engine, "other", 60) is None


def test_filters_and_order(engine, spec, tiny_root):
    with Session(engine) as session:
        first = create_job(session, spec, "first")
        second = create_job(session, tiny_job(tiny_root, device="mobile-cpu"), "second")
        assert [j.id for j in list_jobs(session)] == [second.id, first.id]
        assert [j.name for j in list_jobs(session, device="mobile-cpu")] == ["second"]
        assert first.study_name != second.study_name and str(first.id) in first.study_name
