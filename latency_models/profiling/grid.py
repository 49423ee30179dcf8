"""Model shapes, and the grid of table entries that a profile times for each (token ops plan their own)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .ops import ENTRY_KINDS, PRICINGS

SCHEMA = "vitprune.latency-table"
SCHEMA_VERSION = 1
CHAIN_BLOCKS = 12
"""Dense blocks run back to back in a `chain` entry (see `latency_models.schema.ChainEntry`): the
depth of DeiT/ViT Tiny, Small and Base, so the chain moves as many weights through the caches as
the real model does."""
REDUCING_PAIRS = CHAIN_BLOCKS // 2
"""Pairs of a dense and a token-reducing block in a `reducing_chain` entry: as many blocks as a chain."""


@dataclass(frozen=True)
class Shape:
    """What sets the cost of a plain ViT: widths, depth-independent. `tokens` counts prefix tokens."""

    embed_dim: int
    heads: int
    head_dim: int
    mlp_hidden: int
    tokens: int
    prefix: int = 1
    image_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    round_to: int = 8


def _vit(embed_dim: int, heads: int, prefix: int = 1, patch: int = 16, image: int = 224) -> Shape:
    tokens = (image // patch) ** 2 + prefix
    return Shape(embed_dim, heads, embed_dim // heads, 4 * embed_dim, tokens, prefix, image, patch)


SHAPES: dict[str, Shape] = {
    "deit_tiny_patch16_224": _vit(192, 3),
    "deit_small_patch16_224": _vit(384, 6),
    "deit_base_patch16_224": _vit(768, 12),
    "deit_tiny_distilled_patch16_224": _vit(192, 3, prefix=2),
    "deit_small_distilled_patch16_224": _vit(384, 6, prefix=2),
    "deit_base_distilled_patch16_224": _vit(768, 12, prefix=2),
    "vit_tiny_patch16_224": _vit(192, 3),
    "vit_small_patch16_224": _vit(384, 6),
    "vit_base_patch16_224": _vit(768, 12),
    "vit_base_patch32_224": _vit(768, 12, patch=32),
}


def token_grid(max_tokens: int, step: int = 8) -> list[int]:
    """Sequence lengths to time: dense at the small end (where cost curves bend), every `step` after."""
    points = {1, 2, 3, 4, 6, 8, 12, 16, max_tokens - 1, max_tokens}
    points.update(range(step, max_tokens, step))
    return sorted(p for p in points if 1 <= p <= max_tokens)


def offgrid_tokens(max_tokens: int, step: int = 8) -> list[int]:
    """Chain entries that show what a token count off the grid costs: at about a quarter, a half and
    three quarters of the range, a multiple of `step` that is not on the chain grid (an odd multiple)
    and every count up to the next multiple. The token grid is timed at multiples of `step`, where
    kernels run their vector loops without a tail, while a pruned model's counts almost never land
    there. Each group is timed in one profile with its own multiple, so the predictor compares
    counts measured in the same conditions (a table completed later gets whole new groups)."""
    points = set()
    for fraction in (0.25, 0.5, 0.75):
        base = step * (2 * round(max_tokens * fraction / (2 * step)) + 1)  # an odd multiple of step
        points.update(range(base, base + step))
    return sorted(p for p in points if 2 * step < p < max_tokens - 1)


def width_grid(full: int, round_to: int, points: int = 16) -> list[int]:
    """MLP widths to time: multiples of `round_to` (the only widths a config may have), zero and full."""
    step = round_to * max(1, math.ceil(full / round_to / points))
    return sorted({0, full, *range(step, full, step)})


def plan(
    shape: Shape, batches: list[int], *, token_step: int = 8, width_points: int = 16, op_step: int = 16
) -> list[dict]:
    """Every entry key to time for `shape` at `batches`: the table's grid. Block halves lie on a token
    grid of `token_step`, token ops (and the composites) on the coarser one of `op_step`."""
    keys: list[dict] = []
    tokens = token_grid(shape.tokens, token_step)
    op_tokens = token_grid(shape.tokens, op_step)
    widths = width_grid(shape.mlp_hidden, shape.round_to, width_points)
    for batch in batches:
        base = {"batch": batch, "embed_dim": shape.embed_dim}
        keys.append(
            {
                "op": "embed",
                **base,
                "tokens": shape.tokens,
                "image_size": shape.image_size,
                "patch_size": shape.patch_size,
            }
        )
        # Padding (and so key masks) only exists in batches of more than one image.
        masks = (False, True) if batch > 1 else (False,)
        for n in tokens:
            keys.append({"op": "head", **base, "tokens": n, "num_classes": shape.num_classes})
            for heads in range(shape.heads + 1):
                for scored in (False, True):
                    for masked in masks:
                        if scored and heads == 0:
                            continue  # a block without heads has no scores and cannot reduce tokens
                        keys.append(
                            {
                                "op": "attention",
                                **base,
                                "tokens": n,
                                "heads": heads,
                                "head_dim": shape.head_dim,
                                "scored": scored,
                                "masked": masked,
                            }
                        )
            for width in widths:
                keys.append({"op": "mlp", **base, "tokens": n, "mlp_hidden": width})
        for n in sorted({*op_tokens, *offgrid_tokens(shape.tokens, token_step)}):
            keys.append(
                {
                    "op": "chain",
                    **base,
                    "tokens": n,
                    "heads": shape.heads,
                    "head_dim": shape.head_dim,
                    "mlp_hidden": shape.mlp_hidden,
                    "blocks": CHAIN_BLOCKS,
                }
            )
        for entry in ENTRY_KINDS.values():  # each token op's own entries, on the coarser token grid
            keys += entry.keys(shape, batch, op_tokens)
        keys += composite_keys(shape, batch, op_tokens)
    return keys


def composite_keys(shape: Shape, batch: int, tokens: list[int]) -> list[dict]:
    """The whole dense model, and a reducing chain of each token op at about all, three quarters, half,
    a quarter and an eighth of the tokens, cutting as much as its `chain_tokens_out` says. Every token
    op's counts lie on `tokens` (the token ops' grid), so the predictor compares each pair with the
    op's entries at exactly its counts."""
    block = {"heads": shape.heads, "head_dim": shape.head_dim, "mlp_hidden": shape.mlp_hidden}
    keys = [
        {
            "op": "model",
            "batch": batch,
            "embed_dim": shape.embed_dim,
            "tokens": shape.tokens,
            **block,
            "depth": CHAIN_BLOCKS,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
            "num_classes": shape.num_classes,
        }
    ]
    usable = [n for n in tokens if n - shape.prefix >= 4]  # room to halve the patches and to merge a pair
    if not usable:
        return keys
    patches = shape.tokens - shape.prefix
    starts = sorted({_nearest(usable, shape.prefix + f * patches) for f in (1, 0.75, 0.5, 0.25, 0.125)})
    for n_in in starts:
        for op in PRICINGS.values():
            keys.append(
                {
                    "op": "reducing_chain",
                    "batch": batch,
                    "embed_dim": shape.embed_dim,
                    "tokens": n_in,
                    "tokens_out": op.chain_tokens_out(n_in, shape.prefix, tokens),
                    "prefix": shape.prefix,
                    **block,
                    "reduction": op.kind,
                    "pairs": REDUCING_PAIRS,
                }
            )
    return keys


