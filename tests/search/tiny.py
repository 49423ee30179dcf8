"""A small real timm ViT (random weights) and folders of random images, for fast search tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pruning.data import ImageSet
from search import JobSpec, SearchSpace

MODEL = "deit_tiny_patch16_224"
KWARGS = {"img_size": 32, "depth": 4, "num_classes": 10}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MODEL, **KWARGS).eval()


def random_images(n: int) -> ImageSet:
    """`n` seeded random images at the small model's size, with random labels, already loaded."""
    generator = torch.Generator().manual_seed(0)
    size, classes = KWARGS["img_size"], KWARGS["num_classes"]
    return ImageSet(
        images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, classes, (n,), generator=generator),
        paths=[f"image{i}.png" for i in range(n)],
        classes=[f"c{i}" for i in range(classes)],
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def write_images(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(KWARGS["num_classes"]):
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{seed}_{c}_{i}.png")
    return root


def tiny_job(root: Path, **changes) -> JobSpec:
    """A job on the small model: weights and images are written under `root` once."""
    weights = root / "weights.safetensors"
    if not weights.exists():
        save_file(tiny_model().state_dict(), str(weights))
        write_images(root / "calib", per_class=6, seed=1)
        write_images(root / "val", per_class=2, seed=2)
    fields = {
        "model": MODEL,
        "weights": weights,
        "model_kwargs": KWARGS,
        "device": "fpga",
        "batch": 1,
        "budget_ratio": 0.93,
        "calib": root / "calib",
        "val": root / "val",
        "trials": 16,
        "space": SearchSpace(token_blocks=(1, 2), heads=True, mlp=True, group=2),
    }
    return JobSpec(**(fields | changes))
