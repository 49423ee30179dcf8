"""A pruned structure in a few words, for hover texts and tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pruning.quantisation.precisions import FLOAT, precision_label
from pruning.tokens import TOKEN_OPS

__all__ = ["summarise"]


def summarise(config: dict[str, Any], precision: str = FLOAT, float_blocks: Sequence[int] = ()) -> str:
    """The structure, and the precision when it is not fp32 (with the blocks a quantised model keeps float)."""
    blocks = config.get("blocks", [])
    tokens = []
    for index, block in enumerate(blocks):
        op = block.get("tokens", {})
        words = TOKEN_OPS[op["kind"]].model_validate(op).summary() if op.get("kind") in TOKEN_OPS else ""
        if words:
            tokens.append(f"{words}@{index}")
    parts = [", ".join(tokens) or "all tokens"]
    heads = [block.get("heads") for block in blocks]
    mlp = [block.get("mlp_hidden") for block in blocks]
    for name, widths in (("heads", heads), ("mlp", mlp)):
        if widths:
            uniform = len(set(widths)) == 1
            parts.append(f"{name} {widths[0]} per block" if uniform else f"{name} " + "/".join(map(str, widths)))
    if config.get("package_token"):
        parts.append("package token")
    if precision != FLOAT:
        parts.append(precision_label(precision, float_blocks))
    return "; ".join(parts)
