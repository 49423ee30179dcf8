"""Every accuracy the API gives names its images: validation (held out) apart from calibration (searched on)."""

from __future__ import annotations

import json

from pruning.image_sets import image_set_name, job_image_sets
from tests.search.tiny import tiny_job
from tests.server.conftest import spec_json


def test_a_finished_job_leads_with_its_best_validation_top1_and_names_both_image_sets(finished, tiny_root):
    client, job = finished
    job = client.get(f"/api/jobs/{job['id']}").json()
    models = client.get(f"/api/jobs/{job['id']}/pareto").json()["models"]
    labelled = [m["val_top1"] for m in models if m["val_top1"] is not None]
    assert labelled and job["best_val_accuracy"] == max(labelled)
    assert job["progress"]["best_calib_accuracy"] == job["progress"]["best_accuracy"] is not None
    assert job["val_images"] == {"name": f"{tiny_root.name}/val", "images": 20}
    assert job["calib_images"] == {"name": f"{tiny_root.name}/calib", "images": 60}
    assert str(tiny_root) not in json.dumps([job["val_images"], job["calib_images"]])  # names, never server paths
    listed = next(j for j in client.get("/api/jobs").json() if j["id"] == job["id"])
    for key in ("best_val_accuracy", "val_images", "calib_images"):
        assert listed[key] == job[key]
    for model in models:
        assert model["val_images"] == job["val_images"] and model["calib_images"] == job["calib_images"]
        assert model["val_agreement"] == model["metrics"]["val"]["agreement"]


def test_the_schema_says_which_images_each_accuracy_was_measured_on(finished):
    client, _ = finished
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    described = {
        ("JobOut", "best_val_accuracy"): "validation",
        ("Progress", "best_calib_accuracy"): "calibration",
        ("Progress", "best_accuracy"): "best_calib_accuracy",
        ("ModelOut", "val_top1"): "validation",
        ("ModelOut", "calib_accuracy"): "calibration",
    }
    for (schema, field), word in described.items():
        assert word in schemas[schema]["properties"][field]["description"]


def test_a_queued_job_names_its_images_before_it_has_read_them(make_service, tiny_root):
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root, trials=4)) | {"val": None, "holdout": 0.25}
    response = client.post("/api/jobs", json={"spec": spec})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["best_val_accuracy"] is None and job["progress"]["best_calib_accuracy"] is None
    assert job["val_images"] == {"name": f"{tiny_root.name}/calib (held-out 25%, never searched)", "images": None}
    assert job["calib_images"] == {"name": f"{tiny_root.name}/calib (75% of it)", "images": None}


def test_image_set_names_hide_machine_paths():
    assert image_set_name("/srv/data/imagenet-sample") == "imagenet-sample"
    assert image_set_name("/srv/data/imagenet/val") == "imagenet/val"
    upload = "/var/lib/vitprune/uploads/datasets/" + "ab" * 16
    assert image_set_name(upload) == "upload:datasets/" + "ab" * 16  # the ref the user wrote in the job
    assert job_image_sets({"calib": "/a/calib", "val": "/b/val"}) == {
        "calib": {"name": "a/calib"},
        "val": {"name": "b/val"},
    }
