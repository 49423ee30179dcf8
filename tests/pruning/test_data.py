"""Tests for pruning.data: folder layouts, labels, corrupt files, splitting, normalisation and the cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import pruning.data as data_module
from pruning.data import DatasetError, ImageSet, load_image_folder

SMALL_CONFIG: dict[str, Any] = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Path:
    """A small random image, saved in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def make_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/cat (2 images) and root/dog (2 images + 1 corrupt + 1 text file)."""
    root = tmp_path / "images"
    make_image(root / "cat" / "a.png", 0)
    make_image(root / "cat" / "b.JPG", 1, mode="L")
    make_image(root / "dog" / "c.jpeg", 2, size=(30, 60))
    make_image(root / "dog" / "d.bmp", 3)
    make_corrupt(root / "dog" / "broken.jpg")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def synthetic_set(n: int = 10, labelled: bool = True) -> ImageSet:
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    return ImageSet(
        images=images,
        labels=torch.arange(n) % 3 if labelled else None,
        paths=[f"img{i}.png" for i in range(n)],
        classes=["a", "b", "c"] if labelled else [],
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )


def test_image_folder_labels_sorted_and_corrupt_skipped(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pruning.data"):
        images = load_image_folder(folder, SMALL_CONFIG)
    assert images.paths == ["cat/a.png", "cat/b.JPG", "dog/c.jpeg", "dog/d.bmp"]
    assert images.classes == ["cat", "dog"]
    assert images.labels is not None
    assert images.labels.tolist() == [0, 0, 1, 1]
    assert images.labels.dtype == torch.int64
    assert images.images.dtype == torch.uint8
    assert images.images.shape == (4, 3, 32, 32)
    assert [rel for rel, _ in images.skipped] == ["dog/broken.jpg"]
    assert "skipped 1 unreadable" in caplog.text
    assert (images.mean, images.std) == (SMALL_CONFIG["mean"], SMALL_CONFIG["std"])


def test_grayscale_image_becomes_three_equal_channels(folder: Path) -> None:
    images = load_image_folder(folder, SMALL_CONFIG)
    gray = images.images[images.paths.index("cat/b.JPG")]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    for name in ["x.PNG", "y.Jpeg", "z.webp", "w.BMP"]:
        make_image(tmp_path / "k" / name, 0)
    make_image(tmp_path / "k" / "skip.gif", 0)
    images = load_image_folder(tmp_path, SMALL_CONFIG)
    assert images.paths == ["k/w.BMP", "k/x.PNG", "k/y.Jpeg", "k/z.webp"]


def test_class_map_labels_a_partial_folder(folder: Path, tmp_path: Path) -> None:
    class_map = tmp_path / "classes.txt"
    class_map.write_text("bird\ndog\nfish\ncat\n")
    images = load_image_folder(folder, SMALL_CONFIG, class_map=class_map)
    assert images.labels is not None
    assert images.labels.tolist() == [3, 3, 1, 1]
    assert images.classes == ["bird", "dog", "fish", "cat"]


def test_folder_missing_from_class_map_is_named(folder: Path, tmp_path: Path) -> None:
    class_map = tmp_path / "classes.txt"
    class_map.write_text("bird\ncat\n")
    with pytest.raises(DatasetError, match=r"'dog'.*classes\.txt"):
        load_image_folder(folder, SMALL_CONFIG, class_map=class_map)


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    make_image(tmp_path / "b.png", 0)
    make_image(tmp_path / "a.jpg", 1)
    images = load_image_folder(tmp_path, SMALL_CONFIG)
    assert images.labels is None
    assert images.paths == ["a.jpg", "b.png"]
    assert images.classes == []
    _, labels = next(images.batches(8))
    assert labels is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: root, "no images found"),
        (lambda root: make_image(root / "one.png", 0), "not a directory"),
    ],
)
def test_unusable_paths_raise_clear_errors(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_image_folder(make(tmp_path), SMALL_CONFIG)


def test_only_corrupt_images_raise(tmp_path: Path) -> None:
    make_corrupt(tmp_path / "c" / "bad.jpg")
    make_corrupt(tmp_path / "c" / "bad2.png")
    with pytest.raises(DatasetError, match="could be read"):
        load_image_folder(tmp_path, SMALL_CONFIG)


def test_max_images_spreads_over_classes(tmp_path: Path) -> None:
    for cls in range(4):
        for i in range(3):
            make_image(tmp_path / f"c{cls}" / f"{i}.png", cls * 3 + i, size=(8, 8))
    images = load_image_folder(tmp_path, SMALL_CONFIG, max_images=4)
    assert images.labels is not None
    assert images.labels.tolist() == [0, 1, 2, 3]


def test_subset_keeps_images_labels_and_paths_together() -> None:
    full = synthetic_set()
    part = full.subset([7, 2])
    assert len(part) == 2
    assert torch.equal(part.images, full.images[[7, 2]])
    assert part.labels is not None and part.labels.tolist() == [1, 2]
    assert part.paths == ["img7.png", "img2.png"]


def test_split_is_deterministic_and_disjoint() -> None:
    full = synthetic_set(20)
    first, second = full.split(0.3, seed=4)
    again, _ = full.split(0.3, seed=4)
    other, _ = full.split(0.3, seed=5)
    assert (len(first), len(second)) == (6, 14)
    assert first.paths == again.paths
    assert set(first.paths).isdisjoint(second.paths)
    assert set(first.paths) | set(second.paths) == set(full.paths)
    assert first.paths != other.paths
    with pytest.raises(ValueError):
        full.split(1.5)


def test_batches_normalise_like_to_tensor_and_normalize() -> None:
    full = synthetic_set(5)
    batches = list(full.batches(2))
    assert [b.shape[0] for b, _ in batches] == [2, 2, 1]
    x = torch.cat([b for b, _ in batches])
    mean = torch.tensor(full.mean).view(1, 3, 1, 1)
    std = torch.tensor(full.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (full.images.float() / 255 - mean) / std, rtol=0, atol=1e-6)
    assert torch.cat([y for _, y in batches]).tolist() == full.labels.tolist()


def test_cache_is_used_and_keyed_on_config(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    calls: list[int] = []
    real_decode_all = data_module._decode_all

    def counting_decode_all(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_decode_all(*args, **kwargs)

    monkeypatch.setattr(data_module, "_decode_all", counting_decode_all)
    first = load_image_folder(folder, SMALL_CONFIG, cache_dir=cache)
    second = load_image_folder(folder, SMALL_CONFIG, cache_dir=cache)
    assert len(calls) == 1
    assert torch.equal(first.images, second.images)
    assert first.labels is not None and second.labels is not None
    assert torch.equal(first.labels, second.labels)
    assert (second.paths, second.classes, second.skipped) == (first.paths, first.classes, first.skipped)
    assert (second.mean, second.std) == (first.mean, first.std)
    assert not list(cache.glob("*.pkl")) and len(list(cache.glob("*.safetensors"))) == 1

    bigger = load_image_folder(folder, {**SMALL_CONFIG, "input_size": (3, 40, 40)}, cache_dir=cache)
    assert len(calls) == 2
    assert bigger.images.shape[-1] == 40
    assert len(list(cache.glob("*.safetensors"))) == 2

    make_image(folder / "cat" / "a.png", 9, size=(50, 50))
    load_image_folder(folder, SMALL_CONFIG, cache_dir=cache)
    assert len(calls) == 3, "a changed file must invalidate the cache"


@pytest.fixture(scope="module")
def deit_config() -> dict[str, Any]:
    return resolve_data_config({}, model=timm.create_model("deit_tiny_patch16_224", pretrained=False))


def test_real_images_match_timm_eval_transform(
    imagenet_dir: Path, class_map: Path, deit_config: dict[str, Any]
) -> None:
    images = load_image_folder(imagenet_dir, deit_config, class_map=class_map, max_images=6)
    assert len(images) == 6 and not images.skipped
    wnids = class_map.read_text().split()
    assert images.labels is not None
    assert images.labels.tolist() == [wnids.index(p.split("/")[0]) for p in images.paths]
    ours = torch.cat([x for x, _ in images.batches(4)])
    transform = create_transform(**deit_config, is_training=False)
    for i, rel in enumerate(images.paths):
        with Image.open(imagenet_dir / rel) as image:
            expected = transform(image.convert("RGB"))
        assert (ours[i] - expected).abs().max().item() <= 1e-6


def test_linked_class_folders_count_as_their_images(tmp_path):
    """A subset made of links to class folders shares its images with the folders it links to."""
    from pruning.image_files import image_files, shared_images

    source = tmp_path / "source" / "c0"
    source.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(source / "a.png")
    (source / "notes.txt").write_text("not an image")
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "c0").symlink_to(source)
    assert image_files(subset) == {(source / "a.png").resolve()}
    assert shared_images(subset, tmp_path / "source") == {(source / "a.png").resolve()}
