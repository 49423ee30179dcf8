"""The deployed topology without Docker: PostgreSQL, the API (`vitprune serve --no-worker`) and two
`vitprune worker` processes, one real job through to downloaded models."""

from __future__ import annotations

import pytest

from pruning.bundle import load_bundle
from tests.search.tiny import tiny_job
from tests.server.conftest import spec_json
from tests.server.processes import Process, Service, service_env, wait_until

pytestmark = pytest.mark.slow


def test_api_and_two_workers_on_postgres_run_a_job_to_downloaded_models(postgres_db_url, tiny_root, tmp_path):
    env = service_env(postgres_db_url, tmp_path / "home", [tiny_root])
    api = Service(env, tmp_path / "api.log", "--no-worker")
    workers = [Process(["worker", "--threads", "1", "--idle-exit", "4"], env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        trials = 60
        response = api.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=trials))})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["status"] in ("done", "failed"), "finished job")
        job = api.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "done", job["error"]

        reports = [worker.report() for worker in workers]
        assert sum(r["trials_run"] for r in reports) == trials, reports  # the total is exactly what was asked
        assert all(r["trials_run"] > 0 for r in reports), f"one worker ran every trial: {reports}"
        assert sum(r["jobs_finished"] for r in reports) == 1

        models = api.get(f"/api/jobs/{job_id}/pareto").json()["models"]
        assert models
        for model in models:
            download = api.get(f"/api/models/{model['id']}/download", params={"format": "bundle"})
            assert download.status_code == 200
            path = tmp_path / f"model{model['id']}.zip"
            path.write_bytes(download.content)
            assert load_bundle(path).config.without_indices().model_dump(mode="json") == model["config"]
    finally:
        for process in (api, *workers):
            process.stop()
