"""What an accuracy figure was measured on: an image set's name, size and preprocessing, as metrics.json records it.

Every accuracy vitprune reports belongs to an image set: the calibration images the search scores
trials on, or the validation images it holds out for the Pareto models. A figure without its set
misleads (a calibration top-1 read as a validation one), so metrics.json keeps, under `datasets`,
one entry per role::

    {"val": {"name": "imagenet-sample", "images": 500, "classes": 1000, "labelled": true,
             "preprocessing": {"resize": 248, "crop": [224, 224], ...}},
     "calib": {"name": "imagenet-sample", "images": 500, ...}}

Names come from folder names only, never whole paths: a bundle or an API answer must not show
where the files lie on the machine that made it. This module needs neither torch nor timm at import
time (the service's API schemas use it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from pruning.data import ImageSet

__all__ = [
    "ROLES",
    "describe_images",
    "describe_preprocessing",
    "eval_data_config",
    "image_set_name",
    "job_image_sets",
    "preprocessing",
]

ROLES = {"val": "validation", "calib": "calibration"}
"""The roles an image set plays, and the word a label uses for each."""

_GENERIC = frozenset({"val", "valid", "validation", "calib", "calibration", "train", "test", "eval", "images", "data"})
"""Folder names that say only the role: the parent folder's name goes in front (imagenet/val)."""
_UPLOAD = re.compile(r"[0-9a-f]{32}")


def image_set_name(path: str | PurePath) -> str:
    """A short name for an image folder that reveals no machine path.

    The folder's own name; its parent's in front for a name that only says the role ("imagenet/val");
    for a folder the service unpacked from an upload, the upload's ref ("upload:datasets/<id>"),
    which is what the user wrote in the job.
    """
    parts = PurePath(str(path)).parts
    if len(parts) >= 3 and parts[-3:-1] == ("uploads", "datasets") and _UPLOAD.fullmatch(parts[-1]):
        return f"upload:datasets/{parts[-1]}"
    name = parts[-1] if parts else str(path)
    if name.lower() in _GENERIC and len(parts) >= 2 and parts[-2] not in ("/", "\\"):
        return f"{parts[-2]}/{name}"
    return name


def job_image_sets(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The names of a job's calibration and validation sets, from its JSON spec (before any image is read).

    Without a validation folder the search holds out a seeded share of the calibration folder.
    """
    calib = image_set_name(spec["calib"])
    if spec.get("val"):
        return {"calib": {"name": calib}, "val": {"name": image_set_name(spec["val"])}}
    holdout = float(spec.get("holdout", 0.5))
    return {
        "calib": {"name": f"{calib} ({1 - holdout:.0%} of it)"},
        "val": {"name": f"{calib} (held-out {holdout:.0%}, never searched)"},
    }


def eval_data_config(model: nn.Module, image_size: Sequence[int] | None = None) -> dict[str, Any]:
    """timm's eval data config for `model` (resize, crop, mean, std), at `image_size` when given.

    timm reads it from the pretrained config; a model built at another image size needs that size.
    """
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], *image_size)
    return config


def preprocessing(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """timm's eval transform for `data_config`, as plain JSON: resize, crop, interpolation, mean, std.

    Mirrors `timm.data.create_transform(..., is_training=False)`: the image is resized to the crop
    size divided by `crop_pct` (shorter side for the "center" mode), then cropped.
    """
    height, width = (int(v) for v in data_config["input_size"][-2:])
    crop_pct = float(data_config.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    mode = data_config.get("crop_mode") or "center"
    resize = [math.floor(height / crop_pct), math.floor(width / crop_pct)]
    return {
        "resize": resize[0] if height == width and mode == "center" else resize,
        "crop": [height, width],
        "crop_mode": mode,
        "crop_pct": crop_pct,
        "interpolation": str(data_config.get("interpolation") or "bilinear"),
        "mean": [round(float(v), 4) for v in data_config["mean"]],
        "std": [round(float(v), 4) for v in data_config["std"]],
    }


def describe_images(name: str, images: ImageSet, data_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One `datasets` entry of metrics.json: the set's name, how many images and classes, its preprocessing.

    `classes` counts the classes the images belong to (a class map may name many more), or the
    folders of an unlabelled set.
    """
    labelled = images.labels is not None
    entry: dict[str, Any] = {
        "name": name,
        "images": len(images),
        "classes": int(images.labels.unique().numel()) if labelled else len(images.classes),
        "labelled": labelled,
    }
    if images.skipped:
        entry["skipped"] = len(images.skipped)
    if data_config is not None:
        entry["preprocessing"] = preprocessing(data_config)
    return entry


def describe_preprocessing(prep: Mapping[str, Any]) -> str:
    """The preprocessing in words, for cards: 'resize to 248 px (shorter side, bicubic), centre crop 224x224, ...'."""
    resize = prep["resize"]
    size = f"{resize} px (shorter side" if isinstance(resize, int) else f"{resize[0]}x{resize[1]} px ("
    crop = "x".join(str(v) for v in prep["crop"])
    return (
        f"resize to {size}, {prep['interpolation']}), {prep['crop_mode']} crop {crop},"
        f" normalise with mean {_triple(prep['mean'])} and std {_triple(prep['std'])}"
    )


def _triple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
