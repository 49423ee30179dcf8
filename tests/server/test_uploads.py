"""Tests for server.uploads: atomic streaming, weights vetting and hostile-zip extraction, on real files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
import stat
import struct
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from server.uploads import UploadError, check_weights, extract_dataset, receive


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _dataset_entries(prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}cat/a.png": _png((255, 0, 0)),
        f"{prefix}cat/b.png": _png((0, 255, 0)),
        f"{prefix}dog/c.png": _png((0, 0, 255)),
    }


def _state_dict() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3)}


# ---------------------------------------------------------------- receive


def test_receive_stores_body_with_its_sha256(tmp_path: Path) -> None:
    parts = [b"hello ", b"vision ", b"transformer" * 100]
    dest = tmp_path / "upload.bin"
    size, digest = asyncio.run(receive(_chunks(parts), dest, limit=10_000))
    body = b"".join(parts)
    assert size == len(body)
    assert digest == hashlib.sha256(body).hexdigest()
    assert dest.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.bin"]


def test_receive_over_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    with pytest.raises(UploadError) as info:
        asyncio.run(receive(_chunks([b"x" * 600_000, b"x" * 600_000]), dest, limit=1 << 20))
    assert info.value.status == 413
    assert "1 MB" in str(info.value) and "VITPRUNE_MAX_UPLOAD_MB" in str(info.value)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_receive_failing_stream_leaves_nothing(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(receive(broken(), tmp_path / "x.bin", limit=1000))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- check_weights


def test_safetensors_state_dict_accepted(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state_dict(), str(path))
    check_weights(path)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_saved_state_dict_accepted(tmp_path: Path, wrap: str | None) -> None:
    path = tmp_path / "model.pth"
    sd = _state_dict()
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    check_weights(path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_refused_without_running(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"fc.weight": _Evil(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(UploadError) as info:
        check_weights(path)
    assert info.value.status == 400
    assert not marker.exists(), "the pickle's payload was executed"


def test_pth_with_non_tensor_values_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"fc.weight": torch.ones(2), "note": "hello"}, path)
    with pytest.raises(UploadError) as info:
        check_weights(path)
    assert info.value.status == 400 and "state dict" in str(info.value)


def test_garbage_safetensors_is_400(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UploadError) as info:
        check_weights(path)
    assert info.value.status == 400 and "safetensors" in str(info.value)


def test_wrong_suffix_is_415(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"whatever")
    with pytest.raises(UploadError) as info:
        check_weights(path)
    assert info.value.status == 415


# ---------------------------------------------------------------- extract_dataset


def _no_leftovers(parent: Path, allowed: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} <= allowed


def test_extract_good_zip(tmp_path: Path) -> None:
    entries = _dataset_entries()
    entries.update({"__MACOSX/cat/._a.png": b"junk", "cat/.DS_Store": b"junk", "README.txt": b"hi"})
    archive = _zip(tmp_path / "ds.zip", entries)
    dest = tmp_path / "ds"
    result = extract_dataset(archive, dest)
    images = _dataset_entries()
    assert result == {"classes": 2, "images": 3, "bytes": sum(len(v) for v in images.values())}
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(images)
    assert (dest / "cat" / "a.png").read_bytes() == images["cat/a.png"]
    _no_leftovers(tmp_path, {"ds.zip", "ds"})


def test_extract_unwraps_single_top_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ds.zip", _dataset_entries("my_dataset/"))
    dest = tmp_path / "ds"
    result = extract_dataset(archive, dest)
    assert result["classes"] == 2 and result["images"] == 3
    assert sorted(p.name for p in dest.iterdir()) == ["cat", "dog"]
    with Image.open(dest / "dog" / "c.png") as image:
        assert image.size == (4, 4)


@pytest.mark.parametrize(
    "name", ["../evil.png", "cat/../../evil.png", "/tmp_abs/evil.png", "C:/evil.png", "cat\\..\\..\\evil.png"]
)
def test_extract_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    entries = _dataset_entries()
    entries[name] = _png((1, 2, 3))
    archive = _zip(tmp_path / "ds.zip", entries)
    dest = tmp_path / "out" / "ds"
    dest.parent.mkdir()
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, dest)
    assert info.value.status == 400 and name in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []
    _no_leftovers(tmp_path, {"ds.zip", "out"})


def test_extract_refuses_symlink(tmp_path: Path) -> None:
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _dataset_entries().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("cat/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    dest = tmp_path / "ds"
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, dest)
    assert info.value.status == 400 and "symbolic link" in str(info.value)
    assert not dest.exists()
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_refuses_zip_bomb_by_ratio(tmp_path: Path) -> None:
    entries = _dataset_entries()
    entries["cat/bomb.png"] = bytes(50 << 20)
    archive = _zip(tmp_path / "ds.zip", entries)
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "ds"
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, dest, max_ratio=100.0)
    assert info.value.status == 413 and "zip bomb" in str(info.value)
    assert not dest.exists()
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_refuses_oversized_total_and_too_many_files(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ds.zip", _dataset_entries())
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, tmp_path / "a", max_bytes=100)
    assert info.value.status == 413
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, tmp_path / "b", max_files=2)
    assert info.value.status == 413
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_stops_when_entry_exceeds_declared_size(tmp_path: Path) -> None:
    entries = _dataset_entries()
    lying = "dog/z_lies.png"
    entries[lying] = _png((9, 9, 9)) * 20
    archive = _zip(tmp_path / "ds.zip", entries)
    # Shrink the central directory's declared size of the last entry, as a crafted archive would.
    raw = bytearray(archive.read_bytes())
    header = raw.rfind(b"PK\x01\x02")
    assert raw[header + 46 : header + 46 + len(lying)].decode() == lying
    struct.pack_into("<I", raw, header + 24, 10)
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "ds"
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, dest)
    assert info.value.status in (400, 413)
    assert not dest.exists()
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_not_a_zip_is_400(tmp_path: Path) -> None:
    archive = tmp_path / "ds.zip"
    archive.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, tmp_path / "ds")
    assert info.value.status == 400 and "zip" in str(info.value)
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_without_images_is_400(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ds.zip", {"cat/notes.txt": b"hi", "README.md": b"x", "flat.png": _png((0, 0, 0))})
    with pytest.raises(UploadError) as info:
        extract_dataset(archive, tmp_path / "ds")
    assert info.value.status == 400 and "<class_name>/<image>" in str(info.value)
    _no_leftovers(tmp_path, {"ds.zip"})


def test_extract_refuses_existing_dest(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ds.zip", _dataset_entries())
    dest = tmp_path / "ds"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        extract_dataset(archive, dest)
    assert list(dest.iterdir()) == []