def composite_parts(key: dict) -> list[dict] | None:
    """The entry keys a composite entry (chain, reducing chain, model) is made of, per block, pair or
    forward pass as its figure is; None for a part. A model without interactions between its parts
    (an analytic one) prices a composite as their sum."""
    op = key["op"]
    if op not in ("chain", "reducing_chain", "model"):
        return None
    common = {"batch": key["batch"], "embed_dim": key["embed_dim"]}
    n, hidden, heads = key["tokens"], key["mlp_hidden"], {"heads": key["heads"], "head_dim": key["head_dim"]}

    def attention(tokens: int, scored: bool = False) -> dict:
        return {"op": "attention", **common, "tokens": tokens, **heads, "scored": scored, "masked": False}

    def mlp(tokens: int) -> dict:
        return {"op": "mlp", **common, "tokens": tokens, "mlp_hidden": hidden}

    if op == "chain":
        return [attention(n), mlp(n)]
    if op == "model":
        ends = {"tokens": n, "image_size": key["image_size"], "patch_size": key["patch_size"]}
        head = {"op": "head", **common, "tokens": n, "num_classes": key["num_classes"]}
        return [{"op": "embed", **common, **ends}, *[attention(n), mlp(n)] * key["depth"], head]
    reduce = PRICINGS[key["reduction"]].chain_parts(key, attention)
    return [attention(n), mlp(n), *reduce, mlp(key["tokens_out"])]


def _nearest(values: list[int], target: float) -> int:
    return min(values, key=lambda v: (abs(v - target), v))


def entry_id(key: dict) -> str:
    return json.dumps({k: v for k, v in key.items() if k not in ("median_ms", "spread_ms")}, sort_keys=True)
