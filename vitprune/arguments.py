"""argparse types shared by the command-line modules."""

from __future__ import annotations

import argparse

__all__ = ["batch_sizes", "ints", "strings"]


def strings(text: str) -> tuple[str, ...]:
    """Comma-separated words, e.g. `cls_attn,head_weighted`."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. `3,6,9` (empty text gives none)."""
    try:
        return tuple(int(part) for part in strings(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def batch_sizes(text: str) -> list[int]:
    """Comma-separated positive integers, at least one."""
    values = list(ints(text))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
