"""Per-block precision: blocks kept float inside a quantised model (`quantise(float_blocks=...)`), chosen by
their measured sensitivity, carried by the bundle and the ONNX file, and priced block by block."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from latency_models.mixed import MixedPrecisionPredictor
from latency_models.registry import Registry
from pruning.bundle import CONFIG_FILE, BundleError, load_bundle, save_bundle
from pruning.config import PruneConfig
from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.model import describe
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import (
    QuantisationError,
    QuantisedLinear,
    block_sensitivity,
    most_sensitive_blocks,
    quantise,
    quantised_layers,
)
from tests.pruning.tiny_quantised import calibration
from tests.search.tiny import KWARGS, MODEL, tiny_model


@pytest.fixture(scope="module")
def mixed(pruned, images):
    return quantise(pruned, calibration(images), "int8", attention=True, float_blocks=[2, 0])


def test_the_float_blocks_keep_their_float_layers_and_the_others_are_quantised(pruned, mixed, images):
    assert mixed.quantisation["float_blocks"] == [0, 2]
    assert "blocks 0, 2 whole" in mixed.quantisation["float"]
    for index, (block, original) in enumerate(zip(mixed.blocks, pruned.blocks, strict=True)):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        if index in (0, 2):
            assert not any(isinstance(m, QuantisedLinear) for m in linears)
            assert getattr(block.attn, "products", None) is None
            for name, tensor in block.state_dict().items():  # the weights themselves are not rounded
                assert torch.equal(tensor, original.state_dict()[name])
        else:
            assert all(isinstance(m, QuantisedLinear) for m in linears)
            assert block.attn.products is not None
    assert isinstance(mixed.model.head, QuantisedLinear)  # the classifier is quantised
    assert mixed.quantisation["layers"] == len(quantised_layers(mixed.model))
    whole = quantise(pruned, calibration(images), "int8", attention=True)
    assert mixed.quantisation["layers"] == len(quantised_layers(whole.model)) - 2 * 4
    # A float block moves the output towards the float model's.
    reference = predict(pruned, images)
    assert (
        classification_metrics(predict(mixed, images), None, reference).kl
        < classification_metrics(predict(whole, images), None, reference).kl
    )


def test_float_blocks_that_do_not_exist_or_are_all_of_them_are_refused(pruned, images):
    with pytest.raises(QuantisationError, match=r"float blocks \[7\] do not exist: the model has blocks 0 to 3"):
        quantise(pruned, calibration(images), "int8", float_blocks=[1, 7])
    with pytest.raises(QuantisationError, match="every block kept float is the fp32 model"):
        quantise(pruned, calibration(images), "int8", float_blocks=range(4))


@pytest.mark.parametrize("stream", [None, 3])
def test_a_blocks_sensitivity_is_what_keeping_it_float_gains(pruned, images, stream):
    batches = calibration(images)
    sensitivity = block_sensitivity(pruned, batches, "int8", attention=True, stream=stream)
    assert len(sensitivity) == len(pruned.blocks)
    reference = torch.cat([pruned(batch) for batch in batches])

    def kl(model):
        with torch.no_grad():
            return classification_metrics(torch.cat([model(batch) for batch in batches]), None, reference).kl

    whole = kl(quantise(pruned, batches, "int8", attention=True, stream=stream))
    for index in (0, 3):  # the swap equals quantising with that block float (scales come from the float model)
        alone = kl(quantise(pruned, batches, "int8", attention=True, stream=stream, float_blocks=[index]))
        assert sensitivity[index] == pytest.approx(whole - alone, rel=1e-6, abs=1e-9)
    chosen = most_sensitive_blocks(sensitivity, 2)
    assert len(chosen) == 2 and chosen == sorted(chosen)
    assert min(sensitivity[i] for i in chosen) >= max(s for i, s in enumerate(sensitivity) if i not in chosen)
    with pytest.raises(QuantisationError, match="keep 0 to 3 of the 4 blocks float, not 4"):
        most_sensitive_blocks(sensitivity, 4)


def test_the_bundle_and_the_onnx_file_keep_the_float_blocks_float(mixed, images, tmp_path):
    path = save_bundle(mixed, tmp_path / "mixed", model_kwargs=KWARGS)
    loaded = load_bundle(path)
    assert set(quantised_layers(loaded.model)) == set(quantised_layers(mixed.model))
    assert torch.equal(predict(loaded, images), predict(mixed, images))
    onnx_path = tmp_path / "mixed.onnx"
    export_onnx(mixed, onnx_path)
    runtime = onnx_logits(onnx_session(onnx_path, threads=1), images)
    assert classification_metrics(runtime, None, predict(mixed, images)).agreement == 100.0
    config = json.loads((path / CONFIG_FILE).read_text())
    config["quantisation"]["float_blocks"] = [9]
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"quantisation.float_blocks: float blocks \[9\] do not exist"):
        load_bundle(path)


def test_a_mixed_model_is_priced_block_by_block_in_the_dtype_that_runs_each(tmp_path):
    registry = Registry(tmp_path)
    dense = tiny_model()
    spec = describe(dense, MODEL)
    config = PruneConfig.uniform(spec, keep_ratio=0.7, at=(1, 2), head_ratio=0.67)
    float_, quantised = (
        registry.predictor(registry.priced_as("mobile-cpu", precision), spec, [1], progress=False)
        for precision in ("fp32", "int8")
    )
    int8 = quantised.predict(config, spec)
    fp32 = float_.predict(config, spec)
    assert len(int8.block_ms) == len(config.blocks) and sum(int8.block_ms) == pytest.approx(int8.blocks_ms)
    assert MixedPrecisionPredictor(quantised, float_, []).predict(config, spec) == int8
    mixed = MixedPrecisionPredictor(quantised, float_, [0, 2]).predict(config, spec)
    gap = sum(fp32.block_ms[i] - int8.block_ms[i] for i in (0, 2))
    assert gap > 0  # int8 blocks are faster on a phone than float ones
    assert mixed.ms == pytest.approx(int8.ms + gap)
    assert int8.ms < mixed.ms < fp32.ms
    assert mixed.block_ms[0] == fp32.block_ms[0] and mixed.block_ms[1] == int8.block_ms[1]


def test_network_wide_power_of_two_scales_bring_the_output_closer_and_stay_powers_of_two(pruned, images, monkeypatch):
    batches = calibration(images)
    monkeypatch.setattr("pruning.quantisation._quantise.SEARCH_IMAGES", 9)  # judged on fewer than calibrated on
    network = quantise(pruned, batches, "int8-pow2", attention=True, network_scales=True)
    local = quantise(pruned, batches, "int8-pow2", attention=True)
    assert "(KL on 9 images" in network.quantisation["scales"]
    integer = quantise(pruned, batches, "int8-pow2", attention=True, stream=3, network_scales=True)
    assert "over 12 calibration images" in integer.quantisation["stream"]
    searched = [batches[0], batches[1][:3]]
    with torch.no_grad():
        reference = torch.cat([pruned(batch) for batch in searched])

        def kl(model):
            return classification_metrics(torch.cat([model(b) for b in searched]), None, reference).kl

        assert kl(network) < kl(local)  # each move was kept only where it lowered this KL (and some moved)
    scales = [layer.input_scale for layer in quantised_layers(network.model).values()]
    scales += [getattr(b.attn.products, n) for b in network.blocks for n in ("query_scale", "key_scale")]
    for scale in scales:
        assert float(torch.log2(scale)) == round(float(torch.log2(scale)))
    moved = [
        float(a.input_scale) / float(b.input_scale)
        for a, b in zip(quantised_layers(network.model).values(), quantised_layers(local.model).values(), strict=True)
    ]
    assert set(moved) <= {0.5, 1.0, 2.0}
    with pytest.raises(QuantisationError, match="use int8-pow2 without reconstruct"):
        quantise(pruned, batches, "int8", network_scales=True)
    with pytest.raises(QuantisationError, match="use int8-pow2 without reconstruct"):
        quantise(pruned, batches, "int8-pow2", reconstruct=True, network_scales=True)
