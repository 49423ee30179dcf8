"""Tests for pruning.quantisation: the scale rules, the simulation against integer arithmetic, bundles that
carry their scales, the quantise stage, and the QDQ export run by onnxruntime (a small real timm ViT with
random weights; DeiT-Tiny on real images where the real data is configured)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pruning.bundle import CONFIG_FILE, README_FILE, load_bundle, save_bundle
from pruning.config import PruneConfig
from pruning.data import ImageSet
from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.model import describe, prune_model
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import QuantisationError, QuantisedLinear, quantise, quantised_layers
from pruning.quantisation._linear import (
    ACTIVATION_RANGE,
    CLIP_RATIOS,
    WEIGHT_RANGE,
    activation_qparams,
    weight_range,
    weight_scales,
)
from pruning.quantisation._onnx import float_layers
from pruning.quantisation.precisions import PRECISIONS
from pruning.stages import ModelRecord, StageInputs, run_stages
from tests.search.tiny import KWARGS, random_images, tiny_model
from tests.search.tiny import MODEL as NAME

LINEARS_PER_BLOCK = 4  # qkv, proj, fc1, fc2


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return random_images(24)


@pytest.fixture(scope="module")
def pruned(dense):
    """Fewer heads and channels and top-k tokens: quantisation applies to what pruning left."""
    config = PruneConfig.uniform(describe(dense, NAME), keep_ratio=0.7, at=(1, 2), head_ratio=0.67, mlp_ratio=0.5)
    return prune_model(dense, config)


def calibration(images: ImageSet) -> list[torch.Tensor]:
    return [batch for batch, _ in images.subset(range(12)).batches(6)]


@pytest.fixture(scope="module", params=list(PRECISIONS))
def quantised(request, pruned, images):
    return quantise(pruned, calibration(images), request.param)


# -- scale rules ------------------------------------------------------------------------------------------


def test_weight_scales_cover_each_channel_and_powers_of_two_are_exact_powers():
    torch.manual_seed(1)
    weight = torch.randn(16, 32) * torch.logspace(-2, 1, 16)[:, None]
    scales = weight_scales(weight, power_of_two=False)
    assert torch.allclose(scales * WEIGHT_RANGE[1], weight.abs().amax(1))
    pow2 = weight_scales(weight, power_of_two=True)
    exponents = torch.log2(pow2)
    assert torch.equal(exponents, exponents.round())
    # each is the floor or the ceiling power of two of the plain scale, whichever rounds the channel better
    assert torch.all((pow2 >= scales / 2) & (pow2 <= scales * 2))
    for row, chosen, plain in zip(weight, pow2, scales, strict=True):
        other = chosen * 2 if chosen < plain else chosen / 2
        assert _channel_error(row, chosen) <= _channel_error(row, other)


def _channel_error(row: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> float:
    return float(((torch.round(row / scale).clamp(*weight_range(bits)) * scale - row) ** 2).sum())


def test_four_bit_scales_clip_each_channel_where_that_rounds_it_better():
    torch.manual_seed(2)
    weight = torch.randn(16, 64)
    weight[:, 0] = 6.0  # one outlier per channel: covering it leaves the others few of the 15 codes
    assert weight_range(4) == (-7, 7)
    scales = weight_scales(weight, power_of_two=False, bits=4)
    plain = weight.abs().amax(1) / 7
    assert torch.all(scales <= plain + 1e-7) and torch.any(scales < plain * 0.99)
    for row, chosen, full in zip(weight, scales, plain, strict=True):
        errors = [_channel_error(row, full * ratio, 4) for ratio in CLIP_RATIOS]
        assert _channel_error(row, chosen, 4) <= min(errors) * (1 + 1e-5)
    pow2 = weight_scales(weight, power_of_two=True, bits=4)
    assert torch.equal(torch.log2(pow2), torch.log2(pow2).round())


def test_activation_grid_holds_zero_exactly_and_covers_the_range():
    sample = torch.linspace(-0.7, 5.3, 1000)
    scale, zero_point = activation_qparams(-0.7, 5.3, sample, power_of_two=False)
    assert ACTIVATION_RANGE[0] <= zero_point <= ACTIVATION_RANGE[1]
    grid_low, grid_high = (ACTIVATION_RANGE[0] - zero_point) * scale, (ACTIVATION_RANGE[1] - zero_point) * scale
    assert grid_low <= -0.7 + scale and grid_high >= 5.3 - scale
    restored = torch.fake_quantize_per_tensor_affine(torch.zeros(1), scale, zero_point, *ACTIVATION_RANGE)
    assert restored.item() == 0.0
    pow2_scale, _ = activation_qparams(-0.7, 5.3, sample, power_of_two=True)
    assert pow2_scale in (2.0 ** np.floor(np.log2(scale)), 2.0 ** np.ceil(np.log2(scale)))


# -- the simulation ---------------------------------------------------------------------------------------


def test_quantise_wraps_every_linear_and_leaves_the_float_model_alone(pruned, quantised):
    depth = KWARGS["depth"]
    assert len(quantised_layers(quantised.model)) == depth * LINEARS_PER_BLOCK + 1  # and the classifier
    assert not quantised_layers(pruned.model)
    assert pruned.quantisation is None
    assert quantised.quantisation["precision"] in PRECISIONS
    float_qkv = pruned.family.blocks(pruned.model)[0].attn.qkv.weight
    int8_qkv = quantised.family.blocks(quantised.model)[0].attn.qkv
    assert int8_qkv.weight.data_ptr() != float_qkv.data_ptr()
    assert not torch.equal(int8_qkv.weight, float_qkv)  # rounded to the int8 grid, the original is not


def test_the_simulation_is_integer_arithmetic(quantised, images):
    """A quantised layer's output is the int32 product of uint8 input codes and int8 (or int4) weight codes,
    scaled."""
    layer = quantised.family.blocks(quantised.model)[1].mlp.fc1
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0], y=o))
    with torch.no_grad():
        quantised(next(images.batches(4))[0])
    handle.remove()
    x, y = captured["x"].double(), captured["y"].double()
    scale, zero = layer.input_scale.double(), layer.input_zero_point.long()
    codes = (torch.round(x / scale) + zero).clamp(*ACTIVATION_RANGE).long()
    weights = layer.weight_codes().long()
    bits = PRECISIONS[quantised.quantisation["precision"]].weight_bits
    assert layer.weight_bits == bits and weights.abs().max() <= weight_range(bits)[1]
    accumulated = (codes - zero) @ weights.T  # exact integers
    expected = accumulated.double() * scale * layer.weight_scale.double() + layer.bias.double()
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_quantised_model_stays_close_to_the_float_model(pruned, quantised, images):
    reference = predict(pruned, images)
    logits = predict(quantised, images)
    assert not torch.equal(logits, reference)
    fidelity = classification_metrics(logits, None, reference)
    assert fidelity.kl < (0.05 if PRECISIONS[quantised.quantisation["precision"]].weight_bits == 8 else 0.2)


@pytest.mark.parametrize(
    ("precision", "batches", "message"),
    [("int2", None, "unknown precision"), ("int8", [], "calibration images")],
)
def test_bad_requests_are_refused(pruned, images, precision, batches, message):
    with pytest.raises(QuantisationError, match=message):
        quantise(pruned, calibration(images) if batches is None else batches, precision)


def test_a_quantised_model_is_not_quantised_again(quantised, images):
    with pytest.raises(QuantisationError, match="already quantised"):
        quantise(quantised, calibration(images), "int8")


# -- bundles, cards and the stage ----------------------------------------------------------------------------


def test_bundle_carries_the_scales_and_the_card_says_the_precision(quantised, images, tmp_path):
    path = save_bundle(quantised, tmp_path / "int8", model_kwargs=KWARGS)
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == 2
    assert config["quantisation"]["precision"] == quantised.quantisation["precision"]
    loaded = load_bundle(path)
    assert loaded.quantisation == quantised.quantisation
    for (name, layer), (_, original) in zip(
        quantised_layers(loaded.model).items(), quantised_layers(quantised.model).items(), strict=True
    ):
        assert isinstance(layer, QuantisedLinear), name
        assert torch.equal(layer.weight_scale, original.weight_scale) and layer.weight_bits == original.weight_bits
        assert torch.equal(layer.input_zero_point, original.input_zero_point)
    assert torch.equal(predict(loaded, images), predict(quantised, images))
    card = (path / README_FILE).read_text()
    assert f"Precision: {quantised.quantisation['precision']}" in card


def test_the_quantise_stage_runs_only_when_a_precision_is_asked(pruned, images, tmp_path):
    def record(precision):
        inputs = StageInputs(dense=pruned, name=NAME, calibration=calibration(images), precision=precision)
        return ModelRecord(pruned.config, inputs, {})

    same, untouched = run_stages(("quantise",), record(None), pruned)
    assert same is pruned and untouched.quantisation is None
    model, done = run_stages(("quantise",), record("int8-pow2"), pruned)
    assert done.quantisation["precision"] == "int8-pow2"
    assert len(quantised_layers(model.model)) == KWARGS["depth"] * LINEARS_PER_BLOCK + 1


# -- ONNX QDQ run by onnxruntime --------------------------------------------------------------------------------


def test_qdq_export_carries_the_codes_and_runs_as_simulated(quantised, images, tmp_path):
    path = tmp_path / "int8.onnx"
    report = export_onnx(quantised, path)
    assert any("QDQ" in note for note in report.notes)
    graph = onnx.load(str(path)).graph
    layers = quantised_layers(quantised.model)
    kinds = [node.op_type for node in graph.node]
    assert kinds.count("QuantizeLinear") == len(layers)
    assert kinds.count("DequantizeLinear") == 2 * len(layers)  # the input's and the weight's
    codes = [init for init in graph.initializer if init.name.endswith("/weight_codes")]
    assert len(codes) == len(layers) and all(init.data_type == onnx.TensorProto.INT8 for init in codes)
    widest = weight_range(PRECISIONS[quantised.quantisation["precision"]].weight_bits)[1]
    assert max(np.abs(numpy_helper.to_array(init)).max() for init in codes) <= widest
    runtime = onnx_logits(onnx_session(path, threads=1), images)
    simulated = predict(quantised, images)
    assert classification_metrics(runtime, None, simulated).agreement == 100.0
    with float_layers(quantised):
        float_logits = predict(quantised, images)
    # onnxruntime sits on the simulation, far closer than the float model is
    assert (runtime - simulated).abs().mean() < 0.25 * (float_logits - simulated).abs().mean()
