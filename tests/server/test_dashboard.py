"""The dashboard in a real browser: headless Chromium against the real app served by uvicorn.

One service (SQLite on a temp home, in-process worker) runs two small jobs to the end; every test
then drives the pages the way a user would and checks what they show against the REST API.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.settings import Settings
from tests.search.tiny import KWARGS, tiny_job
from tests.server.conftest import FINAL, spec_json

CHROMIUM = os.environ.get("VITPRUNE_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (set VITPRUNE_CHROMIUM to its path)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@dataclass
class Service:
    url: str
    api: httpx.Client
    jobs: list[dict]
    tiny_root: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_final(api: httpx.Client, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := api.get(f"/api/jobs/{job_id}").json())["status"] not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout} s"
        time.sleep(0.2)
    return job


TUNE = {"models": 1, "steps": 2, "batch_size": 8, "holdout": 0.0, "mixup": 0.0, "cutmix": 0.0}
"""The second job fine-tunes its best model: the pages show it beside the models the search found."""


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_root: Path) -> Iterator[Service]:
    """The real app on a free port, with two small jobs run to the end (the second for comparing)."""
    settings = Settings(home=tmp_path_factory.mktemp("dashboard"), roots=[tiny_root], heartbeat_s=1, poll_s=0.2)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as api:
            jobs = []
            for name, changes in (
                ("tiny", {"trials": 10}),
                ("tiny seed 3", {"trials": 8, "seed": 3, "fine_tune": TUNE}),
            ):
                body = {"spec": spec_json(tiny_job(tiny_root, **changes)), "name": name}
                response = api.post("/api/jobs", json=body)
                assert response.status_code == 201, response.text
                jobs.append(response.json())
            jobs = [_wait_final(api, job["id"]) for job in jobs]
            assert [job["status"] for job in jobs] == ["done", "done"], jobs
            yield Service(url, api, jobs, tiny_root)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser, service: Service) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.service = service
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def open(self, path: str):
        response = self.page.goto(self.service.url + path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        return self.page

    def plot(self, element_id: str, expression: str):
        """Evaluates `expression` with `plot` bound to the plotly div, once the plot has data."""
        self.page.wait_for_function("id => document.getElementById(id)?.data", arg=element_id)
        script = f"id => {{ const plot = document.getElementById(id); return {expression}; }}"
        return self.page.evaluate(script, element_id)


@pytest.fixture
def page(browser, service: Service) -> Iterator[Page]:
    opened = Page(browser, service)
    yield opened
    opened.context.close()


def _pareto(service: Service, job_id: int) -> dict:
    return service.api.get(f"/api/jobs/{job_id}/pareto").json()


def _tokens_kept(config: dict, start: int) -> list[int | None]:
    """Patch tokens after each block: top-k keeps ceil(r·N); from a threshold block on, a count per image."""
    n, per_image, kept = start, False, []
    for block in config["blocks"]:
        op = block.get("tokens") or {"kind": "none"}
        per_image = per_image or op["kind"] == "threshold"
        if op["kind"] == "topk" and not per_image:
            n = max(1, math.ceil(op["keep_ratio"] * n))
        kept.append(None if per_image else n)
    return kept


def test_every_page_loads_without_console_errors(page: Page, service: Service) -> None:
    job = service.jobs[0]
    model = _pareto(service, job["id"])["models"][0]
    ready = {
        "/": "#jobs tbody tr[data-job-id]",
        f"/jobs/{job['id']}": "#front .main-svg",
        f"/models/{model['id']}": "#plot-mlp .main-svg",
        f"/compare?jobs={job['id']},{service.jobs[1]['id']}": "#compare-plot .main-svg",
        "/submit": "#f-device option[value='fpga:zcu102']",
    }
    for path, selector in ready.items():
        page.open(path).wait_for_selector(selector, state="attached")
        page.page.wait_for_load_state("networkidle")
        assert page.errors == [], f"{path}: {page.errors}"


def test_static_files_come_from_the_package_and_nothing_else(service: Service) -> None:
    plotly_js = service.api.get("/static/plotly.min.js")
    assert plotly_js.status_code == 200 and "plotly.js" in plotly_js.text[:200]
    assert plotly_js.headers["content-type"].startswith("text/javascript")
    assert service.api.get("/static/app.js").status_code == 200
    for bad in ("/static/pages.py", "/static/..%2Fpages.py", "/static/.hidden.js", "/static/nope.js"):
        assert service.api.get(bad).status_code == 404, bad


def test_unknown_ids_get_a_not_found_page(service: Service) -> None:
    # Ids that are no number (or none a row can have) get the same page as a deleted one, not the API's JSON 422.
    for path in (
        "/jobs/9999",
        "/models/9999",
        "/models/abc",
        "/jobs/abc",
        "/jobs/0",
        "/jobs/-3",
        "/models/1.5",
        "/jobs/99999999999",
        "/models/%E2%80%AEabc",
    ):
        response = service.api.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert "There is no" in response.text and "\u202e" not in response.text, path
    assert 'There is no model <bdi class="mono">abc</bdi>' in service.api.get("/models/abc").text


def test_jobs_list_shows_every_job_and_compares_the_selected(page: Page, service: Service) -> None:
    jobs = service.api.get("/api/jobs").json()
    tab = page.open("/")
    rows = tab.locator("#jobs tbody tr[data-job-id]")
    rows.first.wait_for()
    assert rows.count() == len(jobs)
    first = service.jobs[0]
    row = tab.locator(f"#jobs tbody tr[data-job-id='{first['id']}']")
    assert first["name"] in row.inner_text() and "done" in row.inner_text()
    assert row.locator(f"a[href='/jobs/{first['id']}']").count() == 1
    for job in service.jobs:
        tab.check(f"#jobs tbody tr[data-job-id='{job['id']}'] input[type=checkbox]")
    tab.click("#compare")
    ids = ",".join(str(job["id"]) for job in service.jobs)
    tab.wait_for_url(f"**/compare?jobs={ids}")
    assert page.errors == []


def test_job_plot_shows_trials_pareto_models_dense_and_budget_and_opens_a_model(page: Page, service: Service) -> None:
    job = service.jobs[0]
    trials = service.api.get(f"/api/jobs/{job['id']}/trials").json()
    pareto = _pareto(service, job["id"])
    models, dense = pareto["models"], pareto["dense"]
    assert models, "the small job should leave Pareto models"
    assert dense is not None and dense["val"]["top1"] is not None
    page.open(f"/jobs/{job['id']}")
    data = page.plot("front", "plot.data.map(t => ({uid: t.uid, n: t.x.length, ids: t.customdata, x: t.x, y: t.y}))")
    by_uid = {trace["uid"]: trace for trace in data}
    assert by_uid["trials"]["n"] == sum(t["evaluated"] for t in trials)
    assert by_uid["skipped"]["n"] == sum(t["state"] == "complete" and not t["evaluated"] for t in trials)
    assert by_uid["pareto"]["n"] == len(models)
    assert by_uid["pareto"]["ids"] == [m["id"] for m in models]
    # The dense model is a point once validated, in place of the line at its latency.
    assert by_uid["dense"]["x"] == [pytest.approx(dense["predicted_ms"])]
    assert by_uid["dense"]["y"] == [pytest.approx(dense["val"]["top1"])]
    shapes = page.plot("front", "plot.layout.shapes.map(s => ({name: s.name, x: s.x0}))")
    assert shapes == [{"name": "budget", "x": pytest.approx(job["budget_ms"])}]

    tab = page.page
    assert tab.locator("#models tbody tr").count() == len(models)
    assert models[0]["summary"] in tab.locator("#models tbody tr").first.inner_text()
    assert tab.locator("#job-status").inner_text() == "done"
    assert tab.locator("#cancel").is_hidden()
    notes = service.api.get(f"/api/jobs/{job['id']}").json()["notes"]
    assert f"Scored on\n{notes['scoring']['compute']}" in tab.locator("#job-stats").inner_text()
    unpaid = [op for op, ratio in notes["token_payoff"].items() if ratio >= 1]  # the job says so plainly
    banner = tab.locator("#job-notes")
    assert banner.is_visible() == bool(unpaid)
    assert all(f"{op} does not pay on {job['device']}" in banner.inner_text() for op in unpaid)
    safetensors = tab.locator(f"#models a[href='/api/models/{models[0]['id']}/download?format=safetensors']")
    assert safetensors.count() == 1

    # Click the first Pareto point where a user would: on its marker in the SVG, scrolled into view.
    point = tab.locator("#front .tracepareto .point").first
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.wait_for_url(f"**/models/{models[0]['id']}")
    assert page.errors == []


def test_model_page_shows_metrics_structure_and_downloads_the_weights(page: Page, service: Service) -> None:
    job = service.jobs[0]
    pareto = _pareto(service, job["id"])
    model, dense = pareto["models"][0], pareto["dense"]
    tab = page.open(f"/models/{model['id']}")
    tab.locator("#metrics .metric").first.wait_for()
    metrics = tab.locator("#metrics").inner_text()
    assert f"{model['val_top1']:.1f}%" in metrics
    assert f"{model['metrics']['val']['top5']:.1f}%" in metrics
    assert model["sha256"] in metrics
    # Each chart: the dense model's widths (from the job's pareto `dense`) behind the pruned config's.
    blocks, config = dense["blocks"], model["config"]
    bars = {
        chart: {t["name"]: t["y"] for t in page.plot(chart, "plot.data.map(t => ({name: t.name, y: t.y}))")}
        for chart in ("plot-tokens", "plot-heads", "plot-mlp")
    }
    assert bars["plot-heads"] == {
        "dense": [b["heads"] for b in blocks],
        "heads": [b["heads"] for b in config["blocks"]],
    }
    assert bars["plot-mlp"] == {
        "dense": [b["mlp_hidden"] for b in blocks],
        "MLP width": [b["mlp_hidden"] for b in config["blocks"]],
    }
    assert bars["plot-tokens"]["dense"] == [b["tokens_in"] for b in blocks]
    kept = _tokens_kept(config, blocks[0]["tokens_in"])
    assert bars["plot-tokens"].get("patch tokens", [None] * len(kept)) == kept
    assert tab.locator("#structure-hint").inner_text().startswith(model["summary"])
    assert json.loads(tab.locator("#config-json").text_content()) == model["config"]

    with tab.expect_download() as started:
        tab.click("#downloads a[data-format='safetensors']")
    download = started.value
    assert download.suggested_filename.endswith(".safetensors")
    assert hashlib.sha256(Path(download.path()).read_bytes()).hexdigest() == model["sha256"]
    assert page.errors == []


def test_a_fine_tuned_model_is_shown_beside_its_source_with_its_figures_before(page: Page, service: Service) -> None:
    job = service.jobs[1]
    models = _pareto(service, job["id"])["models"]
    (tuned,) = [m for m in models if m["variant"] == "fine-tuned"]
    before = tuned["metrics"]["before_fine_tune"]["val"]["top1"]
    tab = page.open(f"/jobs/{job['id']}")
    traces = {t["uid"]: t for t in page.plot("front", "plot.data.map(t => ({uid: t.uid, ids: t.customdata}))")}
    assert traces["fine-tuned"]["ids"] == [tuned["id"]]
    assert tuned["id"] not in traces["pareto"]["ids"] and len(traces["pareto"]["ids"]) == len(models) - 1
    row = tab.locator("#models tbody tr", has=tab.locator(".badge.variant"))
    assert row.count() == 1 and f"trial {tuned['trial']}" in row.inner_text()
    change = tuned["val_top1"] - before
    assert f"({'+' if change >= 0 else '−'}{round(abs(change), 1):g})" in row.inner_text()  # its change
    tab = page.open(f"/models/{tuned['id']}")
    tab.locator("#metrics .metric").first.wait_for()
    assert tab.locator("#model-title").inner_text().startswith("Fine-tuned pruned model")
    assert f"Before fine-tuning\n{before:.1f}%" in tab.locator("#metrics").inner_text()
    assert page.errors == []


def test_token_counts_follow_the_pruning_rules(page: Page, service: Service) -> None:
    """Top-k keeps ceil(r·N) of the tokens reaching it; the package token appears once tokens are dropped."""
    tab = page.open("/")
    config = {
        "package_token": True,
        "blocks": [
            {"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "topk", "keep_ratio": 1.0}},
            {"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "topk", "keep_ratio": 0.7}},
            {"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "none"}},
            {"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "topk", "keep_ratio": 0.45}},
            {"heads": 3, "mlp_hidden": 768, "tokens": {"kind": "threshold", "threshold": 1.0}},
        ],
    }
    rows = tab.evaluate("config => VP.tokenCounts(config, 196)", config)
    # 196 -> ceil(0.7 * 196) = 138 -> ceil(0.45 * 138) = 63; a threshold block keeps a count per image.
    assert [(r["n"], r["pkg"]) for r in rows] == [(196, False), (138, True), (138, True), (63, True), (None, False)]
    assert [r["n"] for r in rows] == _tokens_kept(config, 196)  # the rule the model-page test checks against


def test_submit_form_shows_errors_by_field_and_queues_a_valid_job(page: Page, service: Service) -> None:
    root = service.tiny_root
    tab = page.open("/submit")
    tab.wait_for_selector("#f-device option[value='fpga:zcu102']", state="attached")
    tab.fill("#f-model", "deit_tiny_patch16_224")
    tab.fill("#f-name", "from the form")
    tab.fill("#f-weights", str(root / "weights.safetensors"))
    tab.fill("#f-model_kwargs", json.dumps(KWARGS))
    tab.select_option("#f-device", "fpga:zcu102")
    # The device's hint says what its latencies rest on.
    assert "rests on: specifications only" in tab.locator("[data-field='device'] .hint").inner_text()
    tab.select_option("#f-budget_margin", "auto")
    tab.select_option("#f-budget_kind", "ratio")
    tab.fill("#f-budget", "5")
    tab.fill("#f-calib", str(root / "calib"))
    tab.fill("#f-val", str(root / "val"))
    tab.fill("#f-trials", "6")
    tab.fill("#f-token_blocks", "1, 2")
    tab.check("#f-heads")
    tab.check("#f-mlp")
    tab.fill("#f-group", "2")
    tab.select_option("#f-precisions", "fp32,int8")
    tab.fill("#f-keep_float", "1")
    tab.click("#submit")
    error = tab.locator("[data-field='budget'] .field-error")
    error.wait_for()
    assert "at most 1" in error.inner_text()  # the form's own check, with the schema's bound
    assert tab.locator(".field.invalid").count() == 1
    # A budget no config can meet: the service's 400 explains, next to the budget.
    tab.select_option("#f-budget_kind", "ms")
    tab.fill("#f-budget", "0.001")
    tab.click("#submit")
    tab.wait_for_function("() => document.getElementById('err-budget').textContent.includes('no config')")
    # A path outside the allowed roots: the 400's "weights: ..." lands on the weights field.
    tab.select_option("#f-budget_kind", "ratio")
    tab.fill("#f-budget", "0.93")
    tab.fill("#f-weights", "/nonexistent/model.safetensors")
    tab.click("#submit")
    tab.locator("[data-field='weights'] .field-error").wait_for()
    assert error.is_hidden()
    # The browser logs the refused requests themselves; nothing else may be logged.
    assert [e for e in page.errors if not re.search(r"status of (400|422)", e)] == []

    tab.fill("#f-weights", str(root / "weights.safetensors"))
    # Training images without fine-tuning train nothing: the service's answer lands on their field.
    tab.click("details.advanced summary")
    tab.fill("#f-train", str(root / "calib"))
    tab.click("#submit")
    tab.wait_for_function("() => document.getElementById('err-train').textContent.includes('nothing trains')")
    tab.fill("#f-fine_tune_models", "1")
    tab.fill("#f-fine_tune_steps", "2")
    tab.click("#submit")
    tab.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(tab.url.rsplit("/", 1)[1])
    job = service.api.get(f"/api/jobs/{job_id}").json()
    assert job["name"] == "from the form"
    assert job["spec"]["budget_ratio"] == 0.93 and job["spec"]["trials"] == 6 and job["spec"]["budget_margin"] == "auto"
    assert job["spec"]["fine_tune"]["models"] == 1 and job["spec"]["fine_tune"]["steps"] == 2
    assert job["spec"]["train"] == str(root / "calib")
    assert job["spec"]["space"]["token_blocks"] == [1, 2] and job["spec"]["model_kwargs"] == KWARGS
    assert job["spec"]["space"]["precisions"] == ["fp32", "int8"] and job["spec"]["space"]["keep_float"] == 1
    tab.wait_for_selector("#job-status .badge")


def test_compare_page_draws_one_front_and_dense_point_per_job(page: Page, service: Service) -> None:
    ids = [job["id"] for job in service.jobs]
    page.open(f"/compare?jobs={','.join(map(str, ids))}")
    page.page.wait_for_function("() => document.getElementById('compare-plot').data?.length === 4")
    traces = page.plot("compare-plot", "plot.data.map(t => ({uid: t.uid, name: t.name, n: t.x.length, x: t.x}))")
    assert [trace["uid"] for trace in traces] == [uid for i in ids for uid in (f"job-{i}", f"dense-{i}")]
    for (front, dense), job in zip(zip(traces[::2], traces[1::2], strict=True), service.jobs, strict=True):
        pareto = _pareto(service, job["id"])
        assert job["name"] in front["name"] and job["device"] in front["name"]
        assert front["n"] == sum(m["variant"] == "searched" for m in pareto["models"])
        assert dense["x"] == [pytest.approx(pareto["dense"]["predicted_ms"])]
    assert page.page.locator("#compare-table tbody tr").count() == 2
    # Unticking a job in the picker drops its trace and updates the address.
    page.page.uncheck(f"#job-picker input[value='{ids[1]}']")
    page.page.wait_for_function("() => document.getElementById('compare-plot').data.length === 2")
    assert page.page.url.endswith(f"/compare?jobs={ids[0]}")
    assert page.errors == []


BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _trial_rows(tab) -> list[dict]:
    """The trial table's rows as shown: number, state, and the sortable cells' text."""
    return tab.eval_on_selector_all(
        "#trials tbody tr[data-trial]",
        "rows => rows.map(r => ({number: Number(r.dataset.trial), state: r.dataset.state,"
        " cells: [...r.cells].map(c => c.textContent)}))",
    )


def _wait_rows(tab, count: int) -> None:
    tab.wait_for_function("n => document.querySelectorAll('#trials tbody tr[data-trial]').length === n", arg=count)


def test_job_page_lists_every_trial_and_sorts_and_filters_them(page: Page, service: Service) -> None:
    job = service.jobs[0]
    trials = service.api.get(f"/api/jobs/{job['id']}/trials").json()
    tab = page.open(f"/jobs/{job['id']}")
    _wait_rows(tab, len(trials))
    assert [row["number"] for row in _trial_rows(tab)] == sorted(t["number"] for t in trials)
    assert tab.locator("#trials-card [data-role=count]").inner_text() == str(len(trials))

    # Calibration top-1, best first; the trials never scored (over budget) after every scored one.
    tab.click("#trials th[data-sort=accuracy] button")
    assert tab.get_attribute("#trials th[data-sort=accuracy]", "aria-sort") == "descending"
    by_number = {t["number"]: t for t in trials}
    shown = [by_number[row["number"]] for row in _trial_rows(tab)]
    scored = [t["accuracy"] for t in shown if t["evaluated"]]
    assert scored == sorted(scored, reverse=True) and scored
    assert all(t["evaluated"] for t in shown[: len(scored)])
    # The score the search ranks by (the job's objective), best first, shown beside top-1.
    tab.click("#trials th[data-sort=score] button")
    shown = [by_number[row["number"]] for row in _trial_rows(tab)]
    scores = [t["score"] for t in shown if t["evaluated"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 100 for s in scores)
    assert _trial_rows(tab)[0]["cells"][3] == f"{shown[0]['score']:.2f}%"
    tab.click("#trials th[data-sort=latency_ms] button")  # a second column: fastest first
    latencies = [by_number[row["number"]]["latency_ms"] for row in _trial_rows(tab)]
    assert latencies == sorted(latencies)
    tab.click("#trials th[data-sort=latency_ms] button")  # again: the other way
    assert tab.get_attribute("#trials th[data-sort=latency_ms]", "aria-sort") == "descending"
    assert [by_number[row["number"]]["latency_ms"] for row in _trial_rows(tab)] == sorted(latencies, reverse=True)

    over = [t for t in trials if t["state"] == "complete" and not t["feasible"]]
    within = [t for t in trials if t["state"] == "complete" and t["feasible"]]
    assert over and within, "the small job should have trials on both sides of its budget"
    tab.select_option("#trials-card [data-role=budget]", "over")
    _wait_rows(tab, len(over))
    assert {row["number"] for row in _trial_rows(tab)} == {t["number"] for t in over}
    assert all("over" in row["cells"][5] for row in _trial_rows(tab))
    tab.select_option("#trials-card [data-role=budget]", "within")
    _wait_rows(tab, len(within))
    assert tab.locator("#trials-card [data-role=count]").inner_text() == f"{len(within)} of {len(trials)}"

    # A text filter on the structure, with the budget filter still on.
    word = next(part for part in within[0]["summary"].replace(",", " ").split() if len(part) > 2)
    matching = [t for t in within if word.lower() in t["summary"].lower()]
    tab.fill("#trials-card [data-role=text]", word)
    _wait_rows(tab, len(matching))
    assert all(word.lower() in row["cells"][6].lower() for row in _trial_rows(tab))
    tab.fill("#trials-card [data-role=text]", "no structure says this")
    tab.wait_for_selector("#trials tbody td.empty")
    tab.fill("#trials-card [data-role=text]", "")
    tab.select_option("#trials-card [data-role=budget]", "")
    tab.select_option("#trials-card [data-role=state]", "complete")
    _wait_rows(tab, sum(t["state"] == "complete" for t in trials))

    # A saved Pareto model's trial links to its page.
    model = _pareto(service, job["id"])["models"][0]
    assert tab.locator(f"#trials tr[data-trial='{model['trial']}'] a[href='/models/{model['id']}']").count() == 1
    assert page.errors == []


def _fake_trial(number: int) -> dict:
    over = number % 3 == 0
    return {
        "number": number,
        "state": "complete" if number % 7 else "pruned",
        "accuracy": 0.0 if over else 50 + (number * 37) % 300 / 10,
        "latency_ms": 1 + (number * 13) % 1000 / 100,
        "feasible": not over,
        "evaluated": not over,
        "pareto": False,
        "params": {"keep_3": 0.5},
        "summary": f"{'heads' if number % 2 else 'tokens'} variant {number}",
    }


def test_trial_table_shows_thousands_of_trials_a_page_at_a_time_and_keeps_its_view_on_refresh(
    page: Page, service: Service
) -> None:
    """A long running search: the table puts a page of rows in the document, and each refresh keeps the
    reader's sort, filter and rows shown."""
    job = service.jobs[0]
    running = service.api.get(f"/api/jobs/{job['id']}").json() | {"status": "running"}  # so the page keeps polling
    trials = [_fake_trial(n) for n in range(3000)]
    served = {"trials": trials}
    tab = page.page
    tab.route(f"**/api/jobs/{job['id']}", lambda route: route.fulfill(json=running))
    tab.route(f"**/api/jobs/{job['id']}/trials", lambda route: route.fulfill(json=served["trials"]))
    page.open(f"/jobs/{job['id']}")
    _wait_rows(tab, 200)
    assert tab.locator("#trials-card [data-role=count]").inner_text() == "3000"
    assert "Showing 200 of 3000" in tab.locator("#trials-card [data-role=shown]").inner_text()
    tab.click("#trials-card [data-role=more]")
    _wait_rows(tab, 400)

    tab.click("#trials th[data-sort=latency_ms] button")
    tab.fill("#trials-card [data-role=text]", "heads")
    tab.select_option("#trials-card [data-role=state]", "complete")
    heads = [t for t in trials if t["state"] == "complete" and "heads" in t["summary"]]
    _wait_rows(tab, 200)  # a new filter starts again from its first page
    fastest = sorted(heads, key=lambda t: (t["latency_ms"], t["number"]))
    assert [row["number"] for row in _trial_rows(tab)] == [t["number"] for t in fastest[:200]]

    # The search goes on: a new trial, faster than any, that the filter keeps; and one it does not.
    new = _fake_trial(3001) | {"latency_ms": 0.5}
    served["trials"] = [*trials, new, _fake_trial(3002)]
    tab.wait_for_function("() => document.querySelector('#trials tbody tr[data-trial]').dataset.trial === '3001'")
    assert tab.locator("#trials-card [data-role=text]").input_value() == "heads"
    assert tab.locator("#trials-card [data-role=state]").input_value() == "complete"
    assert tab.get_attribute("#trials th[data-sort=latency_ms]", "aria-sort") == "ascending"
    assert [row["number"] for row in _trial_rows(tab)] == [3001] + [t["number"] for t in fastest[:199]]
    assert tab.locator("#trials-card [data-role=count]").inner_text() == f"{len(heads) + 1} of 3002"
    assert page.errors == []


