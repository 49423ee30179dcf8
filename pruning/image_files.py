"""Which files an image folder is read from, apart from the loader so that listing them needs no torch.

`pruning.data` loads these files; the command line's `submit --upload` and the service's upload
checks only list them, and import this module alone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "image_files", "shared_images"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""File name suffixes (lower case) of the images an ImageFolder holds."""


def image_files(root: Path) -> set[Path]:
    """Every image file under `root`, resolved; FileNotFoundError for a folder that is not there.

    Linked class folders are followed, as the loader follows them: a subset of a large set is often a
    folder of links, and images reached through a link are still the same images."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    return {
        (Path(folder) / name).resolve()
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS and (Path(folder) / name).is_file()
    }


def shared_images(first: Path, second: Path) -> set[Path]:
    """The image files two folders share: figures measured on `second` are not held out from `first`."""
    return image_files(first) & image_files(second)
