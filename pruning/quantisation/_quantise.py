"""Post-training quantisation of a pruned ViT: every Linear to W8A8 (or W4A8), calibrated on real images.

What is quantised: every `nn.Linear` (attention qkv and projection, MLP fc1 and fc2, the classifier),
the layers that hold nearly all of a ViT's multiply-accumulates. What stays float, as onnxruntime's
int8 CPU recipe runs a ViT: the patch embedding, LayerNorm, softmax and the attention products, GELU
and the residual adds. For a device that multiplies the attention products in int8 too (a phone
running the model fully in int8, an FPGA), `attention=True` quantises them as it does; for one that
computes everything in integer, `stream` quantises the rest of what it stores (the residual stream,
GELU's and softmax's inputs, the patch embedding).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pruning.model import PrunedViT
from pruning.quantisation._attention import AttentionProducts, operand_scale
from pruning.quantisation._linear import SAMPLE_VALUES, QuantisedConv2d, QuantisedLinear, activation_qparams
from pruning.quantisation._pow2_search import MARGIN, SEARCH_IMAGES, network_pow2
from pruning.quantisation._reconstruct import reconstruct as reconstruct_layers
from pruning.quantisation._stream import (
    StreamGrid,
    StreamObserver,
    gelu_slots,
    stream_qparams,
    stream_slots,
    tensor_qparams,
)
from pruning.quantisation.precisions import PRECISIONS

__all__ = [
    "QuantisationError",
    "attach_products",
    "attach_stream_grids",
    "kept_float",
    "quantise",
    "quantised_layers",
    "wrap_linears",
    "wrap_patch_embedding",
]

NO_IMAGES = "quantisation needs calibration images to set the activation ranges"


class QuantisationError(ValueError):
    """A precision that does not exist, or a model that cannot be quantised as asked."""


def wrap_linears(
    model: nn.Module, keep_float: Iterable[nn.Module] = (), weight_bits: int = 8
) -> dict[str, QuantisedLinear]:
    """Replace every plain `nn.Linear` in `model`, except those inside `keep_float` (blocks kept in float),
    by a QuantisedLinear of `weight_bits`-bit weights sharing its parameters; name -> layer."""
    return _wrap(model, nn.Linear, QuantisedLinear, weight_bits, _inside(keep_float))


def wrap_patch_embedding(model: nn.Module, weight_bits: int = 8) -> dict[str, QuantisedConv2d]:
    """Replace the convolutions of `model`'s patch embedding by QuantisedConv2d layers sharing their
    parameters; name -> layer. A fully integer device multiplies them in integers too."""
    return _wrap(model.patch_embed, nn.Conv2d, QuantisedConv2d, weight_bits, prefix="patch_embed")


def _wrap(
    root: nn.Module, base: type, kind: type, weight_bits: int, skipped: set[int] = frozenset(), prefix: str = ""
) -> dict:
    """Replace every plain `base` layer inside `root` (but those in `skipped`) by a `kind` sharing its
    parameters; name (under `prefix`) -> layer."""
    layers = {}
    for name, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is base and id(child) not in skipped:
                layer = kind.wrap(child, weight_bits)
                setattr(module, child_name, layer)
                layers[".".join(part for part in (prefix, name, child_name) if part)] = layer
    return layers


def attach_products(model: nn.Module, keep_float: Iterable[nn.Module] = ()) -> dict[str, AttentionProducts]:
    """Give every attention layer with heads left, except those inside `keep_float`, an
    `AttentionProducts` (scales still to be calibrated); name of the attention layer -> its products."""
    products: dict[str, AttentionProducts] = {}
    for name, module in _attentions(model, keep_float).items():
        module.products = products[name] = AttentionProducts()
    return products


def _attentions(model: nn.Module, keep_float: Iterable[nn.Module] = ()) -> dict[str, nn.Module]:
    """name -> every attention layer of `model` that has heads left and is not inside `keep_float`."""
    skipped = _inside(keep_float)
    return {
        name: m
        for name, m in model.named_modules()
        if hasattr(m, "qkv") and getattr(m, "num_heads", 0) > 0 and id(m) not in skipped
    }


def _inside(modules: Iterable[nn.Module]) -> set[int]:
    """ids of `modules` and of everything inside them."""
    return {id(inner) for module in modules for inner in module.modules()}


def kept_float(pruned: PrunedViT, float_blocks: Iterable[int]) -> list[nn.Module]:
    """The blocks of `pruned` at the indices `float_blocks` (checked): those a mixed-precision model keeps float."""
    blocks = pruned.blocks
    chosen = sorted(set(float_blocks))
    wrong = [index for index in chosen if not 0 <= index < len(blocks)]
    if wrong:
        raise QuantisationError(f"float blocks {wrong} do not exist: the model has blocks 0 to {len(blocks) - 1}")
    if len(chosen) == len(blocks):
        raise QuantisationError("every block kept float is the fp32 model: keep fewer blocks float")
    return [blocks[index] for index in chosen]


def quantised_layers(model: nn.Module) -> dict[str, QuantisedLinear | QuantisedConv2d]:
    """name -> quantised layer (a QuantisedLinear, or the patch embedding's QuantisedConv2d) of a quantised
    model, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantisedLinear | QuantisedConv2d)}


