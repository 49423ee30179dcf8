"""The residual stream on uint8 grids (`quantise(stream=k)`), as a fully integer device stores it: one scale
per tensor (k=0) or per channel a shared scale times up to 2^k (FQ-ViT's Power-of-Two Factor)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from pruning.bundle import CONFIG_FILE, load_bundle, save_bundle
from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import QuantisationError, QuantisedConv2d, quantise, quantised_layers
from pruning.quantisation._linear import ACTIVATION_RANGE
from pruning.quantisation._stream import StreamGrid, stream_qparams
from tests.pruning.tiny_quantised import calibration
from tests.search.tiny import KWARGS


def test_an_outlier_channel_gets_its_own_power_of_two_and_the_others_keep_a_fine_grid():
    low = torch.tensor([-1.0, -0.5, -40.0, 0.0])
    high = torch.tensor([1.0, 2.0, 60.0, 3.0])
    scale, zero_point = stream_qparams(low, high, shifts=3, power_of_two=False)
    assert scale[2] == pytest.approx(100.0 / 255)  # the widest channel: exactly its range
    assert torch.allclose(scale[[0, 1, 3]], scale[2] / 8)  # the others: the finest factor
    assert torch.equal(zero_point, torch.round(-low / scale).clamp(0, 255))
    per_tensor, _ = stream_qparams(low, high, shifts=0, power_of_two=False)
    assert torch.all(per_tensor == per_tensor[2])
    pow2, _ = stream_qparams(low, high, shifts=3, power_of_two=True)
    assert torch.equal(torch.log2(pow2), torch.round(torch.log2(pow2))) and pow2[2] >= 100.0 / 255
    grid = StreamGrid(4)
    grid.scale.copy_(scale)
    grid.zero_point.copy_(zero_point)
    x = torch.stack([torch.linspace(lo, hi, 50) for lo, hi in zip(low, high, strict=True)], dim=1)
    on_grid = grid(x)
    assert torch.equal(grid(on_grid), on_grid)  # already on the grid
    assert ((on_grid - x).abs() <= scale / 2 + 1e-6).all()  # the calibrated range is never clipped


@pytest.mark.parametrize("shifts", [0, 3])
def test_the_stream_is_on_its_grids_in_every_quantised_block_and_the_bundle_and_onnx_file_keep_them(
    pruned, images, shifts, tmp_path
):
    quantised = quantise(pruned, calibration(images), "int8", attention=True, stream=shifts, float_blocks=[1])
    assert f"2^0..2^{shifts}" in quantised.quantisation["stream"]
    for index, block in enumerate(quantised.blocks):
        grids = [getattr(block, name, None) for name in ("stream_in", "stream_mid")]
        assert all(g is None for g in grids) if index == 1 else all(isinstance(g, StreamGrid) for g in grids)
        for grid in grids if index != 1 else ():
            ratios = torch.log2(grid.scale / grid.scale.min())
            assert torch.allclose(ratios, torch.round(ratios), atol=1e-5) and ratios.max() <= shifts + 1e-5
    assert isinstance(quantised.model.stream_out, StreamGrid)
    # the nonlinear units read their inputs in 8 bits too: one grid per tensor, none in the float block
    for index, block in enumerate(quantised.blocks):
        inputs = [
            getattr(block.mlp, "gelu_in", None),
            getattr(getattr(block.attn, "products", None), "logits_in", None),
        ]
        assert (
            inputs == [None, None]
            if index == 1
            else all(isinstance(g, StreamGrid) and len(g.scale) == 1 for g in inputs)
        )
    assert "GELU's input" in quantised.quantisation["nonlinear_inputs"]
    reference = predict(pruned, images)
    without = quantise(pruned, calibration(images), "int8", attention=True, float_blocks=[1])
    assert not torch.equal(predict(quantised, images), predict(without, images))  # the stream grids act
    assert classification_metrics(predict(quantised, images), None, reference).agreement >= 50.0

    path = save_bundle(quantised, tmp_path / "int8", model_kwargs=KWARGS)
    assert "stream" in json.loads((path / CONFIG_FILE).read_text())["quantisation"]
    loaded = load_bundle(path)
    assert torch.equal(predict(loaded, images), predict(quantised, images))
    onnx_path = tmp_path / "int8.onnx"
    export_onnx(quantised, onnx_path)
    runtime = onnx_logits(onnx_session(onnx_path, threads=1), images)
    assert classification_metrics(runtime, None, predict(quantised, images)).agreement == 100.0


def test_a_quantised_stream_needs_quantised_attention_products_too(pruned, images):
    with pytest.raises(QuantisationError, match="also quantise attention"):
        quantise(pruned, calibration(images), "int8", stream=0)


def test_a_fully_integer_device_multiplies_the_patch_embedding_in_integers_too(pruned, images, tmp_path):
    """The patch embedding's output is the int32 convolution of the image's uint8 codes with int8 weight codes,
    scaled; the float recipe (no stream) leaves it float; the bundle and the ONNX file keep it."""
    quantised = quantise(pruned, calibration(images), "int8", attention=True, stream=3)
    layers = quantised_layers(quantised.model)
    conv = quantised.model.patch_embed.proj
    assert isinstance(conv, QuantisedConv2d) and next(iter(layers)) == "patch_embed.proj"
    assert "patch_embedding" in quantised.quantisation
    assert "patch_embed.proj" not in quantised_layers(quantise(pruned, calibration(images), "int8").model)
    batch = next(images.batches(4))[0]
    scale, zero = conv.input_scale.double(), conv.input_zero_point.long()
    codes = ((torch.round(batch.double() / scale) + zero).clamp(*ACTIVATION_RANGE) - zero).double()
    # every product and sum of codes is an integer below 2^53: exact in float64
    accumulated = torch.nn.functional.conv2d(codes, conv.weight_codes().double(), stride=conv.stride)
    channel = (conv.weight_scale.double(), conv.bias.detach().double())
    expected = accumulated * scale * channel[0][:, None, None] + channel[1][:, None, None]
    with torch.no_grad():
        got = conv(batch).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))

    path = save_bundle(quantised, tmp_path / "int8", model_kwargs=KWARGS)
    loaded = load_bundle(path)
    assert isinstance(loaded.model.patch_embed.proj, QuantisedConv2d)
    assert torch.equal(predict(loaded, images), predict(quantised, images))
    onnx_path = tmp_path / "int8.onnx"
    export_onnx(quantised, onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    conv_node = next(node for node in graph.node if node.op_type == "Conv")
    assert conv_node.input[0].endswith("input_dq") and conv_node.input[1].endswith("weight_dq")
    runtime = onnx_logits(onnx_session(onnx_path, threads=1), images)
    assert classification_metrics(runtime, None, predict(quantised, images)).agreement == 100.0
