"""Power-of-two scales chosen for the whole network (RAPQ's idea), not layer by layer.

Layer by layer, each input's power-of-two scale is the one of the two around its min-max scale that
rounds that input's own values with the smaller squared error. But a scale's rounding error and its
clipping error reach the output through every layer after it, and what matters is the output: a
coarser grid on one input may cost nothing downstream while a finer one elsewhere saves much. So,
starting from the layer-by-layer choice, each scale in turn, in forward order, tries the power of two
below and above its own and moves where that brings the model's logits closer to the float model's
(KL divergence on calibration images, by more than two standard errors of the per-image change, so
that chance does not move it), with every scale before it already settled. The scales are
the activation grids a power-of-two device shifts by: every quantised layer's input and, where the
attention products are quantised, the scaled query, keys and values. Per-channel weight scales keep
their own squared-error choice (hundreds per layer; each moves the output far less than an input's).

Each try runs the model only from the block that holds the scale (the blocks before it are cached),
so a DeiT-Tiny on 128 images takes a few minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning.metrics import per_image_kl
from pruning.model import PrunedViT
from pruning.quantisation._attention import AttentionProducts
from pruning.quantisation._linear import QuantisedLinear, zero_point_for

__all__ = ["SEARCH_IMAGES", "network_pow2"]

SEARCH_IMAGES = 128
"""Calibration images whose logits judge each try; each try costs a forward pass over them."""
MARGIN = 2.0
"""A move is kept only where it lowers the KL by this many standard errors of the per-image change:
with a hundred scales to try, a move that lowers the KL on these images by chance alone would be kept
a few times, and such a move makes the model worse on others."""


def network_pow2(
    model: PrunedViT,
    reference: torch.Tensor,
    batches: Sequence[torch.Tensor],
    lows: dict[str, float],
) -> int:
    """Move each activation scale of the quantised `model` by a factor of two where that lowers the KL of
    its logits on `batches` to `reference` (the float model's logits on them), in forward order (see the
    module docstring). `lows`: quantised layer name -> the smallest input value calibrated (its zero
    point follows the scale). Returns how many scales moved."""
    names = {id(module): name for name, module in model.model.named_modules()}
    blocks = model.blocks
    moved = 0
    with torch.no_grad():
        states = [model.embed(batch) for batch in batches]
        current = _kl(model, states, 0, reference)
        for index, block in enumerate(blocks):
            for site in _sites_of(list(block.modules()), names, lows):
                current, changed = _settle(site, lambda i=index, s=states: _kl(model, s, i, reference), current)
                moved += changed
            states = [model.run_blocks(state, start=index, stop=index + 1) for state in states]
        inside = {id(m) for block in blocks for m in block.modules()}
        rest = [m for m in model.model.modules() if id(m) not in inside]
        for site in _sites_of(rest, names, lows):
            current, changed = _settle(site, lambda s=states: _kl(model, s, len(blocks), reference), current)
            moved += changed
    return moved


@dataclass
class _Site:
    """One power-of-two activation scale: how to read it and set it (with what follows from it)."""

    get: Callable[[], float]
    put: Callable[[float], object]
    layer: QuantisedLinear | None = None


def _sites_of(modules: list[nn.Module], names: dict[int, str], lows: dict[str, float]) -> list[_Site]:
    """The scales of `modules` in forward order: the attention products right after their qkv layer."""
    sites = [_input_site(m, lows[names[id(m)]]) for m in modules if isinstance(m, QuantisedLinear)]
    for module in modules:
        products = getattr(module, "products", None)
        if hasattr(module, "qkv") and isinstance(products, AttentionProducts):
            after = next(i for i, site in enumerate(sites) if site.layer is module.qkv) + 1
            sites[after:after] = [_Site(lambda b=b: float(b), b.fill_) for b in _operand_scales(products)]
    return sites


def _operand_scales(products: AttentionProducts) -> list[torch.Tensor]:
    return [products.query_scale, products.key_scale, products.value_scale]


def _input_site(layer: QuantisedLinear, low: float) -> _Site:
    def put(scale: float) -> None:
        layer.input_scale.fill_(scale)
        layer.input_zero_point.fill_(zero_point_for(low, scale))

    return _Site(lambda: float(layer.input_scale), put, layer)


def _settle(site: _Site, kl: Callable[[], torch.Tensor], current: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Move the site's scale (whose per-image `kl()` is `current`) to half or twice it where that lowers the
    mean KL by more than `MARGIN` standard errors of the per-image change (the better move if both do);
    (the per-image KL kept, 1 if the scale moved)."""
    scale = site.get()
    best, best_kl = scale, current
    for candidate in (scale / 2, scale * 2):
        site.put(candidate)
        tried = kl()
        gain = best_kl - tried
        if gain.mean() > MARGIN * gain.std() / len(gain) ** 0.5:
            best, best_kl = candidate, tried
    site.put(best)
    return best_kl, int(best != scale)


def _kl(model: PrunedViT, states: list, start: int, reference: torch.Tensor) -> torch.Tensor:
    """Per-image KL of the model's logits, run from block `start` on the cached `states`, to `reference`."""
    return per_image_kl(torch.cat([model.head(model.run_blocks(state, start=start)) for state in states]), reference)