def quantise(
    pruned: PrunedViT,
    batches: Iterable[torch.Tensor],
    precision: str,
    *,
    reconstruct: bool = False,
    attention: bool = False,
    float_blocks: Iterable[int] = (),
    network_scales: bool = False,
    stream: int | None = None,
) -> PrunedViT:
    """A quantised copy of `pruned` (which is left as it is), its input ranges calibrated on `batches`.

    Weights get per-channel scales from their own values; each layer's input gets the min-max range it
    took over the calibration images in the float model (with `int8-pow2`, each scale becomes the power
    of two with the smaller squared error on those inputs), and each weight its nearest code. With
    `reconstruct`, layer by layer in forward order, each input range is taken in the model quantised so
    far and the layer's codes and bias are chosen to reproduce its float output on those inputs
    (`pruning.quantisation._reconstruct`). With `attention`, the attention products are quantised too,
    as a fully integer device computes them (`pruning.quantisation._attention`), their ranges taken in
    the float model. The blocks at the indices `float_blocks` stay float (a mixed-precision model: each
    block in the precision it runs in; the classifier is quantised). With `network_scales` (power-of-two
    precisions), the activation scales are then chosen for the whole network, each moved by a factor of
    two where that brings the output closer to the float model's (`pruning.quantisation._pow2_search`).
    With `stream` (a fully integer device), the residual stream is put on uint8 grids too, each channel's
    scale a shared one times up to 2^`stream` (`pruning.quantisation._stream`; 0: one scale per tensor),
    GELU's and softmax's inputs on one uint8 grid per tensor, and the patch embedding is quantised as the
    Linear layers are. Records what it did in `quantisation`.
    """
    if precision not in PRECISIONS:
        raise QuantisationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if pruned.quantisation is not None:
        raise QuantisationError(f"the model is already quantised ({pruned.quantisation['precision']})")
    power_of_two, weight_bits = PRECISIONS[precision].power_of_two, PRECISIONS[precision].weight_bits
    if stream is not None and not attention:
        raise QuantisationError("the residual stream is quantised for a fully integer device: also quantise attention")
    if network_scales and (reconstruct or not power_of_two):
        raise QuantisationError(
            "the network-wide scale search moves power-of-two scales of a model quantised without reconstruction:"
            " use int8-pow2 without reconstruct"
        )
    model = copy.deepcopy(pruned).eval()
    batches = list(batches)
    float_blocks = sorted(set(float_blocks))
    keep_float = kept_float(model, float_blocks)
    layers = wrap_linears(model.model, keep_float, weight_bits)
    if stream is not None:  # a fully integer device: the patch embedding too, first in forward order
        layers = wrap_patch_embedding(model.model, weight_bits) | layers
    observers = _observe_stream(model, keep_float) if stream is not None else []
    if reconstruct:
        if not batches:
            raise QuantisationError(NO_IMAGES)
        for layer in layers.values():
            layer.simulate = False
        # Ranges in the float model; the stream's grids are in place before the layers are fitted.
        operands = _calibrate(model, {}, batches, True, keep_float)[1] if attention or observers else {}
        _place_stream(observers, stream, power_of_two)
        rebuilt = reconstruct_layers(model, layers, batches, power_of_two)
        images = sum(len(batch) for batch in batches)
        described = _describe(precision, layers, images=images, reconstructed=len(rebuilt))
    else:
        ranges, operands, images = _calibrate(model, layers, batches, attention, keep_float)
        _place_stream(observers, stream, power_of_two)
        for name, layer in layers.items():
            low, high, sample = ranges[name]
            scale, zero_point = activation_qparams(low, high, sample, power_of_two)
            layer.input_scale.fill_(scale)
            layer.input_zero_point.fill_(zero_point)
            layer.calibrate_weights(power_of_two)
            layer.simulate = True
        described = _describe(precision, layers, images=images)
    if attention:
        for name, products in attach_products(model.model, keep_float).items():
            scales = (products.query_scale, products.key_scale, products.value_scale)
            for scale, (absmax, sample) in zip(scales, operands[name][:3], strict=True):
                scale.fill_(operand_scale(absmax, sample, power_of_two))
            if stream is not None:  # the softmax reads the logits in 8 bits too
                low, high = operands[name][3]
                products.logits_in = _grid(*tensor_qparams(low, high, power_of_two))
        described["attention_products"] = ATTENTION_PRODUCTS
        described["float"] = "patch embedding, LayerNorm, softmax, GELU, residual adds"
    if network_scales:
        searched = _search_batches(batches)
        with torch.no_grad():
            reference = torch.cat([pruned.eval()(batch) for batch in searched])
        lows = {name: min(ranges[name][0], 0.0) for name in layers}
        moved = network_pow2(model, reference, searched, lows)
        judged = sum(len(batch) for batch in searched)
        described["scales"] = (
            f"powers of two, chosen for the whole network: {moved} activation scales moved by a factor of two from "
            f"their own best, where that brought the output closer to the float model's (KL on {judged} images, by "
            f"more than {MARGIN:g} standard errors)"
        )
    if stream is not None:
        described["stream"] = STREAM.format(shifts=stream, images=images)
        described["patch_embedding"] = PATCH_EMBEDDING
        described["nonlinear_inputs"] = NONLINEAR_INPUTS.format(images=images)
        described["float"] = "the arithmetic inside LayerNorm, softmax and GELU, between 8-bit grids"
    if float_blocks:
        described["float_blocks"] = float_blocks
        described["float"] += f"; blocks {', '.join(map(str, float_blocks))} whole"
    model.quantisation = described
    return model


