"""What the quantisation tests on the small model share besides their fixtures (`conftest.py`)."""

from __future__ import annotations

import torch

from pruning.data import ImageSet

__all__ = ["calibration"]


def calibration(images: ImageSet) -> list[torch.Tensor]:
    """The first 12 of the 24 images, in batches of 6: what the quantised models calibrate on."""
    return [batch for batch, _ in images.subset(range(12)).batches(6)]
