"""Image sets for evaluating (pruned) timm models.

Images are decoded once, resized and cropped with timm's own eval transform and kept as a uint8 stack,
so a pruning search can re-evaluate many candidate models on the same pixels without decoding again.
Normalisation happens per batch in float32 and is bit-identical to timm's ToTensor + Normalize.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as tv_transforms

from pruning.image_files import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "ImageSet", "load_image_folder"]

logger = logging.getLogger(__name__)

# Bump when the cache layout or the preprocessing changes, so stale caches are never reused.
_CACHE_VERSION = 1

# Steps that turn the PIL image into a (normalised) tensor; everything before them is PIL -> PIL.
_TENSOR_STEP_NAMES = frozenset({"ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize"})


class DatasetError(ValueError):
    """The image folder or class map cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class ImageSet:
    """Decoded, resized and cropped images (uint8, N x 3 x H x W) with optional labels."""

    images: torch.Tensor
    labels: torch.Tensor | None
    paths: list[str]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """A new set holding the given images, in the given order (the pixels are copied)."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return replace(
            self,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            paths=[self.paths[i] for i in index.tolist()],
            classes=list(self.classes),
            skipped=list(self.skipped),
        )

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Two disjoint parts: `round(fraction * N)` images chosen by a seeded shuffle, and the rest.

        Each part keeps the folder order, so results do not depend on the shuffle beyond membership.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        cut = round(fraction * len(self))
        first, second = order[:cut].sort().values, order[cut:].sort().values
        return self.subset(first), self.subset(second)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Normalised float32 batches and their labels (None for an unlabelled set).

        The arithmetic (`/255` then `(x - mean) / std` in float32) is the same as torchvision's
        ToTensor + Normalize, so the model sees exactly what timm's eval transform would give it.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        for start in range(0, len(self), batch_size):
            chunk = self.images[start : start + batch_size].to(torch.float32).div(255)
            labels = None if self.labels is None else self.labels[start : start + batch_size]
            yield chunk.sub_(mean).div_(std), labels


def load_image_folder(
    root: str | Path,
    data_config: dict[str, Any],
    *,
    class_map: str | Path | None = None,
    max_images: int | None = None,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """Decode an ImageFolder (`root/<class>/<image>`) or a flat folder of images into an `ImageSet`.

    `data_config` is `timm.data.resolve_data_config({}, model=model)`. With `class_map` (one class name
    per line, line number = class index) folder names are labelled by their line, so a folder holding
    only some classes still gets the model's indices. `max_images` keeps that many files spread evenly
    over the sorted file list, so every part of the folder (every class) is represented. Unreadable
    files are skipped and listed in `skipped`. `workers` threads decode (default: one per CPU, at most
    16): a GPU scores a few thousand images in seconds, and decoding them must not take minutes.
    """
    root_path = Path(root)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    files, class_names = _scan(root_path)
    class_list, class_map_text = _class_list(class_names, class_map)
    files = _spread(files, max_images)

    cache_path = None
    if cache_dir is not None:
        key = _cache_key(root_path, files, data_config, class_map_text, max_images)
        cache_path = Path(cache_dir) / f"imageset-{key}"
        cached = _load_cache(cache_path)
        if cached is not None:
            logger.info("loaded %d images from cache %s", len(cached), cache_path)
            return cached

    workers = workers or min(16, os.cpu_count() or 1)
    image_set = _build(root_path, files, class_list, data_config, workers)
    if cache_path is not None:
        _save_cache(cache_path, image_set)
    return image_set


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _scan(root: Path) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Relative image paths with their class folder (None for a flat folder) and the class folder names."""
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist; pass the directory that holds the images")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory; pass the folder that holds the images, not a file")
    # Hidden folders are skipped so that e.g. a cache directory inside root is not taken for a class.
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes: list[str] = []
    files: list[tuple[str, str | None]] = []
    for subdir in subdirs:
        found = sorted(p for p in subdir.rglob("*") if _is_image(p))
        if not found:
            logger.warning("ignoring folder %s: it holds no images", subdir)
            continue
        classes.append(subdir.name)
        files.extend((p.relative_to(root).as_posix(), subdir.name) for p in found)
    top_level = sorted(p for p in root.iterdir() if _is_image(p))
    if classes and top_level:
        logger.warning("ignoring %d images directly in %s: the folder has class subfolders", len(top_level), root)
    elif not classes:
        files = [(p.name, None) for p in top_level]
    if not files:
        raise DatasetError(
            f"no images found in {root}; expected {root}/<class>/<image> or images directly in it, "
            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return files, classes


def _read_class_map(path: Path) -> tuple[list[str], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"cannot read class map {path}: {error}; pass a text file, one class per line") from error
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or "" in names:
        raise DatasetError(f"class map {path} is empty or has blank lines; it needs one class name per line")
    if len(set(names)) != len(names):
        raise DatasetError(f"class map {path} lists a class name twice; line numbers must be unique classes")
    return names, text


def _class_list(class_names: list[str], class_map: str | Path | None) -> tuple[list[str], str | None]:
    """The class index order: the class map's lines, or the sorted folder names without one."""
    if class_map is None:
        return class_names, None
    names, text = _read_class_map(Path(class_map))
    known = set(names)
    for name in class_names:
        if name not in known:
            raise DatasetError(
                f"class folder '{name}' is not in class map {class_map}; "
                "rename the folder to a listed class or use a class map that lists it"
            )
    return names, text


def _spread(files: list[tuple[str, str | None]], max_images: int | None) -> list[tuple[str, str | None]]:
    """At most `max_images` files, evenly spaced so that all classes of a sorted folder are sampled."""
    if max_images is None or max_images >= len(files):
        return files
    return [files[i * len(files) // max_images] for i in range(max_images)]


def _pil_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], Image.Image]:
    """timm's eval transform up to (not including) its to-tensor step: timm's own resize and crop."""
    full = create_transform(**data_config, is_training=False)
    steps = list(full.transforms) if isinstance(full, tv_transforms.Compose) else [full]
    for position, step in enumerate(steps):
        if type(step).__name__ in _TENSOR_STEP_NAMES or isinstance(step, tv_transforms.ToTensor):
            return tv_transforms.Compose(steps[:position])
    raise ValueError(f"timm's eval transform for {data_config} has no to-tensor step: {full}")


def _decode(path: Path, transform: Callable[[Image.Image], Image.Image]) -> torch.Tensor | str:
    """A uint8 CHW tensor, or the reason the file cannot be used."""
    try:
        with Image.open(path) as image:
            picture = transform(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    array = np.asarray(picture, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _decode_all(paths: list[Path], data_config: dict[str, Any], workers: int) -> list[torch.Tensor | str]:
    transform = _pil_transform(data_config)
    # PIL releases the GIL while decoding and resizing, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: _decode(p, transform), paths))


def _build(
    root: Path,
    files: list[tuple[str, str | None]],
    classes: list[str],
    data_config: dict[str, Any],
    workers: int,
) -> ImageSet:
    decoded = _decode_all([root / rel for rel, _ in files], data_config, workers)
    images: list[torch.Tensor] = []
    kept: list[tuple[str, str | None]] = []
    skipped: list[tuple[str, str]] = []
    for (rel, cls), result in zip(files, decoded, strict=True):
        if isinstance(result, str):
            skipped.append((rel, result))
        else:
            images.append(result)
            kept.append((rel, cls))
    if skipped:
        logger.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(skipped), root, skipped[0])
    if not images:
        raise DatasetError(f"none of the {len(files)} image files in {root} could be read; see the skipped list")
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) != 1:
        raise DatasetError(f"the transform gave images of different sizes {sorted(sizes)}; use a crop mode")
    index = {name: i for i, name in enumerate(classes)}
    labelled = kept[0][1] is not None
    labels = torch.tensor([index[cls] for _, cls in kept], dtype=torch.int64) if labelled else None
    return ImageSet(
        images=torch.stack(images),
        labels=labels,
        paths=[rel for rel, _ in kept],
        classes=list(classes),
        mean=tuple(float(v) for v in data_config.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in data_config.get("std", IMAGENET_DEFAULT_STD)),
        skipped=skipped,
    )


def _cache_key(
    root: Path,
    files: list[tuple[str, str | None]],
    data_config: dict[str, Any],
    class_map_text: str | None,
    max_images: int | None,
) -> str:
    """Hash of everything that determines the decoded pixels and labels."""
    listing = []
    for rel, _ in files:
        stat = (root / rel).stat()
        listing.append([rel, stat.st_size, stat.st_mtime_ns])
    payload = {
        "version": _CACHE_VERSION,
        "root": str(root.resolve()),
        "files": listing,
        "data_config": {k: data_config[k] for k in sorted(data_config)},
        "class_map": class_map_text,
        "max_images": max_images,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _save_cache(base: Path, image_set: ImageSet) -> None:
    """Write the tensors as safetensors and the strings as JSON (never pickle), each atomically."""
    base.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": image_set.images.contiguous()}
    if image_set.labels is not None:
        tensors["labels"] = image_set.labels.contiguous()
    meta = {
        "paths": image_set.paths,
        "classes": image_set.classes,
        "mean": list(image_set.mean),
        "std": list(image_set.std),
        "skipped": [list(item) for item in image_set.skipped],
    }
    tensor_tmp = base.with_name(f"{base.name}.{os.getpid()}.tmp.safetensors")
    json_tmp = base.with_name(f"{base.name}.{os.getpid()}.tmp.json")
    save_file(tensors, str(tensor_tmp))
    json_tmp.write_text(json.dumps(meta), encoding="utf-8")
    # The JSON is moved last: its presence marks a complete cache entry.
    os.replace(tensor_tmp, base.with_suffix(".safetensors"))
    os.replace(json_tmp, base.with_suffix(".json"))


def _load_cache(base: Path) -> ImageSet | None:
    tensor_path, json_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
    if not (tensor_path.is_file() and json_path.is_file()):
        return None
    try:
        tensors = load_file(str(tensor_path))
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        return ImageSet(
            images=tensors["images"],
            labels=tensors.get("labels"),
            paths=list(meta["paths"]),
            classes=list(meta["classes"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            skipped=[(rel, reason) for rel, reason in meta["skipped"]],
        )
    except (OSError, ValueError, KeyError) as error:
        logger.warning("ignoring unreadable image cache %s: %s", base, error)
        return None
