"""Tests for reconstruction (pruning.quantisation._reconstruct): the small real timm ViT, random weights,
enough random images that every block's layers have the rows their fit needs."""

from __future__ import annotations

import pytest
import torch

from pruning.config import PruneConfig
from pruning.metrics import predict
from pruning.model import describe, prune_model
from pruning.quantisation import QuantisationError, quantise, quantised_layers
from pruning.quantisation._reconstruct import MIN_ROWS_PER_INPUT
from pruning.stages import ModelRecord, StageInputs, run_stages
from tests.search.tiny import MODEL as NAME
from tests.search.tiny import random_images, tiny_model

TOKENS = 5  # 32x32 images in 16x16 patches, and the class token


@pytest.fixture(scope="module")
def dense():
    model = tiny_model()
    return prune_model(model, PruneConfig.dense(describe(model, NAME)))


@pytest.fixture(scope="module")
def calibration(dense) -> list[torch.Tensor]:
    widest = max(
        layer.in_features for layer in quantised_layers(quantise(dense, [torch.zeros(1, 3, 32, 32)], "int8")).values()
    )
    count = -(-MIN_ROWS_PER_INPUT * widest // TOKENS)  # just enough rows for the widest layer
    return [batch for batch, _ in random_images(count).batches(128)]


@pytest.fixture(scope="module", params=["int8", "int8-pow2"])
def pair(request, dense, calibration):
    """(nearest codes, reconstructed) quantisations of the dense tiny model at one precision."""
    return quantise(dense, calibration, request.param), quantise(dense, calibration, request.param, reconstruct=True)


def _error(model, dense, batches) -> float:
    with torch.no_grad():
        return sum(float((model(b) - dense(b)).pow(2).sum()) for b in batches)


def test_reconstruction_brings_the_model_closer_to_the_float_one_on_its_images(pair, dense, calibration):
    nearest, rebuilt = pair
    assert _error(rebuilt, dense, calibration) < _error(nearest, dense, calibration)


def test_reconstructed_weights_stay_on_their_grid(pair):
    _, rebuilt = pair
    power_of_two = rebuilt.quantisation["precision"] == "int8-pow2"
    for layer in quantised_layers(rebuilt.model).values():
        assert torch.equal(layer.weight, layer.weight_codes().float() * layer.weight_scale[:, None])
        if power_of_two:
            for scale in (layer.weight_scale, layer.input_scale):
                exponent = torch.log2(scale)
                assert torch.equal(exponent, torch.round(exponent))


def test_layers_with_too_few_rows_keep_their_nearest_codes_and_the_card_counts_them(pair):
    nearest, rebuilt = pair
    layers, rebuilt_layers = quantised_layers(nearest.model), quantised_layers(rebuilt.model)
    # The classifier sees one token per image: too few rows to fit, so its codes are the nearest ones.
    assert torch.equal(rebuilt_layers["head"].weight, layers["head"].weight)
    moved = [name for name in layers if not torch.equal(rebuilt_layers[name].weight, layers[name].weight)]
    assert "head" not in moved and len(moved) == len(layers) - 1
    assert rebuilt.quantisation["reconstruction"].startswith(f"{len(layers) - 1} of {len(layers)} layers")
    assert "reconstruction" not in nearest.quantisation


def test_reconstruction_needs_calibration_images(dense):
    with pytest.raises(QuantisationError, match="needs calibration images"):
        quantise(dense, [], "int8", reconstruct=True)


def test_the_quantise_stage_reconstructs_when_asked(dense, calibration):
    images = random_images(8)
    inputs = StageInputs(
        dense=dense, name=NAME, calibration=calibration, precision="int8", reconstruct=True, val=images
    )
    model, record = run_stages(("quantise", "evaluate"), ModelRecord(dense.config, inputs), dense)
    assert "reconstruction" in record.quantisation and model.quantisation == record.quantisation
    assert torch.equal(record.logits, predict(model, images))
