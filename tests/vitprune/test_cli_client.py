"""`vitprune submit`, `jobs` and `download` against a small in-memory FastAPI app with the service's REST API.

The app below implements only what the client uses, the way the service answers it (status codes, `detail`
messages, the checksum header); it runs in-process through TestClient, so no socket is opened.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient

from search.job import JobSpec
from vitprune import cli_client

SERVER = "http://vitprune.test:8000"
WEIGHTS = b"pretend safetensors bytes"


class FakeService:
    """What the fake app received and holds: submitted bodies, uploads, request headers, jobs and models."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.weights: dict[str, bytes] = {}
        self.datasets: dict[str, list[str]] = {}
        self.headers: list[dict[str, str]] = []
        self.downloads: list[str] = []
        self.jobs: dict[int, dict] = {}
        self.models = {
            1: (b"model one weights", None),  # the right checksum
            2: (b"model two weights", "0" * 64),  # a checksum that does not match: a corrupt transfer
        }

    def add_job(self, name: str, status: str = "queued", total: int = 4, model: str = "deit_tiny_patch16_224") -> dict:
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = {
            "id": job_id,
            "name": name,
            "status": status,
            "model": model,
            "device": "mobile-cpu",
            "budget_ms": 12.5,
            "dense_ms": 17.9,
            "error": None,
            "progress": {"done": 0, "total": total, "feasible": 0, "best_accuracy": None, "eta_s": None},
        }
        return self.jobs[job_id]

    def advance(self, job: dict) -> None:
        """Each poll runs two more trials; a job named 'will fail' fails half way."""
        progress = job["progress"]
        if job["status"] in ("done", "failed", "cancelled"):
            return
        progress["done"] = min(progress["total"], progress["done"] + 2)
        progress["feasible"], progress["best_accuracy"] = progress["done"] - 1, 70.0 + progress["done"]
        job["status"] = "running"
        if job["name"] == "will fail" and progress["done"] * 2 >= progress["total"]:
            job["status"], job["error"] = "failed", "out of memory while evaluating trial 3"
        elif progress["done"] == progress["total"]:
            job["status"] = "done"


