"""The REST API end to end on the embedded default (SQLite, local artifact store, in-process worker)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
import zipfile

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from latency_models.registry import Registry
from pruning import describe
from pruning.bundle import load_bundle
from server.api.routes.health import live_window_s
from server.app import create_app
from server.db.engine import db_after
from server.db.models import Worker
from server.settings import Settings
from server.worker import ServiceWorker
from tests.search.tiny import tiny_job, tiny_model
from tests.server.conftest import spec_json, wait_final


def test_a_finished_job_has_its_trials_its_pareto_models_and_progress(finished):
    client, job = finished
    assert job["progress"]["done"] == job["progress"]["total"] == 12
    assert job["budget_ms"] < job["dense_ms"] and job["started_at"] and job["finished_at"]
    latency = job["notes"]["latency"]  # what the budget rests on, and no safety margin asked for
    assert latency["trust"].startswith("specifications only") and latency["margin"] == 0.0
    assert latency["requested_budget_ms"] == pytest.approx(job["budget_ms"], abs=1e-4)
    trials = client.get(f"/api/jobs/{job['id']}/trials").json()
    assert len(trials) >= 12 and all(t["state"] in ("complete", "fail", "pruned") for t in trials)
    pareto = client.get(f"/api/jobs/{job['id']}/pareto").json()
    models = pareto["models"]
    assert models, "a done job has at least one Pareto model"
    assert all(m["predicted_ms"] <= pareto["budget_ms"] for m in models)
    assert [m["predicted_ms"] for m in models] == sorted(m["predicted_ms"] for m in models)
    # Along the front, faster models do not score higher on the job's objective (else one dominates);
    # calibration top-1 is recorded beside the score.
    scores = [m["metrics"]["calib_score"] for m in models]
    assert scores == sorted(scores) and all(m["metrics"]["objective"] == job["objective"] == "kl" for m in models)
    assert all(0 <= m["calib_accuracy"] <= 100 for m in models)
    assert client.get("/api/jobs", params={"status": "done"}).json()[0]["id"] == job["id"]
    assert client.get("/api/jobs", params={"status": "queued"}).json() == []


def test_downloads_carry_checksums_and_rebuild_the_model(finished, tmp_path):
    client, job = finished
    model = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"][0]
    weights = client.get(f"/api/models/{model['id']}/download", params={"format": "safetensors"})
    assert weights.status_code == 200
    assert hashlib.sha256(weights.content).hexdigest() == weights.headers["x-checksum-sha256"] == model["sha256"]

    bundle = client.get(f"/api/models/{model['id']}/download", params={"format": "bundle"})
    assert hashlib.sha256(bundle.content).hexdigest() == bundle.headers["x-checksum-sha256"]
    (tmp_path / "bundle.zip").write_bytes(bundle.content)
    pruned = load_bundle(tmp_path / "bundle.zip")
    assert pruned.config.without_indices().model_dump(mode="json") == model["config"]

    config = client.get(f"/api/models/{model['id']}/download", params={"format": "config"}).json()
    shape = [(b["heads"], b["mlp_hidden"], b["tokens"]) for b in config["prune_config"]["blocks"]]
    assert shape == [(b["heads"], b["mlp_hidden"], b["tokens"]) for b in model["config"]["blocks"]]

    onnx = client.get(f"/api/models/{model['id']}/download", params={"format": "onnx"})
    assert onnx.status_code == 200, onnx.text
    session = onnxruntime.InferenceSession(onnx.content)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = pruned(images).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert np.abs(got - expected).max() < 1e-3
    again = client.get(f"/api/models/{model['id']}/download", params={"format": "onnx"})
    assert again.headers["x-checksum-sha256"] == onnx.headers["x-checksum-sha256"]  # exported once, kept


DOWNLOAD_HEADERS = ("content-length", "content-type", "content-disposition", "x-checksum-sha256", "etag")


def test_head_on_a_download_answers_the_headers_of_get_without_the_file(finished):
    # `curl -I` got a 405: HEAD was not routed.
    client, job = finished
    model = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"][0]
    url = f"/api/models/{model['id']}/download"
    for format in ("bundle", "safetensors", "config", "onnx"):
        get = client.get(url, params={"format": format})
        head = client.head(url, params={"format": format})
        assert head.status_code == get.status_code == 200, (format, head.status_code)
        assert head.content == b""
        assert {k: head.headers[k] for k in DOWNLOAD_HEADERS} == {k: get.headers[k] for k in DOWNLOAD_HEADERS}
        assert int(head.headers["content-length"]) == len(get.content)
    assert client.head("/api/models/424242/download").status_code == 404


def test_a_jobs_study_names_its_objectives_for_optuna_tools(finished):
    # optuna-dashboard showed "Objective 0" and "Objective 1".
    client, job = finished
    study = optuna.load_study(study_name=job["study_name"], storage=client.app.state.optuna_storage)
    assert study.metric_names == ["calibration fidelity % (100·exp(-KL to dense))", "predicted latency ms"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]


def _health(client: TestClient) -> int:
    answer = client.get("/api/health")
    assert answer.status_code == 200, answer.text
    return answer.json()["workers"]


def _until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_health_counts_live_workers_only(tmp_path):
    # After a restart with one worker, health counted two: the stopped one had been seen in the last minute.
    settings = {"home": tmp_path / "home", "heartbeat_s": 1, "poll_s": 0.2}
    with TestClient(create_app(Settings(**settings))) as first:
        _until(lambda: _health(first) == 1)
    with TestClient(create_app(Settings(**settings), worker=False)) as restarted:
        assert _health(restarted) == 0, "a stopped worker still counted"
        # A worker that died without stopping (killed) counts until its row is older than the window.
        window = live_window_s(restarted.app.state.settings)
        with restarted.app.state.sessions() as session, session.begin():
            session.add(Worker(id="killed-long-ago", host="h", pid=1, seen_at=db_after(-window - 5)))
            session.add(Worker(id="killed-just-now", host="h", pid=2, seen_at=db_after(-1)))
        assert _health(restarted) == 1


def test_a_busy_worker_keeps_its_row_recent(make_service, monkeypatch, tmp_path):
    # A worker in a long trial or materialisation writes no row from its loop; its heartbeat thread does.
    busy, release = threading.Event(), threading.Event()
    step = ServiceWorker._step

    def long_step(self: ServiceWorker) -> tuple[bool, int]:
        if self.settings.home != tmp_path / "home":  # another test's service, still running
            return step(self)
        self._seen(None)
        busy.set()
        release.wait(60)
        return False, 0

    monkeypatch.setattr(ServiceWorker, "_step", long_step)
    client = make_service()  # heartbeat_s=1

    def seen_at() -> object:
        with client.app.state.sessions() as session:
            return session.scalar(select(Worker.seen_at))

    try:
        assert busy.wait(30)
        first = seen_at()
        _until(lambda: seen_at() > first, timeout=15)
        assert _health(client) == 1
    finally:
        release.set()


def test_the_log_says_when_a_job_starts_and_ends(make_service, tiny_root, caplog):
    client = make_service()
    with caplog.at_level(logging.INFO, logger="server.worker"):
        submitted = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=4)), "name": "logged"})
        job_id = submitted.json()["id"]
        assert wait_final(client, job_id)["status"] == "done"
        _until(lambda: any(f"job {job_id} done in" in r.getMessage() for r in caplog.records), timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "server.worker"]
    assert any(line.startswith(f"job {job_id} started: 'logged', 4 trials") for line in lines), lines
    (done,) = [line for line in lines if line.startswith(f"job {job_id} done in")]
    models = len(client.get(f"/api/jobs/{job_id}/pareto").json()["models"])
    assert re.fullmatch(rf"job {job_id} done in \d+ s: [0-4] of 4 trials complete, {models} Pareto models", done)


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"model": "deit_tinny_patch16_224"}, 400, "did you mean"),
        ({"weights": "/etc/passwd"}, 400, "VITPRUNE_ROOTS"),
        ({"weights": "upload:weights/0123/none.safetensors"}, 400, "upload it first"),
        ({"weights": "upload:../../x"}, 400, "not an upload reference"),
        ({"budget_ms": 1e-4, "budget_ratio": None}, 400, "cheapest config"),
        ({"budget_ratio": 5}, 422, "less than or equal to 1"),
        ({"device": "no-such-board"}, 400, "unknown device"),
    ],
)
def test_bad_submissions_are_refused_with_what_to_fix(make_service, tiny_root, change, status, words):
    client = make_service(worker=False)
    response = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root)) | change})
    assert response.status_code == status, response.text
    assert words in json.dumps(response.json()["detail"])
    assert client.get("/api/jobs").json() == []  # nothing was queued


def test_missing_things_are_404_or_409_never_500(finished):
    client, job = finished
    assert client.get("/api/jobs/999999").status_code == 404
    assert client.get("/api/jobs/99999999999999999999").status_code == 422
    assert client.get("/api/models/424242/download").status_code == 404
    assert client.get(f"/api/models/{job['id']}/download", params={"format": "exe"}).status_code == 422
    assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409
    assert client.get("/api/jobs", params={"status": "sleeping"}).status_code == 400
    assert client.get("/api/devices/no-such-board").status_code == 404


def _dataset_zip(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, f"images/{path.relative_to(folder)}")
    return buffer.getvalue()


def test_uploaded_weights_and_datasets_run_a_job(make_service, tiny_root):
    client = make_service(roots=[])  # no server paths allowed: everything comes as an upload
    weights = client.put(
        "/api/uploads/weights",
        params={"filename": "tiny.safetensors"},
        content=(tiny_root / "weights.safetensors").read_bytes(),
    )
    assert weights.status_code == 201, weights.text
    refs = {}
    for name in ("calib", "val"):
        archive = _dataset_zip(tiny_root / name)
        upload = client.put("/api/uploads/datasets", params={"filename": f"{name}.zip"}, content=archive)
        assert upload.status_code == 201, upload.text
        assert upload.json()["classes"] == 10
        refs[name] = upload.json()["ref"]
    spec = spec_json(tiny_job(tiny_root, trials=10)) | {"weights": weights.json()["ref"]} | refs
    response = client.post("/api/jobs", json={"spec": spec})
    assert response.status_code == 201, response.text
    assert wait_final(client, response.json()["id"])["status"] == "done"


def test_oversized_and_unsafe_uploads_are_refused(make_service, tmp_path):
    client = make_service(max_upload_mb=1)
    big = client.put("/api/uploads/weights", params={"filename": "big.safetensors"}, content=b"\0" * (2 << 20))
    assert big.status_code == 413 and "VITPRUNE_MAX_UPLOAD_MB" in big.json()["detail"]
    evil = client.put("/api/uploads/weights", params={"filename": "../evil.pth"}, content=b"x")
    assert evil.status_code == 400
    garbage = client.put("/api/uploads/weights", params={"filename": "w.pth"}, content=b"not a checkpoint")
    assert garbage.status_code == 400
    assert not any((tmp_path / "home" / "artifacts" / "uploads" / "weights").glob("*"))  # nothing kept


def test_an_imported_device_table_is_listed_and_usable(make_service, tiny_root, tmp_path):
    client = make_service()
    spec = describe(tiny_model())
    table = Registry(tmp_path / "profiles").table("fpga", spec, [1])
    body = table.model_dump_json(by_alias=True)
    response = client.post("/api/devices", params={"name": "my-board"}, content=body)
    assert response.status_code == 201, response.text
    assert "my-board" in [d["name"] for d in client.get("/api/devices").json()]
    assert client.get("/api/devices/my-board").json()["table"]["kind"] == "imported"
    broken = json.loads(body)
    broken["entries"][0]["median_ms"] = -1
    refused = client.post("/api/devices", params={"name": "broken"}, content=json.dumps(broken))
    assert refused.status_code == 400 and "median_ms" in refused.json()["detail"]
    assert client.post("/api/devices", params={"name": "Bad Name"}, content=body).status_code == 400
    job = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, device="my-board", trials=4))})
    assert job.status_code == 201, job.text
    assert wait_final(client, job.json()["id"])["status"] == "done"


def test_cancelling_a_running_job_stops_its_worker_within_seconds(make_service, tiny_root):
    client = make_service()
    job_id = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root, trials=5000))}).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}").json()["progress"]["done"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    time.sleep(3)  # the worker notices at its next lease renewal (1 s here) and stops after the trial in hand
    trials = len(client.get(f"/api/jobs/{job_id}/trials").json())
    time.sleep(2)
    assert len(client.get(f"/api/jobs/{job_id}/trials").json()) == trials, "trials went on after cancellation"
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_token_protects_writes_and_optionally_reads(make_service, tiny_root):
    client = make_service(worker=False, token="s3cret")
    body = {"spec": spec_json(tiny_job(tiny_root))}
    refused = client.post("/api/jobs", json=body)
    assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
    assert "s3cret" not in refused.text
    assert client.post("/api/jobs", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/jobs", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 201
    assert client.get("/api/jobs").status_code == 200  # reads are public unless protect_reads
    assert client.put("/api/uploads/weights", params={"filename": "w.pth"}, content=b"x").status_code == 401

    private = make_service(worker=False, token="s3cret", protect_reads=True, home=client.app.state.settings.home)
    assert private.get("/api/jobs").status_code == 401
    assert private.get("/api/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert private.get("/api/health").status_code == 200  # health checks carry no token


def test_cors_is_closed_and_the_token_is_never_logged_or_returned(make_service, caplog):
    client = make_service(worker=False, token="s3cret-token")
    origin = {"Origin": "https://elsewhere.example"}
    preflight = client.options(
        "/api/jobs", headers=origin | {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x"}
    )
    assert "access-control-allow-origin" not in preflight.headers  # browsers on other sites may not call us
    assert "access-control-allow-origin" not in client.get("/api/jobs", headers=origin).headers
    with caplog.at_level(logging.DEBUG):
        answers = [
            client.get("/api/health"),
            client.get("/openapi.json"),
            client.get("/", headers={"Accept": "text/html"}),
            client.post("/api/jobs", json={}, headers={"Authorization": "Bearer s3cret-token"}),
            client.post("/api/jobs", json={}, headers={"Authorization": "Bearer s3cret-wrong"}),
        ]
    assert answers[0].status_code == 200 and answers[3].status_code == 422 and answers[4].status_code == 401
    assert not any("s3cret" in answer.text for answer in answers)
    assert "s3cret" not in caplog.text
    assert "s3cret" not in repr(client.app.state.settings)


def test_a_job_that_searches_precision_serves_float_and_quantised_models_on_one_front(make_service, tiny_root):
    client = make_service()
    space = {"token_blocks": [1, 2], "heads": True, "group": 2, "precisions": ["fp32", "int8"]}
    spec = spec_json(tiny_job(tiny_root, trials=10, budget_ratio=1.0, space=space))
    job = wait_final(client, client.post("/api/jobs", json={"spec": spec}).json()["id"])
    assert job["status"] == "done", job
    models = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"]
    assert {m["precision"] for m in models} == {"fp32", "int8"}
    int8 = next(m for m in models if m["precision"] == "int8")
    assert int8["summary"].endswith("; int8") and int8["metrics"]["device"]["dtype"] == "int8"
    trials = client.get(f"/api/jobs/{job['id']}/trials").json()
    assert {t["precision"] for t in trials} == {"fp32", "int8"}
    download = client.get(f"/api/models/{int8['id']}/download", params={"format": "config"})
    assert download.status_code == 200 and download.json()["quantisation"]["precision"] == "int8"


def test_a_job_that_fine_tunes_serves_each_trained_model_beside_its_source(make_service, tiny_root):
    client = make_service()
    fine_tune = {"models": 1, "steps": 2, "batch_size": 8, "holdout": 0.0, "mixup": 0.0, "cutmix": 0.0}
    spec = spec_json(tiny_job(tiny_root, trials=12, fine_tune=fine_tune))
    job = wait_final(client, client.post("/api/jobs", json={"spec": spec}).json()["id"])
    assert job["status"] == "done", job
    models = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"]
    tuned = [m for m in models if m["variant"] == "fine-tuned"]
    assert len(tuned) == 1 and sum(m["variant"] == "searched" for m in models) == len(models) - 1
    (model,) = tuned
    source = next(m for m in models if m["variant"] == "searched" and m["trial"] == model["trial"])
    assert model["id"] != source["id"] and model["sha256"] != source["sha256"]
    assert model["metrics"]["before_fine_tune"]["val"] == source["metrics"]["val"]
    assert model["calib_accuracy"] is None and model["metrics"]["fine_tune"]["steps"] == 2
    download = client.get(f"/api/models/{model['id']}/download", params={"format": "safetensors"})
    assert download.status_code == 200
    assert f"trial{model['trial']}-fine-tuned.safetensors" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == model["sha256"]
