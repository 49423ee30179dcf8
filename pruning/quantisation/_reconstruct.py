"""Reconstruction: each quantised layer's weights chosen on calibration images to compute, as the device
computes, what the float layer computes (RAPQ's second step, after the scales).

Rounding every weight to its nearest code and every input to its grid leaves errors that add up along
a layer's input dimension and correlate with its inputs. Reconstruction instead makes each layer's
output on real inputs, through its input grid, closest to the float layer's output on the same inputs:

    min over W', b' of  || x W^T + b - (Q(x) W'^T + b') ||^2      with W' on the layer's weight grid

Layer by layer in forward order, each layer is fitted on the inputs the quantised layers before it
give (its input grid calibrated on those too), the inputs it will see when deployed; its target is
what the float layer computes on them, so it does not undo what earlier layers changed. Per layer,
three closed-form steps (no gradient descent: about a minute per DeiT-Tiny on 2 cores):

1. the least-squares W', b' without the grid, pulled towards W, b (ridge): it absorbs the input grid's error;
2. W' put on the grid one input column at a time, each column's rounding error spread over the columns
   not yet rounded through the inverse of Q(x)'s second moment (OBQ/GPTQ), so the codes jointly keep
   the output error small rather than each its own weight's;
3. the bias (float, as the device adds it) takes the mean output error that is left.

A layer with fewer input rows on the calibration images than `MIN_ROWS_PER_INPUT` times its inputs
(the classifier, which sees one token per image) keeps its nearest codes: so few rows would fit noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from pruning.quantisation._linear import (
    ACTIVATION_RANGE,
    SAMPLE_VALUES,
    QuantisedLinear,
    activation_qparams,
    weight_range,
    weight_scales,
)

__all__ = ["MIN_ROWS_PER_INPUT", "reconstruct"]

MIN_ROWS_PER_INPUT = 4
DAMPING = 0.01
"""Ridge and Hessian damping, relative to the mean input energy per dimension."""


class _Captured(Exception):
    """Raised by the capture hook: the pass has reached the layer, the rest of the model need not run."""


def reconstruct(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[torch.Tensor],
    power_of_two: bool,
) -> list[str]:
    """Calibrate each layer's input grid and reconstruct its weights and bias on `batches`, in forward
    order (see the module docstring); returns the names of the layers reconstructed. `layers` must be
    `model`'s quantised layers, still computing in float."""
    done = []
    for name, layer in layers.items():
        inputs = _inputs_of(model, layer, batches)
        generator = torch.Generator().manual_seed(0)
        sample = inputs.reshape(-1)[torch.randint(inputs.numel(), (SAMPLE_VALUES,), generator=generator)]
        scale, zero_point = activation_qparams(float(inputs.min()), float(inputs.max()), sample, power_of_two)
        layer.input_scale.fill_(scale)
        layer.input_zero_point.fill_(zero_point)
        if _fits(layer, inputs):
            _reconstruct_layer(layer, inputs, power_of_two)
            done.append(name)
        else:
            layer.calibrate_weights(power_of_two)
        layer.simulate = True
    return done


def _fits(layer: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether `layer` is reconstructed: a Linear layer with enough input rows (a convolution keeps its nearest
    codes)."""
    if not isinstance(layer, QuantisedLinear) or not (layer.in_features and layer.out_features):
        return False
    return len(inputs) >= MIN_ROWS_PER_INPUT * layer.in_features


def _inputs_of(model: nn.Module, layer: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """`layer`'s input rows (tokens x features) over `batches`, each pass stopped once it reaches it."""
    rows: list[torch.Tensor] = []

    def hook(_module, inputs):
        rows.append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float())
        raise _Captured

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Captured):
                    model(batch)
    finally:
        handle.remove()
    return torch.cat(rows)


def _reconstruct_layer(layer: QuantisedLinear, x: torch.Tensor, power_of_two: bool) -> None:
    x = x.double()
    low, high = ACTIVATION_RANGE
    xq = torch.fake_quantize_per_tensor_affine(
        x.float(), layer.input_scale.float(), layer.input_zero_point.int(), low, high
    ).double()
    weight = layer.weight.detach().double()
    has_bias = layer.bias is not None
    bias = layer.bias.detach().double() if has_bias else torch.zeros(layer.out_features, dtype=torch.float64)
    target = x @ weight.T + bias

    # 1. least squares through the input grid, pulled towards the float weights (and bias, a constant input)
    design = torch.cat([xq, torch.ones(len(xq), 1, dtype=xq.dtype)], dim=1) if has_bias else xq
    start = torch.cat([weight, bias[:, None]], dim=1).T if has_bias else weight.T
    gram = design.T @ design
    ridge = DAMPING * xq.pow(2).sum(dim=0).mean().clamp_min(1e-12)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    fitted = torch.linalg.solve(gram + ridge * eye, design.T @ target + ridge * start)[: layer.in_features].T

    # 2. onto the grid, column by column, errors spread by the inverse Hessian of the quantised inputs
    hessian = xq.T @ xq
    hessian += DAMPING * hessian.diagonal().mean().clamp_min(1e-12) * torch.eye(len(hessian), dtype=hessian.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    scale = weight_scales(fitted.float(), power_of_two, layer.weight_bits).double()
    codes_low, codes_high = weight_range(layer.weight_bits)
    work = fitted.clone()
    for column in range(work.shape[1]):
        w = work[:, column]
        q = torch.round(w / scale).clamp(codes_low, codes_high) * scale
        error = (w - q) / inverse[column, column]
        work[:, column:] -= error[:, None] * inverse[column, column:][None, :]
        work[:, column] = q  # exact: the update above leaves rounding noise

    # 3. the bias takes the mean error left
    new_bias = (target - xq @ work.T).mean(dim=0)
    with torch.no_grad():
        layer.weight_scale.copy_(scale.float())
        layer.weight.copy_(work.float())
        if has_bias:
            layer.bias.copy_(new_bias.float())
    layer.round_weights()
