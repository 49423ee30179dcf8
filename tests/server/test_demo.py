"""The demo assets: generated shapes, a ViT trained on them that the service loads, and a search job it can run;
and the demo job of `vitprune serve --demo`, listed at once while its model is prepared in the background."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from sqlalchemy import select
from sqlalchemy.orm import Session

from pruning.loading import WeightsError, create_model
from pruning.metrics import predict
from search.context import JobContext, check_job, job_images
from search.job import JobSpec
from server import demo_job as demo_job_module
from server.api.schemas import JobOut
from server.app import create_app
from server.db.engine import make_engine
from server.db.models import Job
from server.demo import (
    CLASSES,
    DEMO_KWARGS,
    DEMO_LABEL,
    DEMO_MODEL,
    N_CLASSES,
    DemoAssets,
    _pictures,
    demo_assets_at,
    demo_job,
    make_demo_assets,
)
from server.demo_job import DEMO_NAME, start_demo
from server.jobs import cancel_job, model_label
from server.settings import Settings
from tests.server.conftest import wait_final
from tests.server.processes import Service, service_env
from vitprune.cli import main

CHROMIUM = os.environ.get("VITPRUNE_CHROMIUM", "/usr/bin/chromium")

# Short: training goes on past it to a floor of steps, which is what lifts the model above chance on a busy machine.
TRAIN_STEPS = 150  # past the plateau at chance, in seconds


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> DemoAssets:
    return make_demo_assets(tmp_path_factory.mktemp("demo"), steps=TRAIN_STEPS, progress=False)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_assets_are_labelled_image_folders_of_the_demo_classes(assets):
    assert assets.class_map.read_text(encoding="utf-8").splitlines() == list(CLASSES)
    for folder in (assets.calib, assets.val):
        assert sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            assert len(list((folder / name).glob("*.png"))) == 50
    # It says it is a demo wherever someone may look: the weights and the folder.
    with safe_open(str(assets.weights), "pt") as weights:
        assert "not ImageNet" in weights.metadata()["demo"]
    assert "not ImageNet" in (assets.weights.parent / "README.txt").read_text(encoding="utf-8")


def test_calibration_and_validation_share_no_image(assets):
    calib, val = _digests(assets.calib), _digests(assets.val)
    assert len(calib) == len(val) == 50 * N_CLASSES
    assert len(set(calib.values())) == len(calib) and len(set(val.values())) == len(val)
    assert not set(calib.values()) & set(val.values())


def test_weights_load_strictly_and_beat_chance_on_val_as_the_service_loads_it(assets):
    model = create_model(DEMO_MODEL, weights=assets.weights, **DEMO_KWARGS)
    val = job_images(demo_job(assets), model, "val")
    top1 = float((predict(model, val).argmax(1) == val.labels).float().mean() * 100)
    assert len(val) == 50 * N_CLASSES
    assert top1 == pytest.approx(assets.accuracy, abs=1e-3)
    assert top1 > 1.5 * 100 / N_CLASSES, f"{top1:.1f}% after {TRAIN_STEPS} training steps"
    with pytest.raises(WeightsError, match="do not fit"):  # strict: a model of another shape refuses them
        create_model(DEMO_MODEL, weights=assets.weights, **(DEMO_KWARGS | {"depth": 5}))


def test_a_second_call_reuses_the_finished_assets(assets):
    files = [assets.weights, *assets.calib.rglob("*.png"), *assets.val.rglob("*.png")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    start = time.monotonic()
    again = make_demo_assets(assets.weights.parent, steps=TRAIN_STEPS, progress=False)
    assert time.monotonic() - start < 1.0
    assert again == assets
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_images_are_drawn_again_identically_from_the_seed(assets):
    # Redrawing the validation split in memory gives the saved pixels; another seed gives other pictures.
    for label, index, picture in _pictures(seed=0, split=2, per_class=50):
        name = CLASSES[label]
        with Image.open(assets.val / name / f"{name}_2_{index:04d}.png") as saved:
            assert np.array_equal(np.asarray(saved), np.asarray(picture))
    _, _, first = next(_pictures(seed=0, split=2, per_class=1))
    _, _, other = next(_pictures(seed=1, split=2, per_class=1))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_the_demo_job_is_valid_and_its_budget_can_be_met_on_the_phone_cpu(assets):
    job = demo_job(assets, trials=7)
    assert JobSpec.model_validate_json(job.model_dump_json()) == job
    assert (job.device, job.batch, job.budget_ratio, job.trials) == ("mobile-cpu", 1, 0.6, 7)
    assert job.space.tokens == "topk" and job.space.heads and job.space.mlp
    assert max(job.space.token_blocks) < DEMO_KWARGS["depth"]
    dense_ms, budget_ms = check_job(job)
    context = JobContext.prepare(job)
    assert context.budget_ms == pytest.approx(0.6 * context.dense_ms) == pytest.approx(budget_ms)
    assert context.dense_ms == pytest.approx(dense_ms)
    assert len(context.calib) == 50 * N_CLASSES and context.importance is not None
    assert context.spec.blocks[0].heads == DEMO_KWARGS["num_heads"]
    # Not just feasible: the cheapest config must leave the search real room under the budget.
    cheapest = context.space.config(context.space.cheapest_params())
    assert context.predictor.predict(cheapest, context.spec, job.batch).ms < 0.5 * context.dense_ms


# -- the demo job of `vitprune serve --demo`: listed at once, prepared in the background, then searched ------------


class FakeTraining:
    """Stands in for `make_demo_assets`: reports training steps until released (returns the assets) or stopped
    (its report raises, as when the job is cancelled or the server stops)."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()
        self.stopped_by: BaseException | None = None
        self.calls = 0

    def __call__(self, root: Path, *, steps: int, progress: bool, report) -> DemoAssets:
        self.calls += 1
        try:
            step = 0
            while not self.release.is_set():
                report("training the ViT", step, steps)
                self.started.set()
                step += 1
                time.sleep(0.01)
        except Exception as error:
            self.stopped_by = error
            raise
        return demo_assets_at(root)


