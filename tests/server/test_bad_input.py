"""Hostile or broken input through the API: pickles that run code, escaping zips, corrupt images, traversal."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile

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
