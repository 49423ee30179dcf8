"""A service on a throw-away home (SQLite + artifact store) with the small test ViT's files allowed as server paths."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search import JobSpec
from server.app import create_app
from server.settings import Settings
from tests.search.tiny import tiny_job

FINAL = ("done", "failed", "cancelled")


def spec_json(job: JobSpec) -> dict:
    return json.loads(job.model_dump_json())


def wait_final(client: TestClient, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout} s: {job}"
        time.sleep(0.3)


@pytest.fixture
def make_service(tmp_path: Path, tiny_root: Path) -> Iterator[Callable[..., TestClient]]:
    """Starts services (entered TestClients) on `tmp_path/home`; all are closed at the end."""
    clients: list[TestClient] = []

    def start(*, worker: bool = True, **settings) -> TestClient:
        fields = {"home": tmp_path / "home", "roots": [tiny_root], "heartbeat_s": 1, "poll_s": 0.2} | settings
        client = TestClient(create_app(Settings(**fields), worker=worker))
        clients.append(client.__enter__())
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_root: Path) -> Iterator[tuple[TestClient, dict]]:
    """A service that has run one small job to the end: (client, job)."""
    home = tmp_path_factory.mktemp("finished")
    settings = Settings(home=home, roots=[tiny_root], heartbeat_s=1, poll_s=0.2)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=12)), "name": "tiny"})
        assert response.status_code == 201, response.text
        job = wait_final(client, response.json()["id"])
        assert job["status"] == "done", job
        yield client, job