PATCH_EMBEDDING = "quantised as the Linear layers are: its input the normalised image on one uint8 grid"
NONLINEAR_INPUTS = (
    "uint8, one scale and zero point per tensor: GELU's input (fc1's output) and softmax's (the attention logits), "
    "min-max over {images} calibration images"
)
STREAM = (
    "uint8 residual stream at each block's input and middle and before the final LayerNorm: per channel a shared "
    "scale times 2^0..2^{shifts} and a zero point, min-max over {images} calibration images"
)


def attach_stream_grids(
    pruned: PrunedViT, keep_float: Iterable[nn.Module] = (), nonlinear_inputs: bool = False
) -> list[StreamGrid]:
    """Give `pruned` the stream grids whose scales a quantised bundle holds (but in the blocks kept float), and
    with `nonlinear_inputs` the grids of GELU's and softmax's inputs (after `attach_products`)."""
    keep_float = list(keep_float)
    slots = stream_slots(pruned, keep_float) + (gelu_slots(pruned, keep_float) if nonlinear_inputs else [])
    grids = []
    for module, name, channels in slots:
        grids.append(StreamGrid(channels))
        setattr(module, name, grids[-1])
    if nonlinear_inputs:
        for products in (getattr(m, "products", None) for m in pruned.model.modules()):
            if products is not None:
                products.logits_in = StreamGrid(1)
                grids.append(products.logits_in)
    return grids


def _observe_stream(pruned: PrunedViT, keep_float: list[nn.Module]) -> list[tuple[nn.Module, str, StreamObserver]]:
    """Observers where the stream grids and GELU's input grids will be, recording what the calibration pass
    sends through."""
    observers = []
    for module, name, channels in stream_slots(pruned, keep_float) + gelu_slots(pruned, keep_float):
        observers.append((module, name, StreamObserver(per_tensor=channels == 1)))
        setattr(module, name, observers[-1][2])
    return observers


def _place_stream(observers: list[tuple[nn.Module, str, StreamObserver]], shifts: int, power_of_two: bool) -> None:
    """Replace each observer by a grid covering what it saw (one for the whole tensor where it observed so)."""
    for module, name, observer in observers:
        low, high = observer.low, observer.high
        qparams = tensor_qparams(low, high, power_of_two) if observer.per_tensor else None
        setattr(module, name, _grid(*(qparams or stream_qparams(low, high, shifts, power_of_two))))


