"""Strong augmentation for function matching, on the decoded images of an `ImageSet`.

Every view is a random resized crop of the evaluation crop, flipped half the time, then timm's
RandAugment; a batch is then mixed with timm's mixup or cutmix. Teacher and student see the same
view, so labels are not needed; where they are used, mixup mixes them as it mixes the images.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms import v2

from pruning.training.config import FineTuneConfig

__all__ = ["Augmenter"]


class Augmenter:
    """uint8 images (B, 3, H, W) -> normalised, augmented float views, and mixed soft labels if given."""

    def __init__(
        self, config: FineTuneConfig, mean: tuple[float, ...], std: tuple[float, ...], size: int, num_classes: int
    ) -> None:
        # timm's RandAugment and mixup draw from these generators, torchvision's crops and flips from
        # torch's: all three are seeded, so a seed gives the same views in every run.
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        self.crop = v2.Compose(
            [v2.RandomResizedCrop(size, scale=(config.crop_scale, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )
        hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
        self.randaugment = rand_augment_transform(config.randaugment, hparams) if config.randaugment else None
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        mixing = config.mixup > 0 or config.cutmix > 0
        self.mix = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=0.0,
                num_classes=num_classes,
            )
            if mixing
            else None
        )
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        views = torch.stack([self._view(image) for image in images])
        x = (views.float() - self.mean) / self.std
        targets = None
        if labels is not None:
            targets = torch.nn.functional.one_hot(labels, self.num_classes).float()
        if self.mix is not None and len(x) % 2 == 0:  # timm mixes a batch with its mirror: it needs an even size
            mixed, mixed_targets = self.mix(x, labels if labels is not None else torch.zeros(len(x), dtype=torch.long))
            x, targets = mixed, (mixed_targets if labels is not None else None)
        return x, targets

    def _view(self, image: torch.Tensor) -> torch.Tensor:
        view = self.crop(image)
        if self.randaugment is None:
            return view
        picture = self.randaugment(Image.fromarray(view.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy()).permute(2, 0, 1)
