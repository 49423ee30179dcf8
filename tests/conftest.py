"""Shared fixtures. Real data (DeiT-Tiny weights, ImageNet sample) comes from VITPRUNE_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_ENV = "VITPRUNE_DATA_DIR"


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory with `deit_tiny_patch16_224/`, `imagenet-sample/` and `imagenet_wnids.txt`."""
    root = _data_dir()
    if root is None:
        pytest.skip(f"real data not configured: set {DATA_ENV} to the shared data directory")
    if not (root / "deit_tiny_patch16_224" / "model.safetensors").is_file():
        pytest.skip(f"{DATA_ENV}={root} has no deit_tiny_patch16_224/model.safetensors")
    return root


@pytest.fixture(scope="session")
def deit_tiny_weights(data_dir: Path) -> Path:
    return data_dir / "deit_tiny_patch16_224" / "model.safetensors"


@pytest.fixture(scope="session")
def imagenet_dir(data_dir: Path) -> Path:
    return data_dir / "imagenet-sample"


@pytest.fixture(scope="session")
def class_map(data_dir: Path) -> Path:
    return data_dir / "imagenet_wnids.txt"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
