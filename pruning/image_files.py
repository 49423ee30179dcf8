"""Which files an image folder is read from, apart from the loader so that listing them needs no torch.

`pruning.data` loads these files; the command line's `submit --upload` and the service's upload
checks only list them, and import this module alone.
"""

from __future__ import annotations

__all__ = ["IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""File name suffixes (lower case) of the images an ImageFolder holds."""
