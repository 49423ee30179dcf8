"""Which blocks to keep float: each block's share of what quantisation costs, measured on calibration images.

A quantised ViT's error is not spread evenly over its blocks (a few blocks' activations, often the
first or last, have the outliers that an 8-bit grid rounds worst), so keeping the one or two blocks
that cost most in float recovers much of the loss for a small part of the latency. A block's
sensitivity is how much closer the model comes to the float model when that block alone is float:

    sensitivity(b) = KL(float || quantised) - KL(float || quantised with block b float)

in nats per image, on the calibration images. The model is quantised once; each block is then swapped
for its float original in turn. Without reconstruction that is exactly the model
`quantise(..., float_blocks=[b])` makes, since every scale is taken in the float model; with it, the
later layers were fitted to a quantised block b, so it is the gain of un-quantising b alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from pruning.metrics import classification_metrics
from pruning.model import PrunedViT
from pruning.quantisation._quantise import QuantisationError, quantise

__all__ = ["block_sensitivity", "most_sensitive_blocks"]


def block_sensitivity(
    pruned: PrunedViT,
    batches: Sequence[torch.Tensor],
    precision: str,
    *,
    reconstruct: bool = False,
    attention: bool = False,
    stream: int | None = None,
) -> list[float]:
    """sensitivity(b) of every block of `pruned` at `precision` (see the module docstring), calibrated and
    measured on `batches`."""
    batches = list(batches)
    if not batches:
        raise QuantisationError("block sensitivity needs calibration images")
    quantised = quantise(pruned, batches, precision, reconstruct=reconstruct, attention=attention, stream=stream)
    with torch.no_grad():
        reference = torch.cat([pruned.eval()(batch) for batch in batches])

        def kl() -> float:
            logits = torch.cat([quantised(batch) for batch in batches])
            return classification_metrics(logits, None, reference).kl

        whole = kl()
        gains = []
        for float_block, quantised_block in zip(pruned.blocks, quantised.blocks, strict=True):
            with _swapped(quantised.model, quantised_block, float_block):
                gains.append(whole - kl())
    return gains


def most_sensitive_blocks(sensitivity: Sequence[float], count: int) -> list[int]:
    """The indices of the `count` blocks with the largest sensitivity, in block order."""
    if not 0 <= count < len(sensitivity):
        raise QuantisationError(f"keep 0 to {len(sensitivity) - 1} of the {len(sensitivity)} blocks float, not {count}")
    ranked = sorted(range(len(sensitivity)), key=lambda index: -sensitivity[index])
    return sorted(ranked[:count])


@contextlib.contextmanager
def _swapped(model: nn.Module, block: nn.Module, replacement: nn.Module) -> Iterator[None]:
    """Within the `with`, `model` runs `replacement` where it ran `block`."""
    name = next(name for name, module in model.named_modules() if module is block)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, child, replacement)
    try:
        yield
    finally:
        setattr(parent, child, block)