def test_submit_form_shows_every_fields_error_at_once(page: Page, service: Service) -> None:
    tab = page.open("/submit")
    tab.wait_for_selector("#f-device option[value='fpga:zcu102']", state="attached")
    posts: list[str] = []
    tab.on("request", lambda request: request.method == "POST" and posts.append(request.url))

    # The empty form: every required field says what it needs, and nothing is sent.
    tab.click("#submit")
    tab.wait_for_selector(".field.invalid")
    invalid = tab.eval_on_selector_all(".field.invalid", "nodes => nodes.map(n => n.dataset.field)")
    assert sorted(invalid) == ["budget", "calib", "device", "model", "weights"]
    for field in invalid:
        assert tab.locator(f"#err-{field}").inner_text().strip(), field
    assert "5 fields need a fix" in tab.locator("#submit-status").inner_text()
    assert posts == []

    # Wrong values in several fields at once, all found by the form.
    tab.fill("#f-model", "deit_tiny_patch16_224")
    tab.select_option("#f-device", "fpga:zcu102")
    tab.fill("#f-weights", "weights.safetensors")  # not an upload ref nor an absolute path
    tab.fill("#f-calib", str(service.tiny_root / "calib"))
    tab.fill("#f-budget", "0.7")
    tab.fill("#f-model_kwargs", "{num_classes: 10}")
    tab.fill("#f-trials", "0")
    tab.fill("#f-token_blocks", "6, 3")
    tab.fill("#f-keep_min", "0.33")
    tab.click("#submit")
    tab.wait_for_function("() => document.querySelectorAll('.field.invalid').length === 5")
    invalid = tab.eval_on_selector_all(".field.invalid", "nodes => nodes.map(n => n.dataset.field)")
    assert sorted(invalid) == ["keep_min", "model_kwargs", "token_blocks", "trials", "weights"]
    assert "at least 1" in tab.locator("#err-trials").inner_text()
    assert "0.05" in tab.locator("#err-keep_min").inner_text()
    assert posts == []

    # Three paths of the right form that the server does not have: its answer names all three.
    root = service.tiny_root
    tab.fill("#f-model_kwargs", json.dumps(KWARGS))
    tab.fill("#f-trials", "4")
    tab.fill("#f-token_blocks", "1, 2")
    tab.fill("#f-keep_min", "0.4")
    tab.fill("#f-weights", str(root / "missing.safetensors"))
    tab.fill("#f-calib", str(root / "no-calib"))
    tab.fill("#f-val", "upload:datasets/never-uploaded")
    tab.click("#submit")
    tab.wait_for_function("() => document.querySelectorAll('.field.invalid').length === 3")
    invalid = tab.eval_on_selector_all(".field.invalid", "nodes => nodes.map(n => n.dataset.field)")
    assert sorted(invalid) == ["calib", "val", "weights"]
    for field in invalid:  # beside its field, a message need not repeat the field's name
        assert tab.locator(f"#err-{field}").inner_text().strip() and not tab.locator(
            f"#err-{field}"
        ).inner_text().startswith(f"{field}:")
    assert len(posts) == 1
    assert tab.locator("#banner").is_hidden()
    # The browser logs the refused request itself; nothing else may be logged.
    assert [e for e in page.errors if not re.search(r"status of 400", e)] == []