def make_app(service: FakeService) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def record_headers(request: Request, call_next):
        service.headers.append(dict(request.headers))
        return await call_next(request)

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request) -> dict:
        body = await request.json()
        JobSpec.model_validate(body["spec"])  # the client must send a valid spec, as the service requires
        service.submitted.append(body)
        return service.add_job(body.get("name") or f"{body['spec']['model']} on {body['spec']['device']}")

    @app.put("/api/uploads/weights", status_code=201)
    async def upload_weights(request: Request, filename: str) -> dict:
        data = await request.body()
        ref = f"upload:weights/{len(service.weights) + 1}/{filename}"
        service.weights[ref] = data
        return {"ref": ref, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    @app.put("/api/uploads/datasets", status_code=201)
    async def upload_dataset(request: Request, filename: str) -> dict:
        with zipfile.ZipFile(io.BytesIO(await request.body())) as archive:
            names = archive.namelist()
        ref = f"upload:datasets/{len(service.datasets) + 1}"
        service.datasets[ref] = names
        return {"ref": ref, "classes": len({n.split("/")[0] for n in names}), "images": len(names)}

    @app.get("/api/jobs")
    def jobs(status: str | None = None, limit: int = 100) -> list[dict]:
        return [job for job in service.jobs.values() if status in (None, job["status"])][:limit]

    def find(job_id: int) -> dict:
        if job_id not in service.jobs:
            raise HTTPException(404, f"no job {job_id}; list jobs with GET /api/jobs")
        return service.jobs[job_id]

    @app.get("/api/jobs/{job_id}")
    def job(job_id: int) -> dict:
        found = find(job_id)
        service.advance(found)
        return found

    @app.get("/api/jobs/{job_id}/pareto")
    def pareto(job_id: int) -> dict:
        found = find(job_id)
        models = [
            {"id": 1, "trial": 3, "predicted_ms": 9.8, "measured_ms": 10.1, "val_top1": 68.5, "calib_accuracy": 72.0},
            {"id": 2, "trial": 7, "predicted_ms": 12.1, "measured_ms": None, "val_top1": 71.0, "calib_accuracy": 74.5},
        ]
        return {"budget_ms": 12.5, "dense_ms": 17.9, "models": models if found["status"] == "done" else []}

    @app.get("/api/models/{model_id}/download")
    def download(model_id: int, format: str = "bundle") -> Response:
        if model_id not in service.models:
            raise HTTPException(404, f"no model {model_id}")
        service.downloads.append(format)
        data, checksum = service.models[model_id]
        headers = {
            "X-Checksum-SHA256": checksum or hashlib.sha256(data).hexdigest(),
            "Content-Disposition": f'attachment; filename="vitprune-job1-trial{model_id}.{format}"',
        }
        return Response(data, media_type="application/octet-stream", headers=headers)

    return app


@pytest.fixture
def service(monkeypatch) -> FakeService:
    """The fake service, and the client's HTTP layer pointed at it (the token goes in as the real client sends it)."""
    fake = FakeService()
    app = make_app(fake)
    monkeypatch.setattr(
        cli_client,
        "client",
        lambda server, token: TestClient(app, base_url=server, headers=cli_client.auth_headers(token)),
    )
    monkeypatch.delenv(cli_client.TOKEN_ENV, raising=False)
    monkeypatch.setenv(cli_client.SERVER_ENV, SERVER)
    return fake


def run(capsys, *argv: object) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vitprune")
    commands = parser.add_subparsers(dest="command", required=True)
    cli_client.add_commands(commands)
    args = parser.parse_args([str(a) for a in argv])
    code = args.run(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def job_options(weights: object, calib: object, *more: object) -> list[object]:
    return [
        "--model", "deit_tiny_patch16_224", "--weights", weights, "--device", "mobile-cpu",
        "--budget-ratio", "0.7", "--calib", calib, "--trials", "5", *more,
    ]  # fmt: skip


def image_folder(root: Path) -> set[str]:
    """An ImageFolder with things that must not be uploaded; returns the archive names that must be."""
    wanted = {"cat/a.jpg", "cat/more/b.PNG", "dog/c.jpeg"}
    for name in [*wanted, "top.jpg", "cat/notes.txt", "dog/.hidden.jpg", ".cache/x.jpg", "dog/.thumbs/y.jpg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    return wanted


def test_submit_sends_the_spec_as_given_and_prints_the_id(service, capsys):
    code, out, _ = run(capsys, "submit", *job_options("/srv/models/deit.safetensors", "/srv/images"), "--name", "n1")
    assert code == 0
    body = service.submitted[0]
    assert body["name"] == "n1"
    # Without --upload the paths are the server's: sent untouched, nothing uploaded.
    assert body["spec"]["weights"] == "/srv/models/deit.safetensors" and body["spec"]["calib"] == "/srv/images"
    assert body["spec"]["trials"] == 5 and body["spec"]["budget_ratio"] == 0.7
    assert not service.weights and not service.datasets
    assert "job 1 queued: n1" in out and f"{SERVER}/jobs/1" in out


def test_submit_a_job_file(service, capsys, tmp_path):
    spec = JobSpec(model="vit_small", pretrained=True, device="host-cpu", budget_ms=8.0, calib="/srv/images")
    (tmp_path / "job.json").write_text(spec.model_dump_json())
    code, out, _ = run(capsys, "submit", "--job", tmp_path / "job.json", "--server", "vitprune.test:8000/")
    assert code == 0
    assert JobSpec.model_validate(service.submitted[0]["spec"]) == spec
    assert "name" not in service.submitted[0]  # the server picks the default label
    assert "dashboard: http://vitprune.test:8000/jobs/1" in out


def test_upload_replaces_local_paths_with_refs_and_sends_only_images(service, capsys, tmp_path):
    weights = tmp_path / "my model.safetensors"
    weights.write_bytes(WEIGHTS)
    wanted = image_folder(tmp_path / "calib")
    image_folder(tmp_path / "val")
    code, _, err = run(
        capsys, "submit", *job_options(weights, tmp_path / "calib", "--val", tmp_path / "val", "--upload")
    )
    assert code == 0, err
    spec = service.submitted[0]["spec"]
    assert spec["weights"] == "upload:weights/1/my_model.safetensors"
    assert service.weights[spec["weights"]] == WEIGHTS
    assert (spec["calib"], spec["val"]) == ("upload:datasets/1", "upload:datasets/2")
    # ImageFolder layout, class folder first; no text files, hidden files or folders, or class-less images.
    assert set(service.datasets["upload:datasets/1"]) == wanted
    assert set(service.datasets["upload:datasets/2"]) == wanted


def test_upload_of_a_missing_weights_file_is_refused_before_submitting(service, capsys, tmp_path):
    image_folder(tmp_path / "calib")
    code, _, err = run(capsys, "submit", *job_options(tmp_path / "nope.safetensors", tmp_path / "calib", "--upload"))
    assert code == 2 and "nope.safetensors: no such file" in err
    assert not service.submitted


def test_wait_follows_the_job_to_done(service, capsys):
    argv = ["submit", *job_options("/srv/w.safetensors", "/srv/images"), "--wait", "--interval", "0"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "job 1 done" in out and "best calibration top-1 74.0%" in out  # an older server: calibration only


def test_wait_exits_1_when_the_job_fails(service, capsys):
    argv = ["submit", *job_options("/srv/w.safetensors", "/srv/images"), "--name", "will fail", "--wait"]
    code, out, err = run(capsys, *argv, "--interval", "0")
    assert code == 1
    assert "job 1 failed" in out and "out of memory while evaluating trial 3" in err


def test_jobs_lists_filters_and_shows_one_with_its_models(service, capsys):
    service.add_job("first search", status="done")
    service.add_job("second search", status="running", model="vit_small_patch16_224")
    service.jobs[1]["progress"] |= {"done": 4, "best_accuracy": 71.25}
    code, out, _ = run(capsys, "jobs")
    lines = out.splitlines()
    header = ["id", "name", "status", "trials", "best", "val", "top-1", "best", "calib", "top-1", "model"]
    assert code == 0 and lines[0].split() == header
    assert lines[1].split() == ["1", "first", "search", "done", "4/4", "-", "71.2%", "deit_tiny_patch16_224"]
    assert lines[2].split()[-1] == "vit_small_patch16_224"

    code, out, _ = run(capsys, "jobs", "--status", "running", "--json")
    assert code == 0 and [job["id"] for job in json.loads(out)] == [2]

    code, out, _ = run(capsys, "jobs", "1")
    assert code == 0 and "job 1: first search" in out and "12.50 ms" in out
    assert any(line.split()[:5] == ["1", "3", "9.80", "10.10", "68.5%"] for line in out.splitlines())
    assert any(line.split()[:5] == ["2", "7", "12.10", "-", "71.0%"] for line in out.splitlines())


def test_a_server_error_prints_its_detail_and_exits_2(service, capsys):
    code, out, err = run(capsys, "jobs", "99")
    assert code == 2 and not out
    assert "vitprune jobs: error: the server answered 404: no job 99; list jobs with GET /api/jobs" in err


def test_download_streams_the_file_and_verifies_its_checksum(service, capsys, tmp_path):
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    code, out, _ = run(capsys, "download", "1", "--format", "safetensors", "--out", out_dir)
    assert code == 0 and service.downloads == ["safetensors"]
    saved = out_dir / "vitprune-job1-trial1.safetensors"
    assert saved.read_bytes() == b"model one weights"
    assert [p.name for p in out_dir.iterdir()] == [saved.name]  # no temp file left beside it
    assert str(saved) in out

    code, _, _ = run(capsys, "download", "1", "--out", tmp_path / "named.zip")
    assert code == 0 and (tmp_path / "named.zip").read_bytes() == b"model one weights"

    code, _, _ = run(capsys, "download", "1", "--format", "config", "--out", f"{tmp_path}/new/")
    assert code == 0 and [p.name for p in (tmp_path / "new").iterdir()] == ["vitprune-job1-trial1.config"]


def test_the_server_cannot_choose_the_folder_of_a_download():
    assert cli_client._filename('attachment; filename="../../.bashrc"', "fallback") == ".bashrc"
    assert cli_client._filename('attachment; filename=".."', "fallback") == "fallback"
    assert cli_client._filename("attachment; filename*=utf-8''m%C3%B6del.zip", "fallback") == "mödel.zip"


def test_a_checksum_mismatch_fails_and_leaves_no_file(service, capsys, tmp_path):
    code, _, err = run(capsys, "download", "2", "--out", tmp_path / "model.zip")
    assert code == 2 and "checksum mismatch" in err
    assert list(tmp_path.iterdir()) == []


def test_the_token_is_sent_as_a_bearer_header(service, capsys, monkeypatch):
    assert run(capsys, "jobs")[0] == 0
    assert "authorization" not in service.headers[-1]
    assert run(capsys, "jobs", "--token", "s3cret")[0] == 0
    assert service.headers[-1]["authorization"] == "Bearer s3cret"
    monkeypatch.setenv(cli_client.TOKEN_ENV, "from-env")
    assert run(capsys, "jobs")[0] == 0
    assert service.headers[-1]["authorization"] == "Bearer from-env"


def test_the_real_client_carries_server_and_token():
    with cli_client.client("http://example.test:8000", "t0k") as http:
        assert http.headers["authorization"] == "Bearer t0k" and str(http.base_url) == "http://example.test:8000"
    with cli_client.client("http://example.test:8000", None) as http:
        assert "authorization" not in http.headers


def test_an_unreachable_server_says_how_to_start_one(capsys, monkeypatch):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(cli_client, "client", lambda server, token: httpx.Client(transport=httpx.MockTransport(refuse)))
    monkeypatch.delenv(cli_client.SERVER_ENV, raising=False)
    code, _, err = run(capsys, "jobs")
    assert code == 2
    assert f"not reachable at {cli_client.DEFAULT_SERVER}" in err and "vitprune serve" in err


def test_validation_errors_are_summarised():
    response = httpx.Response(
        422, json={"detail": [{"loc": ["body", "spec", "trials"], "msg": "Input should be greater than 0"}]}
    )
    with pytest.raises(cli_client.CommandError, match=r"422: spec\.trials: Input should be greater than 0"):
        cli_client._check(response)


def test_a_right_to_left_override_in_a_name_does_not_reorder_the_job_list(service, capsys):
    # U+202E in a name would print the rest of its line (status, trials, model) backwards in a terminal.
    service.add_job("evil\u202eabc\u2066x\u2069", status="done")
    code, out, _ = run(capsys, "jobs")
    assert code == 0 and not any(char in out for char in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert out.splitlines()[1].split()[:3] == ["1", "evilabcx", "done"]
    code, out, _ = run(capsys, "jobs", "1")
    assert code == 0 and "job 1: evilabcx" in out


def test_accuracies_are_labelled_with_their_images_and_validation_leads(service, capsys):
    """A calibration top-1 (what the search optimised) is never shown as if it were the held-out one."""
    job = service.add_job("labelled", status="done")
    job["progress"] |= {"done": 4, "best_accuracy": 77.5, "best_calib_accuracy": 77.5}
    job |= {
        "best_val_accuracy": 74.5,
        "val_images": {"name": "imagenet-sample", "images": 500},
        "calib_images": {"name": "imagenet-sample (50% of it)", "images": 500},
    }
    code, out, _ = run(capsys, "jobs")
    assert code == 0 and out.splitlines()[1].split()[4:6] == ["74.5%", "77.5%"]  # val top-1, then calib top-1

    code, out, _ = run(capsys, "jobs", "1")
    assert code == 0
    assert "best validation top-1 74.5% (calibration 77.5%)" in out
    assert "images     validation: imagenet-sample (500 images); calibration: imagenet-sample (50% of it)" in out
    header = next(line for line in out.splitlines() if line.startswith("model  trial"))
    assert header.split()[-4:] == ["val", "top-1", "calib", "top-1"]
    assert any(line.split() == ["1", "3", "9.80", "10.10", "68.5%", "72.0%"] for line in out.splitlines())


def _shell(output: str, script: str) -> str:
    """Runs `script` in bash after evaluating the JOB_ID/MODEL_IDS lines of `output`, as the README's tour does."""
    prelude = "eval \"$(printf '%s\\n' \"$OUTPUT\" | grep -E '^(JOB_ID|MODEL_IDS)=')\"\n"
    done = subprocess.run(
        ["bash", "-euc", prelude + script], env={"OUTPUT": output, "PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_submit_prints_the_job_id_as_a_line_a_shell_can_reuse(service, capsys):
    code, out, _ = run(capsys, "submit", *job_options("/srv/w.safetensors", "/srv/images"), "--name", "n1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "job 1 queued: n1" and lines[-1] == "JOB_ID=1"  # the human lines stay, the id comes last
    assert _shell(out, 'echo "jobs $JOB_ID"') == "jobs 1"


def test_submit_wait_also_prints_the_pareto_model_ids_fastest_first(service, capsys):
    service.add_job("the demo job")  # listed first, as after `vitprune serve --demo`: the id is the submitted job's
    argv = ["submit", *job_options("/srv/w.safetensors", "/srv/images"), "--wait", "--interval", "0"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert out.splitlines()[-1] == "MODEL_IDS='1 2'"
    assert _shell(out, 'echo "$JOB_ID|$MODEL_IDS|${MODEL_IDS%% *}"') == "2|1 2|1"


def test_submit_wait_prints_no_model_ids_for_a_job_that_failed(service, capsys):
    argv = ["submit", *job_options("/srv/w.safetensors", "/srv/images"), "--name", "will fail", "--wait"]
    code, out, _ = run(capsys, *argv, "--interval", "0")
    assert code == 1 and "JOB_ID=1" in out.splitlines() and "MODEL_IDS" not in out


def test_shell_lines_quote_what_a_shell_would_split_or_expand():
    assert cli_client.shell_line("JOB_ID", 7) == "JOB_ID=7"
    assert cli_client.shell_line("MODEL_IDS", "") == "MODEL_IDS=''"
    assert cli_client.shell_line("X", "a b$HOME;`x`") == "X='a b$HOME;`x`'"


def test_jobs_show_what_the_model_is_and_how_far_a_preparing_job_is(service, capsys):
    job = service.add_job("DEMO", status="preparing", total=60)
    job |= {
        "model_label": "demo ViT (6 blocks, 96 wide, 32 px, DEMO shapes)",
        "preparation": {"stage": "preparing the demo model: training the ViT", "done": 175, "total": 700},
    }
    code, out, _ = run(capsys, "jobs")
    row = out.splitlines()[1]
    assert code == 0 and "preparing 25%" in row and "demo ViT (6 blocks" in row and "deit_tiny" not in row
    code, out, _ = run(capsys, "jobs", "--status", "preparing")
    assert code == 0 and "DEMO" in out
    service.advance = lambda job: None  # the fake would start the job; it is still preparing
    code, out, _ = run(capsys, "jobs", "1")
    assert code == 0
    assert "status     preparing the demo model: training the ViT 175/700; 0/60 trials" in out
    assert "model      demo ViT (6 blocks, 96 wide, 32 px, DEMO shapes) on mobile-cpu" in out