def _grid(scale: torch.Tensor, zero_point: torch.Tensor) -> StreamGrid:
    grid = StreamGrid(len(scale))
    grid.scale.copy_(scale)
    grid.zero_point.copy_(zero_point)
    return grid


def _search_batches(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The first `SEARCH_IMAGES` calibration images, in their batches."""
    chosen, images = [], 0
    for batch in batches:
        if images >= SEARCH_IMAGES:
            break
        chosen.append(batch[: SEARCH_IMAGES - images])
        images += len(chosen[-1])
    return chosen


ATTENTION_PRODUCTS = (
    "int8: scaled query, keys and values one symmetric scale each per layer (min-max, or its power of two), "
    "softmax output uint8 at 1/256"
)


def _describe(
    precision: str, layers: dict[str, QuantisedLinear | QuantisedConv2d], images: int, reconstructed: int | None = None
) -> dict[str, Any]:
    """What config.json and the model card say about a quantised model."""
    bits = PRECISIONS[precision].weight_bits
    described = {
        "precision": precision,
        "weights": f"int{bits}, one symmetric scale per output channel"
        + (" covering the share of the largest weight with the smallest squared error" if bits < 8 else ""),
        "activations": f"uint8, one asymmetric scale per layer input, min-max over {images} calibration images",
        "scales": "powers of two" if PRECISIONS[precision].power_of_two else "any",
        "layers": len(layers),
        "float": "patch embedding, LayerNorm, softmax and attention products, GELU, residual adds",
    }
    if reconstructed is not None:
        described["activations"] += ", taken layer by layer in the model quantised so far"
        described["reconstruction"] = (
            f"{reconstructed} of {len(layers)} layers: weight codes and bias fitted to the float layer's "
            f"output on {images} calibration images"
        )
    return described


def _calibrate(
    model: PrunedViT,
    layers: dict[str, QuantisedLinear | QuantisedConv2d],
    batches: Iterable[torch.Tensor],
    attention: bool = False,
    keep_float: Iterable[nn.Module] = (),
) -> tuple[dict[str, tuple[float, float, torch.Tensor]], dict[str, list[tuple[float, torch.Tensor]]], int]:
    """One pass over `batches` in the float model: (name -> (min, max, sample of values) of each of `layers`'
    inputs; with `attention`, attention layer name -> [(largest magnitude, sample of values)] of its scaled
    query, keys and values, then (min, max) of its logits; how many images)."""
    seen: dict[str, list] = {name: [float("inf"), float("-inf"), []] for name in layers}
    operands: dict[str, list] = {}
    generator, operand_generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)

    def observe(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().float()
            entry = seen[name]
            entry[0], entry[1] = min(entry[0], float(x.min())), max(entry[1], float(x.max()))
            flat = x.reshape(-1).cpu()
            entry[2].append(flat[torch.randint(flat.numel(), (SAMPLE_VALUES,), generator=generator)])

        return hook

    def observe_operands(name: str, module: nn.Module):
        def hook(_qkv, inputs, output):
            B, N, _ = inputs[0].shape
            q, k, v = output.reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = module.q_norm(q) * module.scale, module.k_norm(k)
            entry = operands.setdefault(name, [[0.0, []] for _ in range(3)] + [[float("inf"), float("-inf")]])
            for slot, x in zip(entry[:3], (q, k, v), strict=True):
                flat = x.detach().float().reshape(-1).cpu()
                slot[0] = max(slot[0], float(flat.abs().max()))
                slot[1].append(flat[torch.randint(flat.numel(), (SAMPLE_VALUES,), generator=operand_generator)])
            logits = q.detach() @ k.detach().transpose(-2, -1)
            entry[3] = [min(entry[3][0], float(logits.min())), max(entry[3][1], float(logits.max()))]

        return hook

    for layer in layers.values():
        layer.simulate = False
    handles = [layer.register_forward_pre_hook(observe(name)) for name, layer in layers.items()]
    if attention:
        attentions = _attentions(model.model, keep_float).items()
        handles += [m.qkv.register_forward_hook(observe_operands(name, m)) for name, m in attentions]
    images = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                images += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    if images == 0:
        raise QuantisationError(NO_IMAGES)
    ranges = {name: (low, high, torch.cat(sample)) for name, (low, high, sample) in seen.items()}
    operands = {
        name: [(m, torch.cat(sample)) for m, sample in entry[:3]] + [tuple(torch.tensor([x]) for x in entry[3])]
        for name, entry in operands.items()
    }
    return ranges, operands, images