def test_submit_answer_lists_every_bad_path(service: Service) -> None:
    root = service.tiny_root
    spec = spec_json(tiny_job(root)) | {
        "weights": str(root / "missing.safetensors"),
        "calib": str(root / "no-calib"),
        "val": "upload:datasets/never-uploaded",
    }
    response = service.api.post("/api/jobs", json={"spec": spec})
    assert response.status_code == 400
    body = response.json()
    assert [error["loc"] for error in body["errors"]] == [["body", "spec", f] for f in ("weights", "calib", "val")]
    assert body["detail"].startswith("weights: ") and "; calib: " in body["detail"] and "; val: " in body["detail"]


def test_a_right_to_left_override_in_a_job_name_stays_in_the_name(page: Page, service: Service) -> None:
    name = "evil\u202eabc\u2067shown\u2069"  # no space: the cell cannot wrap it
    body = {"spec": spec_json(tiny_job(service.tiny_root, trials=2)), "name": name}
    response = service.api.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    job = _wait_final(service.api, response.json()["id"])
    clean = "evilabcshown"

    tab = page.open("/")
    tab.add_style_tag(content="#jobs td { white-space: nowrap; }")  # the name and its id on one line, to compare
    row = tab.locator(f"#jobs tbody tr[data-job-id='{job['id']}']")
    row.wait_for()
    link = row.locator(f"a[href='/jobs/{job['id']}']")
    assert link.locator("bdi").text_content() == clean
    assert not any(char in row.text_content() for char in BIDI_CONTROLS)
    # Laid out left to right: the name's text ends before its id starts, on the same line.
    name_end = link.evaluate("a => { const r = [...a.getClientRects()].pop(); return [r.right, r.top]; }")
    id_start = row.locator(".id").evaluate("s => { const r = s.getClientRects()[0]; return [r.left, r.top]; }")
    assert id_start[0] >= name_end[0] - 1 and abs(id_start[1] - name_end[1]) < 4

    tab = page.open(f"/compare?jobs={job['id']}")
    tab.wait_for_function("() => document.getElementById('compare-plot').data?.length")
    cell = tab.locator("#compare-table tbody tr td").first
    assert cell.locator("bdi").text_content() == clean and "\u202e" not in cell.text_content()
    assert tab.locator(f"#job-picker input[value='{job['id']}'] ~ span bdi").text_content() == clean
    front_name = page.plot("compare-plot", "plot.data[0].name")
    assert "\u202e" not in front_name and f"\u2068{clean}\u2069" in front_name  # isolated in the plot's labels

    tab = page.open(f"/jobs/{job['id']}")
    tab.wait_for_function("() => document.querySelector('#job-name bdi')")
    assert tab.locator("#job-name bdi").text_content() == clean
    assert "\u202e" not in tab.title()
    assert page.errors == []