@pytest.fixture(params=["sqlite", "postgresql"])
def demo_settings(request, tmp_path) -> Settings:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_db_url")
    return Settings(home=tmp_path / "home", db_url=url)


@pytest.fixture
def fake_training(monkeypatch) -> FakeTraining:
    fake = FakeTraining()
    monkeypatch.setattr(demo_job_module, "make_demo_assets", fake)
    monkeypatch.setattr(demo_job_module, "REPORT_EVERY_S", 0.05)
    return fake


def _job(settings: Settings, job_id: int | None = None) -> JobOut:
    """The only job, as the API shows it."""
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            jobs = session.scalars(select(Job).order_by(Job.id)).all()
            assert len(jobs) == 1, [(job.id, job.name, job.status) for job in jobs]  # never a second demo job
            assert job_id is None or jobs[0].id == job_id
            return JobOut.of(jobs[0])
    finally:
        engine.dispose()


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return found


def test_the_demo_job_is_listed_preparing_at_once_then_queued_when_its_model_exists(demo_settings, fake_training):
    demo = start_demo(demo_settings, steps=TRAIN_STEPS)
    job = _job(demo_settings, demo.job_id)
    assert job.status == "preparing" and job.name == DEMO_NAME
    # Shown as what it is; the spec keeps the timm name the model is built from.
    assert (job.model, job.model_label) == (DEMO_MODEL, DEMO_LABEL) == (job.spec["model"], DEMO_LABEL)
    assert job.preparation is not None and job.preparation.stage.startswith("preparing the demo model: ")
    assert fake_training.started.wait(30)
    progress = _wait_for(lambda: (p := _job(demo_settings).preparation) and p.done > 0 and p, "progress")
    assert progress.stage == "preparing the demo model: training the ViT" and progress.total == TRAIN_STEPS
    fake_training.release.set()
    demo.thread.join(30)
    queued = _job(demo_settings, demo.job_id)
    assert (queued.status, queued.preparation, queued.error) == ("queued", None, None)  # now a worker claims it
    assert start_demo(demo_settings) is None and _job(demo_settings).status == "queued"  # a restart adds nothing


def test_cancelling_a_preparing_demo_job_stops_its_training(demo_settings, fake_training):
    demo = start_demo(demo_settings)
    assert fake_training.started.wait(30)
    engine = make_engine(demo_settings.database_url)
    with Session(engine) as session:
        assert cancel_job(session, session.get(Job, demo.job_id))
    engine.dispose()
    demo.thread.join(30)
    assert not demo.thread.is_alive() and fake_training.stopped_by is not None
    assert _job(demo_settings).status == "cancelled"


def test_a_server_stopped_while_preparing_leaves_the_job_preparing_and_the_next_start_resumes_it(
    demo_settings, fake_training
):
    first = start_demo(demo_settings)
    assert fake_training.started.wait(30)
    first.stop()
    assert not first.thread.is_alive() and fake_training.stopped_by is not None
    assert _job(demo_settings).status == "preparing"
    fake_training.release.set()
    again = start_demo(demo_settings)
    again.thread.join(30)
    assert again.job_id == first.job_id and fake_training.calls == 2
    assert _job(demo_settings, first.job_id).status == "queued"


def test_a_failure_while_preparing_fails_the_job_saying_why_and_the_next_start_retries(
    tmp_path, monkeypatch, caplog
):
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    (settings.home / "demo").write_text("a file where the demo folder goes")  # every write into it fails
    demo = start_demo(settings)
    demo.thread.join(60)
    job = _job(settings, demo.job_id)
    assert job.status == "failed" and job.finished_at is not None and job.preparation is None
    assert job.error.startswith("preparing the demo model failed: Not a directory.")
    assert "vitprune serve --demo" in job.error and str(tmp_path) not in job.error  # no server folders shown
    (settings.home / "demo").unlink()
    fake = FakeTraining()
    fake.release.set()
    monkeypatch.setattr(demo_job_module, "make_demo_assets", fake)
    retry = start_demo(settings)
    retry.thread.join(30)
    job = _job(settings, demo.job_id)
    assert (job.status, job.error, job.finished_at) == ("queued", None, None)


