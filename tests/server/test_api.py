"""The REST API end to end on the embedded default (SQLite, local artifact store, in-process worker)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile

import numpy as np
import onnxruntime
import pytest
import torch

from latency_models.registry import Registry
from pruning import describe
from pruning.bundle import load_bundle
from tests.search.tiny import tiny_job, tiny_model
from tests.server.conftest import spec_json, wait_final


def test_a_finished_job_has_its_trials_its_pareto_models_and_progress(finished):
    client, job = finished
    assert job["progress"]["done"] == job["progress"]["total"] == 12
    assert job["budget_ms"] < job["dense_ms"] and job["started_at"] and job["finished_at"]
    trials = client.get(f"/api/jobs/{job['id']}/trials").json()
    assert len(trials) >= 12 and all(t["state"] in ("complete", "fail", "pruned") for t in trials)
    pareto = client.get(f"/api/jobs/{job['id']}/pareto").json()
    models = pareto["models"]
    assert models, "a done job has at least one Pareto model"
    assert all(m["predicted_ms"] <= pareto["budget_ms"] for m in models)
    assert [m["predicted_ms"] for m in models] == sorted(m["predicted_ms"] for m in models)
    # Along the front, faster models are not more accurate on calibration images (else one dominates).
    accuracy = [m["calib_accuracy"] for m in models]
    assert accuracy == sorted(accuracy)
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
