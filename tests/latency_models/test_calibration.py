"""End-to-end calibration: the correction, its fit to timed models, and how the predictor applies it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from latency_models.analytic import PRESETS, analytic_table
from latency_models.calibration import correct, fit
from latency_models.calibration.model import SCALE_BOUND
from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.validate import validation_configs
from tests.latency_models.specs import DEIT_TINY


@pytest.fixture(scope="module")
def predictor():
    table = analytic_table(PRESETS["fpga:zcu102"], [shape_of(DEIT_TINY)], [1, 4])
    return LatencyPredictor(table)


def _draw(predictor, count=40, seed=3):
    configs = validation_configs(DEIT_TINY, count, random.Random(seed), leave_out=("threshold",))
    return [predictor.predict(c, DEIT_TINY, 1) for c in configs]


def _fit(predictions, measured):
    return fit(
        DEIT_TINY,
        1,
        raw_ms=[p.ms for p in predictions],
        blocks_ms=[p.blocks_ms for p in predictions],
        reductions=[p.reductions for p in predictions],
        measured_ms=measured,
        seed=0,
    )


def test_the_fit_recovers_what_the_parts_miss(predictor):
    predictions = _draw(predictor)
    dense_block = predictions[0].blocks_ms / 12
    per_topk, per_merge = 0.3 * dense_block, 0.1 * dense_block
    rng = np.random.default_rng(0)
    measured = []
    for p in predictions:  # blocks 8% dearer in a model, a fixed cost per top-k and per merge block, 1% noise
        extra = 0.08 * p.blocks_ms + sum(per_topk if k == "topk" else per_merge for k, _ in p.reductions)
        measured.append((p.ms + extra) * (1 + 0.01 * rng.standard_normal()))
    calibration = _fit(predictions, measured)
    assert calibration.scale == pytest.approx(0.08, abs=0.03)
    assert calibration.raw_bias < -0.05  # the parts alone predict low
    corrected = [p.ms + correct(calibration, p.blocks_ms, p.reductions, 197) for p in predictions]
    errors = np.abs(np.array(corrected) / np.array(measured) - 1)
    assert np.median(errors) < 0.015 and calibration.fit_mape < 0.02


def test_the_fit_stays_within_physical_bounds(predictor):
    predictions = _draw(predictor)
    calibration = _fit(predictions, [3.0 * p.ms for p in predictions])  # no physical correction explains 3x
    assert abs(calibration.scale) <= SCALE_BOUND + 1e-9
    assert abs(calibration.offset_ms) <= 0.15 * predictions[0].ms + 1e-9


def test_an_op_seldom_drawn_gets_no_terms(predictor):
    predictions = _draw(predictor, count=12, seed=5)
    kinds = {k for p in predictions for k, _ in p.reductions}
    counts = {k: sum(any(x == k for x, _ in p.reductions) for p in predictions) for k in kinds}
    calibration = _fit(predictions, [p.ms * 1.05 for p in predictions])
    assert set(calibration.per_block_ms) == {k for k, n in counts.items() if n >= 3}


def test_too_few_models_are_refused(predictor):
    predictions = _draw(predictor, count=5)
    with pytest.raises(ValueError, match="at least 8"):
        _fit(predictions, [p.ms for p in predictions])


def test_the_predictor_applies_a_calibration_at_its_shape_and_batch_only(predictor):
    predictions = _draw(predictor)
    calibration = _fit(predictions, [p.ms * 1.1 + 0.2 for p in predictions])
    calibrated = LatencyPredictor(predictor.table.calibrated(calibration))
    config = validation_configs(DEIT_TINY, 3, random.Random(9), leave_out=("threshold",))[2]
    raw, fixed = predictor.predict(config, DEIT_TINY, 1), calibrated.predict(config, DEIT_TINY, 1)
    assert fixed.calibrated and not raw.calibrated
    assert fixed.ms == pytest.approx(raw.ms + correct(calibration, raw.blocks_ms, raw.reductions, 197))
    parts = calibrated.breakdown(config, DEIT_TINY, 1).parts
    assert sum(parts.values()) == pytest.approx(fixed.ms) and parts["calibration"] != 0
    at_four = calibrated.predict(config, DEIT_TINY, 4)  # fitted at batch 1: batch 4 is priced from the parts
    assert not at_four.calibrated and at_four.ms == pytest.approx(predictor.predict(config, DEIT_TINY, 4).ms)
    # A second calibration of the same shape and batch replaces the first; the table round-trips.
    table = calibrated.table.calibrated(calibration.model_copy(update={"offset_ms": 0.0}))
    assert len(table.calibrations) == 1
    assert type(table).model_validate_json(table.model_dump_json(by_alias=True)) == table
