"""Property-based fuzzing of the REST API (schemathesis over the app's own OpenAPI schema): no request, valid or
not, is answered with a 5xx, and every documented response matches its schema. Below it, one regression test
for each fault found by the fuzzing, or by sending the same kinds of input by hand.

The fuzzed app runs in-process without a worker, on a home where one small job has already run to the end and
a device table was imported, so there is a real job, model and imported device whose trials, Pareto front,
downloads and details are exercised too. It runs on SQLite and on PostgreSQL (when its server binaries are
installed): the two refuse different inputs.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.python.asgi import shutdown_lifespans

from latency_models.registry import Registry
from pruning import describe
from server.app import create_app
from server.settings import Settings
from tests.postgres import drop_database, new_database
from tests.search.tiny import tiny_job, tiny_model
from tests.server.conftest import spec_json, wait_final

# Random values almost never name something that exists, so the cases below are half generated, half given one
# of these (the rest of the request stays generated): that is what reaches the code behind the lookups and the
# path checks (downloads, trials, imported devices, weights and archive checks, model building, latency pricing).
# Filled in by `fuzzed_app`, read by the hooks.
KNOWN: dict[str, Any] = {}
UPLOAD_NAMES = ("model.safetensors", "model.pth", "images.zip")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed_app(request, tmp_path_factory, tiny_root: Path) -> Iterator[FastAPI]:
    home = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    fields: dict[str, Any] = {"home": home, "roots": [tiny_root], "heartbeat_s": 1, "poll_s": 0.2}
    database = None
    if request.param == "postgresql":
        admin_url = request.getfixturevalue("postgres_url")  # skips where PostgreSQL is not installed
        database = f"fuzz_{uuid.uuid4().hex[:12]}"
        fields["db_url"] = new_database(admin_url, database)
    spec = spec_json(tiny_job(tiny_root, trials=12))
    table = Registry(home / "scratch").table("fpga", describe(tiny_model()), [1]).model_dump_json(by_alias=True)
    with TestClient(create_app(Settings(**fields))) as client:
        response = client.post("/api/jobs", json={"spec": spec, "name": "seed"})
        assert response.status_code == 201, response.text
        job = wait_final(client, response.json()["id"])
        assert job["status"] == "done", job
        models = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"]
        assert client.post("/api/devices", params={"name": "seed-board"}, content=table).status_code == 201
    grounded = {key: spec[key] for key in ("model", "weights", "calib", "val", "model_kwargs", "space")}
    KNOWN.update(job_id=job["id"], model_id=models[0]["id"], name="seed-board", budget_ratio=spec["budget_ratio"])
    KNOWN["spec"] = grounded | {"device": "fpga", "table": None, "class_map": None}
    # No worker: a job the fuzzer manages to submit stays queued instead of running for minutes.
    yield create_app(Settings(**fields), worker=False)
    shutdown_lifespans()  # schemathesis started the app's lifespan on its first request; this closes its database
    KNOWN.clear()
    if database is not None:
        drop_database(admin_url, database)


# The schema is needed when tests are collected, before any fixture exists. It does not depend on the settings,
# so an app that is never started provides it; the requests go to `fuzzed_app`.
schema = schemathesis.openapi.from_dict(create_app(Settings(), worker=False).openapi())


def _or(generated: Any, known: Any) -> st.SearchStrategy:
    return st.sampled_from([generated, known])


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: Any) -> st.SearchStrategy:
    if not isinstance(path_parameters, dict) or not KNOWN.keys() & path_parameters.keys():
        return st.just(path_parameters)
    return _or(path_parameters, path_parameters | {key: KNOWN[key] for key in KNOWN.keys() & path_parameters.keys()})


@schema.hook
def flatmap_query(context: schemathesis.HookContext, query: Any) -> st.SearchStrategy:
    uploads = context.operation is not None and context.operation.path.startswith("/api/uploads/")
    if not uploads or not isinstance(query, dict):
        return st.just(query)
    return st.just(query) | st.sampled_from(UPLOAD_NAMES).map(lambda name: query | {"filename": name})


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
    spec = body.get("spec") if isinstance(body, dict) else None
    if context.operation is None or context.operation.label != "POST /api/jobs" or not isinstance(spec, dict):
        return st.just(body)
    grounded = spec | KNOWN["spec"]
    for key in ("model_kwargs", "space"):  # generated entries over the known ones
        extra = spec.get(key)
        grounded[key] = KNOWN["spec"][key] | (extra if isinstance(extra, dict) else {})
    # A job takes exactly one budget, which the schema cannot say: a generated one is kept, the other dropped.
    if spec.get("budget_ms") is not None:
        grounded["budget_ratio"] = None
    elif spec.get("budget_ratio") is None:
        grounded["budget_ratio"] = KNOWN["budget_ratio"]
    return _or(body, body | {"spec": grounded})


@schema.parametrize()
# About 20 s per backend on 2 CPU cores; raise max_examples locally to search harder.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_request_gets_a_server_error(case: schemathesis.Case, fuzzed_app: FastAPI) -> None:
    case.call_and_validate(app=fuzzed_app, checks=[not_a_server_error, response_schema_conformance])


# -- regressions: a 500 before its fix, unless said otherwise ------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, make_service) -> TestClient:
    """A service without a worker, on SQLite or on a PostgreSQL database of its own."""
    if request.param == "postgresql":
        return make_service(worker=False, db_url=request.getfixturevalue("postgres_db_url"))
    return make_service(worker=False)


def _submit(client: TestClient, body: str) -> dict:
    response = client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    return response.json()


def test_ids_beyond_the_database_integers_are_refused(service):
    # Was OverflowError (SQLite) / integer out of range (PostgreSQL): /api/models took any integer.
    for job_id in (2**63, 2**31, 0):
        assert service.get("/api/models", params={"job_id": job_id}).status_code == 422
    assert service.get("/api/models", params={"job_id": 2**31 - 1}).json() == []


def test_nul_in_names_is_refused_before_the_database(service, tiny_root):
    # PostgreSQL refuses NUL in text: a NUL in a filter or a job's name was a 500 there.
    for name in ("model", "device"):
        response = service.get("/api/jobs", params={name: "deit\x00"})
        assert response.status_code == 400 and f"{name}: a NUL" in response.json()["detail"]
    body = {"spec": spec_json(tiny_job(tiny_root)), "name": "a\x00b"}
    response = service.post("/api/jobs", json=body)
    assert response.status_code == 422 and "control characters" in response.text
    assert service.get("/api/jobs").json() == []


def test_an_imported_table_with_an_oversized_hardware_field_is_refused(service, tmp_path):
    # Was a 500 on PostgreSQL (the column holds 300 characters), after the table file had already been kept.
    table = Registry(tmp_path / "profiles").table("fpga", describe(tiny_model()), [1])
    body = json.loads(table.model_dump_json(by_alias=True))
    for hardware in ("x" * 301, "a\x00b"):
        body["device"]["hardware"] = hardware
        response = service.post("/api/devices", params={"name": "long-board"}, content=json.dumps(body))
        assert response.status_code == 400 and "device.hardware" in response.json()["detail"]
    assert service.get("/api/devices/long-board").status_code == 404  # nothing was kept


@pytest.mark.parametrize(
    ("field", "literal", "words"),
    [
        ("budget_ms", "NaN", "NaN is not a JSON number"),
        ("budget_ms", "Infinity", "Infinity is not a JSON number"),  # was accepted, and stored as a broken spec
        ("budget_ms", "1e400", "too large for a 64-bit float"),
        ("seed", "9" * 5000, "5000 digits is too long"),
        ("model", '"\\ud800"', "lone UTF-16 surrogate"),
    ],
)
def test_json_bodies_are_json_not_python_extensions(make_service, tiny_root, field, literal, words):
    # Python's json reads these; NaN and lone surrogates then made the 422 answer fail to render (a 500).
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root)) | {"budget_ratio": None, "budget_ms": 1.0} | {field: "@@"}
    body = json.dumps({"spec": spec}).replace('"@@"', literal)
    assert words in json.dumps(_submit(client, body)["detail"])
    assert client.get("/api/jobs").json() == []


def test_a_job_body_of_another_content_type_is_refused(make_service):
    # FastAPI validated the raw bytes instead, and its 422 answer quoting them failed to render (a 500).
    client = make_service(worker=False)
    for headers in ({}, {"content-type": "text/plain"}):
        response = client.post("/api/jobs", content=b"\xff\xfe", headers=headers)
        assert response.status_code == 415 and "application/json" in response.json()["detail"]


def test_deeply_nested_bodies_are_refused(make_service):
    # Was RecursionError from json.loads: a 500 for a device table, a bare 'error parsing the body' for a job.
    client = make_service(worker=False)
    deep = "[" * 100_000 + "]" * 100_000
    assert "too deeply" in json.dumps(_submit(client, deep)["detail"])
    response = client.post("/api/devices", params={"name": "deep"}, content=deep)
    assert response.status_code == 400 and "too deeply" in response.json()["detail"]
    refused = client.post("/api/devices", params={"name": "empty"}, content="{}")
    assert refused.status_code == 400 and "/tmp" not in refused.json()["detail"]  # no server-side temp path


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"foo": 1}, "unexpected keyword argument 'foo'"),  # TypeError
        ({"img_size": "abc"}, "model_kwargs"),  # TypeError
        ({"embed_dim": 100}, "divisible by num_heads"),  # AssertionError
        ({"patch_size": 0}, "ZeroDivisionError"),
        ({"embed_dim": 192 * 200}, "parameters, more than the weights file"),  # would have allocated 850 GB
        ({"depth": 10**6}, "more blocks than any ViT"),  # held the request for hours, building on meta
    ],
)
def test_model_kwargs_that_do_not_build_the_model_are_refused(make_service, tiny_root, kwargs, words):
    # Each was a 500 (timm's constructor raised whatever it hit), or would have exhausted the server's memory.
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root))
    spec["model_kwargs"] |= kwargs
    response = client.post("/api/jobs", json={"spec": spec})
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"] and "model_kwargs" in response.json()["detail"]


def test_paths_with_nul_or_of_the_wrong_kind_are_refused_naming_the_field(make_service, tiny_root):
    # Were 400s whose message came from os and named no field.
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root))
    for change, words in [
        ({"weights": f"{tiny_root}/\x00.safetensors"}, "weights: "),  # was os's bare 'embedded null byte'
        ({"weights": "upload:\x00"}, "weights: "),
        ({"table": str(tiny_root / "calib")}, "table: "),  # was '[Errno 21] Is a directory'
        ({"calib": spec["weights"]}, "calib: "),
    ]:
        response = client.post("/api/jobs", json={"spec": spec | change})
        assert response.status_code == 400 and response.json()["detail"].startswith(words), response.text


def test_a_dataset_entry_with_an_overlong_name_is_refused(make_service):
    # Was OSError ENAMETOOLONG while unpacking: a 500.
    client = make_service(worker=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"c0/{'a' * 300}.png", b"\x89PNG")
        archive.writestr("c1/b.png", b"\x89PNG")
    response = client.put("/api/uploads/datasets", params={"filename": "d.zip"}, content=buffer.getvalue())
    assert response.status_code == 400 and "over 255 bytes" in response.json()["detail"]


def test_times_carry_their_zone(make_service, tiny_root):
    # Not a 500: SQLite's times came back without a zone, which the schema's RFC 3339 date-time needs.
    client = make_service(worker=False)
    job = client.post("/api/jobs", json={"spec": spec_json(tiny_job(tiny_root))}).json()
    assert job["created_at"].endswith(("Z", "+00:00")), job["created_at"]
    assert client.get(f"/api/jobs/{job['id']}").json()["created_at"] == job["created_at"]
