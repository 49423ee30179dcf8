"""Attention products in int8 (`quantise(attention=True)`): the four operands on their int8 grids, the
scales carried by the bundle, and the ONNX file computing what the simulation computes."""

from __future__ import annotations

import json

import pytest
import torch

from pruning.block import attention_heads
from pruning.bundle import CONFIG_FILE, load_bundle, save_bundle
from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import quantise
from pruning.quantisation._attention import OPERAND_RANGE, PROBS_SCALE, AttentionProducts
from tests.pruning.tiny_quantised import calibration
from tests.search.tiny import KWARGS


@pytest.fixture(scope="module", params=["int8", "int8-pow2"])
def quantised(request, pruned, images):
    return quantise(pruned, calibration(images), request.param, attention=True)


def _attentions(model):
    return [block.attn for block in model.model.blocks if block.attn.num_heads > 0]


def test_every_attention_layer_gets_calibrated_scales_and_the_record_says_so(quantised, pruned):
    attentions = _attentions(quantised)
    assert attentions and all(isinstance(attn.products, AttentionProducts) for attn in attentions)
    power_of_two = quantised.quantisation["precision"] == "int8-pow2"
    for attn in attentions:
        for scale in (attn.products.query_scale, attn.products.key_scale, attn.products.value_scale):
            assert 0 < float(scale) < 1
            if power_of_two:
                assert float(torch.log2(scale)) == round(float(torch.log2(scale)))
    assert "attention_products" in quantised.quantisation
    assert "attention products" not in quantised.quantisation["float"]
    assert not any(hasattr(attn, "products") for attn in _attentions(pruned))  # the float model is left alone


def test_the_operands_the_products_multiply_are_on_their_int8_grids(quantised, images):
    """Captured inside the forward: q, k, v are whole multiples of their scales within int8, and the
    probabilities whole multiples of 1/256 in uint8."""
    attn = _attentions(quantised)[0]
    seen = {}
    products = attn.products
    real_operands, real_probs = products.operands, products.probs

    def operands(q, k, v):
        seen["qkv"] = real_operands(q, k, v)
        return seen["qkv"]

    def probs(p):
        seen["probs"] = real_probs(p)
        return seen["probs"]

    products.operands, products.probs = operands, probs
    try:
        x = torch.randn(2, 17, attn.qkv.in_features)
        attention_heads(attn, x, None, None)
    finally:
        del products.operands, products.probs
    low, high = OPERAND_RANGE
    for value, scale in zip(seen["qkv"], (products.query_scale, products.key_scale, products.value_scale), strict=True):
        codes = value / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= low and codes.max() <= high
        assert len(codes.round().unique()) > 8  # a real spread of codes, not everything clipped to one
    codes = seen["probs"] / PROBS_SCALE
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= 0 and codes.max() <= 255


def test_quantised_products_move_the_output_a_little(pruned, quantised, images):
    linear_only = quantise(pruned, calibration(images), quantised.quantisation["precision"])
    with_products = predict(quantised, images)
    without = predict(linear_only, images)
    float_logits = predict(pruned, images)
    assert not torch.equal(with_products, without)
    assert (with_products - float_logits).abs().mean() < 0.5 * float_logits.abs().mean()


def test_the_bundle_carries_the_product_scales(quantised, images, tmp_path):
    path = save_bundle(quantised, tmp_path / "int8", model_kwargs=KWARGS)
    assert "attention_products" in json.loads((path / CONFIG_FILE).read_text())["quantisation"]
    loaded = load_bundle(path)
    for attn, original in zip(_attentions(loaded), _attentions(quantised), strict=True):
        assert torch.equal(attn.products.key_scale, original.products.key_scale)
    assert torch.equal(predict(loaded, images), predict(quantised, images))


def test_the_onnx_file_computes_the_products_as_simulated(quantised, images, tmp_path):
    path = tmp_path / "int8.onnx"
    export_onnx(quantised, path)
    runtime = onnx_logits(onnx_session(path, threads=1), images)
    simulated = predict(quantised, images)
    assert classification_metrics(runtime, None, simulated).agreement == 100.0
    assert (runtime - simulated).abs().max() < 0.05 * simulated.abs().max()
