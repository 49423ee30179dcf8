"""Which files an image folder is read from, apart from the loader so that listing them needs no torch.

`pruning.data` loads these files; the command line's `submit --upload` and the service's upload
checks only list them, and import this module alone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "image_files", "shared_images"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""File name suffixes (lower case) of the images an ImageFolder holds."""


def image_files(root: Path) -> set[Path]:
    """Every image file under `root`, resolved; FileNotFoundError for a folder that is not there."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    return {p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def shared_images(first: Path, second: Path) -> set[Path]:
    """The image files two folders share: figures measured on `second` are not held out from `first`."""
    return image_files(first) & image_files(second)