def test_prepared_assets_are_searched_by_the_service_worker(assets, tmp_path):
    settings = Settings(home=tmp_path / "home", heartbeat_s=1, poll_s=0.2)
    shutil.copytree(assets.weights.parent, settings.home / "demo")  # a finished preparation: reused at once
    demo = start_demo(settings, steps=TRAIN_STEPS, trials=3)
    demo.thread.join(60)
    assert _job(settings, demo.job_id).status == "queued"
    with TestClient(create_app(settings)) as client:
        job = wait_final(client, demo.job_id, timeout=300)
        assert job["status"] == "done" and job["progress"]["done"] == 3, job
        assert job["model_label"] == DEMO_LABEL and job["preparation"] is None
        trials = client.get(f"/api/jobs/{demo.job_id}/trials").json()
        assert [trial["state"] for trial in trials] == ["complete"] * 3


# -- `vitprune serve --demo` as a user starts it: the service answers while the demo model is still being made ----


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory) -> Iterator[Service]:
    """`vitprune serve --demo` in a subprocess on a fresh home, waited for until its API answers."""
    home = tmp_path_factory.mktemp("demo-serve")
    env = service_env(f"sqlite:///{home / 'vitprune.db'}", home, [])
    service = Service(env, home / "serve.log", "--demo")
    try:
        yield service
    finally:
        service.stop()


def _demo_row(service: Service) -> dict:
    jobs = service.get("/api/jobs").json()
    assert [job["name"] for job in jobs] == [DEMO_NAME], jobs
    return jobs[0]


def test_serve_demo_answers_while_the_demo_model_is_prepared_and_shows_its_progress(demo_service, capsys):
    # The API and the dashboard answer while the demo model is still being made (it takes minutes).
    first = _demo_row(demo_service)
    assert first["status"] == "preparing", first
    assert first["model_label"] == DEMO_LABEL and first["model"] == DEMO_MODEL
    page = demo_service.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert demo_service.get(f"/jobs/{first['id']}").status_code == 200
    # ... and the preparation moves on: a later stage, or further in the same one.
    seen = first["preparation"]

    def moved() -> dict | None:
        job = _demo_row(demo_service)
        now = job["preparation"] or {}
        if job["status"] != "preparing" or (now.get("stage"), now.get("done")) != (seen["stage"], seen["done"]):
            return job
        return None

    later = _wait_for(moved, "progress of the demo's preparation", timeout=180)
    assert later["status"] in ("preparing", "queued", "running"), later
    assert main(["jobs", "--server", demo_service.url]) == 0
    listed = capsys.readouterr().out
    assert DEMO_LABEL in listed and "deit_tiny_patch16_224" not in listed
    assert main(["jobs", str(first["id"]), "--server", demo_service.url]) == 0
    shown = capsys.readouterr().out
    assert f"model      {DEMO_LABEL} on mobile-cpu" in shown
    if later["status"] == "preparing":
        assert "status     preparing the demo model: " in shown


def test_the_dashboard_shows_the_demo_job_preparing_with_its_progress(demo_service):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (set VITPRUNE_CHROMIUM to its path)")
    job = _demo_row(demo_service)
    if job["status"] != "preparing":
        pytest.skip("the demo model was ready before the browser looked")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(demo_service.url + "/")
            row = page.locator(f"#jobs tbody tr[data-job-id='{job['id']}']")
            sync_api.expect(row.locator(".badge")).to_have_text("preparing")
            label = row.locator("[data-preparing] .progress-label")
            sync_api.expect(label).to_contain_text("preparing the demo model: ")
            sync_api.expect(row).to_contain_text(DEMO_LABEL)
            page.goto(f"{demo_service.url}/jobs/{job['id']}")
            sync_api.expect(page.locator("#progress-text")).to_contain_text("preparing the demo model: ")
            sync_api.expect(page.locator("#job-subtitle")).to_contain_text(DEMO_LABEL)
            sync_api.expect(page.locator("#job-status")).to_have_text("preparing")
            assert not errors, errors
        finally:
            browser.close()


def test_a_job_is_labelled_with_the_model_options_it_changes():
    plain = JobSpec(model="deit_tiny_patch16_224", pretrained=True, device="mobile-cpu", budget_ms=8.0, calib="/c")
    assert model_label(plain) == "deit_tiny_patch16_224"
    narrowed = plain.model_copy(update={"model_kwargs": {"depth": 6, "embed_dim": 96}})
    assert model_label(narrowed) == "deit_tiny_patch16_224 (depth=6, embed_dim=96)"
    long = plain.model_copy(update={"model_kwargs": {f"option_{i}": i for i in range(40)}})
    assert len(model_label(long)) == 200 and model_label(long).endswith("…)")
