"""Hostile or broken input through the API: pickles that run code, escaping zips, corrupt images, traversal."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

from tests.search.tiny import tiny_job
from tests.server.conftest import spec_json, wait_final


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(make_service, tmp_path):
    client = make_service(worker=False)
    marker = tmp_path / "pwned"
    body = pickle.dumps({"weight": _Evil(str(marker))}, protocol=2)
    response = client.put("/api/uploads/weights", params={"filename": "model.pth"}, content=body)
    assert response.status_code == 400, response.text
    assert not marker.exists(), "unpickling the upload ran its code"


def test_an_escaping_zip_writes_nothing_outside_the_upload_store(make_service, tmp_path):
    client = make_service(worker=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat/ok.png", b"\x89PNG")
        archive.writestr("../../../../escaped.png", b"\x89PNG")
    response = client.put("/api/uploads/datasets", params={"filename": "d.zip"}, content=buffer.getvalue())
    assert response.status_code == 400 and "escaped.png" in response.json()["detail"]
    assert not list(tmp_path.rglob("escaped.png"))
    assert not list((tmp_path / "home" / "artifacts" / "uploads" / "datasets").glob("*"))


def test_ids_and_refs_cannot_traverse(make_service, tiny_root):
    client = make_service(worker=False)
    for path in ("/api/jobs/..%2F..%2Fetc", "/api/models/-1", "/api/jobs/1%00"):
        assert client.get(path).status_code in (404, 422), path
    spec = spec_json(tiny_job(tiny_root)) | {"calib": "upload:datasets/../../../../etc"}
    refused = client.post("/api/jobs", json={"spec": spec})
    assert refused.status_code == 400 and refused.json()["detail"].startswith("calib:")


def test_corrupt_images_are_skipped_and_reported_by_the_job(make_service, tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    (root / "calib" / "c0" / "broken.png").write_bytes(b"not an image at all")
    good = sorted((root / "calib" / "c3").glob("*.png"))[0]
    (root / "calib" / "c3" / "truncated.png").write_bytes(good.read_bytes()[:40])
    client = make_service(roots=[root])
    job_id = client.post("/api/jobs", json={"spec": spec_json(tiny_job(root, trials=6))}).json()["id"]
    job = wait_final(client, job_id)
    assert job["status"] == "done", job["error"]
    skipped = job["notes"]["skipped_calib_images"]
    assert skipped["count"] == 2
    assert sorted(f["file"].split("/")[-1] for f in skipped["files"]) == ["broken.png", "truncated.png"]


def test_a_422_names_every_field_and_what_to_send(make_service, tiny_root):
    # Was pydantic's raw list: "Input should be ...", a `loc`, an `url`, and no sentence.
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root)) | {"budget_ratio": 5, "trials": "many", "colour": "red"}
    answer = client.post("/api/jobs", json={"spec": spec})
    assert answer.status_code == 422
    body = answer.json()
    messages = {error["field"]: error["message"] for error in body["errors"]}
    assert messages == {
        "spec.budget_ratio": "should be less than or equal to 1 (got 5)",
        "spec.trials": "should be a whole number (got 'many')",
        "spec.colour": "is not a field of this request; remove it or check its spelling",
    }
    assert body["detail"].startswith("3 fields to fix")
    assert all(f"{field}: {message}" in body["detail"] for field, message in messages.items())
    assert body["errors"][0]["loc"] == ["body", "spec", "budget_ratio"]

    for url, sentence in [
        ("/api/jobs?limit=0", "query parameter limit: should be greater than or equal to 1 (got '0')"),
        ("/api/jobs/abc", "path parameter job_id: should be a whole number (got 'abc')"),
    ]:
        answer = client.get(url)
        assert answer.status_code == 422 and answer.json()["detail"] == sentence, answer.text
    broken = client.post("/api/jobs", content=b'{"spec": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("body: is not valid JSON at character 9")
    assert client.post("/api/jobs", json={}).json()["detail"] == "spec: is required; add it"


def test_a_tiny_budget_is_quoted_with_its_digits(make_service, tiny_root):
    # "over the budget of 0.00 ms" for a budget of 0.001 ms.
    client = make_service(worker=False)
    spec = spec_json(tiny_job(tiny_root)) | {"budget_ms": 0.001, "budget_ratio": None}
    refused = client.post("/api/jobs", json={"spec": spec})
    assert refused.status_code == 400 and "over the budget of 0.001 ms" in refused.json()["detail"], refused.text


def _zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, f"images/{path.relative_to(folder)}")
    return buffer.getvalue()


def test_errors_never_show_the_servers_directories(make_service, tiny_root, tmp_path):
    # A path outside VITPRUNE_ROOTS was refused with the list of allowed roots; checks quoted upload refs
    # as their paths in the artifact store.
    mine = tmp_path / "mine"
    (mine / "real").mkdir(parents=True)
    (mine / "link").symlink_to(mine / "real")
    client = make_service(worker=False, roots=[tiny_root, mine])
    store = client.app.state.settings.artifacts
    hidden = {str(tiny_root), str(tiny_root.resolve()), str(mine), str(store), str(store.parent)}
    spec = spec_json(tiny_job(tiny_root))
    outside = client.post("/api/jobs", json={"spec": spec | {"weights": "/etc/passwd"}})
    assert outside.status_code == 400 and "VITPRUNE_ROOTS" in outside.text and "upload" in outside.text
    relative = client.post("/api/jobs", json={"spec": spec | {"calib": "images/calib"}})
    assert relative.status_code == 400 and "'images/calib'" in relative.text
    upload = client.put("/api/uploads/datasets", params={"filename": "c.zip"}, content=_zip_of(tiny_root / "calib"))
    ref = upload.json()["ref"]
    shared = client.post("/api/jobs", json={"spec": spec | {"calib": ref, "val": ref}})
    assert shared.status_code == 400 and "share" in shared.text and ref in shared.text, shared.text
    for answer in (outside, relative, shared):
        assert not [path for path in hidden if path in answer.text], answer.text

    # A path the caller wrote under a root is quoted as written, not as the server resolved it.
    missing = client.post("/api/jobs", json={"spec": spec | {"weights": f"{mine}/link/w.safetensors"}})
    assert missing.status_code == 400 and f"'{mine}/link/w.safetensors' does not exist" in missing.json()["detail"]
    assert str(mine / "real") not in json.dumps(missing.json())