def test_compare_page_says_which_ids_it_ignored(page: Page, service: Service) -> None:
    first = service.jobs[0]["id"]
    tab = page.open(f"/compare?jobs={first},abc,-3,99999")
    tab.wait_for_function("() => document.getElementById('compare-plot').data?.length === 2")
    notice = tab.locator("#ignored")
    notice.wait_for()
    text = notice.inner_text()
    assert "“abc”" in text and "“-3”" in text and "#99999" in text
    assert f"#{first}" not in text
    assert tab.locator("#compare-table tbody tr").count() == 1
    assert page.errors == [] or all("404" in e for e in page.errors)  # the browser logs the unknown job's 404

    clean = page.open(f"/compare?jobs={first}")
    clean.wait_for_function("() => document.getElementById('compare-plot').data?.length === 2")
    assert clean.locator("#ignored").is_hidden()


def _ms(x: float) -> str:
    """A latency as the pages write it (app.js fmt.ms): about three significant digits."""
    return f"{x:.{3 if x < 1 else 2 if x < 10 else 1}f} ms"


def test_compare_legend_names_each_jobs_front_dense_model_and_budget(page: Page, service: Service) -> None:
    ids = [job["id"] for job in service.jobs]
    page.open(f"/compare?jobs={','.join(map(str, ids))}")
    tab = page.page
    tab.wait_for_function("() => document.querySelectorAll('#compare-plot .legend .traces').length === 6")
    entries = tab.eval_on_selector_all(
        "#compare-plot .legend .traces .legendtext", "nodes => nodes.map(n => n.textContent)"
    )
    for job in service.jobs:
        mine = [entry for entry in entries if f"#{job['id']} " in entry]
        assert len(mine) == 3, entries
        assert any(job["name"] in entry for entry in mine)
        assert any("dense model" in entry for entry in mine)
        assert f"#{job['id']} budget {_ms(job['budget_ms'])}" in mine
    # The budget lines are the legend's dashed entries, drawn as the plot's shapes.
    shapes = page.plot(
        "compare-plot", "plot.layout.shapes.map(s => ({x: s.x0, legend: s.showlegend, dash: s.line.dash}))"
    )
    assert [shape["x"] for shape in shapes] == [pytest.approx(job["budget_ms"]) for job in service.jobs]
    assert all(shape["legend"] and shape["dash"] == "dash" for shape in shapes)
    assert page.errors == []


