"""The deployed topology without Docker: PostgreSQL, the API (`vitprune serve --no-worker`) and two
`vitprune worker` processes, one real job through to downloaded models."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pruning.bundle import load_bundle
from tests.search.tiny import tiny_job
from tests.server.conftest import spec_json

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vitprune", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _wait_healthy(url: str, api: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert api.poll() is None, f"the API exited:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the API did not answer in {timeout} s:\n{log.read_text()}")


def test_api_and_two_workers_on_postgres_run_a_job_to_downloaded_models(postgres_db_url, tiny_root, tmp_path):
    env = os.environ | {
        "VITPRUNE_DB_URL": postgres_db_url,
        "VITPRUNE_HOME": str(tmp_path / "home"),
        "VITPRUNE_ROOTS": json.dumps([str(tiny_root)]),
        "VITPRUNE_POLL_S": "0.2",
        "VITPRUNE_HEARTBEAT_S": "1",
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    processes = []
    try:
        api_log = tmp_path / "api.log"
        api = _start(["serve", "--no-worker", "--port", str(port)], env, api_log)
        processes.append(api)
        _wait_healthy(url, api, api_log)
        worker_logs = [tmp_path / f"worker{n}.log" for n in range(2)]
        for log in worker_logs:
            processes.append(_start(["worker", "--threads", "1", "--idle-exit", "4"], env, log))

        trials = 60
        response = httpx.post(f"{url}/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=trials))})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 240
        while (job := httpx.get(f"{url}/api/jobs/{job_id}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, f"job still {job['status']}"
            time.sleep(0.5)
        assert job["status"] == "done", job["error"]

        reports = []
        for worker, log in zip(processes[1:], worker_logs, strict=True):
            assert worker.wait(timeout=60) == 0, log.read_text()
            reports.append(json.loads(log.read_text().strip().splitlines()[-1]))
        assert sum(r["trials_run"] for r in reports) == trials, reports  # the total is exactly what was asked
        assert all(r["trials_run"] > 0 for r in reports), f"one worker ran every trial: {reports}"
        assert sum(r["jobs_finished"] for r in reports) == 1

        models = httpx.get(f"{url}/api/jobs/{job_id}/pareto").json()["models"]
        assert models
        for model in models:
            download = httpx.get(f"{url}/api/models/{model['id']}/download", params={"format": "bundle"})
            assert download.status_code == 200
            path = tmp_path / f"model{model['id']}.zip"
            path.write_bytes(download.content)
            assert load_bundle(path).config.without_indices().model_dump(mode="json") == model["config"]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