def test_accuracy_figures_name_their_images(page: Page, service: Service) -> None:
    job = service.api.get(f"/api/jobs/{service.jobs[0]['id']}").json()
    models = _pareto(service, job["id"])["models"]
    best_val = max(m["val_top1"] for m in models)
    tab = page.open(f"/jobs/{job['id']}")
    tab.wait_for_selector("#job-stats div")
    stats = tab.eval_on_selector_all(
        "#job-stats div",
        "nodes => nodes.map(n => [n.dataset.images || '', n.querySelector('dt').textContent,"
        " n.querySelector('dd').textContent, n.title])",
    )
    # Validation top-1 leads, then the search's calibration top-1; each says which images.
    assert stats[0][:3] == ["validation", "Best val top-1", f"{best_val:.1f}%"]
    assert "validation images" in stats[0][3]
    assert stats[1][:2] == ["calibration", "Best calib top-1"] and "calibration images" in stats[1][3]
    # What the budget rests on: an analytic device's specifications, unchecked against a real device.
    latency = next(s for s in stats if s[1] == "Latency")
    assert latency[2] == "specifications only" and latency[3] == job["notes"]["latency"]["trust"]
    assert tab.locator("#trials th[data-sort=accuracy]").inner_text().lower().startswith("calib top-1")

    tab = page.open("/")
    cell = tab.locator(f"#jobs tbody tr[data-job-id='{job['id']}'] td.best span[data-images]")
    cell.wait_for()
    if job.get("best_val_accuracy") is not None:
        assert cell.get_attribute("data-images") == "validation" and cell.inner_text().endswith("val")
        assert cell.inner_text().startswith(f"{job['best_val_accuracy']:.1f}%")
    else:  # an API without the validation figure: the calibration one, named as such
        assert cell.get_attribute("data-images") == "calibration" and cell.inner_text().endswith("calib")
    assert page.errors == []
