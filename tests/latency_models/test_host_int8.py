"""host-cpu+int8: this CPU's onnxruntime int8 kernels, priced by the host fitted on first use to timings."""

from __future__ import annotations

import json

import pytest
import timm

from latency_models.devices import host_int8
from latency_models.predictor import LatencyPredictor
from latency_models.profiling import Timing
from latency_models.registry import Registry
from pruning import PruneConfig, describe

FAST = Timing(passes=1, warmup=1, min_round_s=0.0005)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(host_int8, "FIT_MODELS", ("deit_tiny_patch16_224",))  # one cheap model keeps the test short
    return Registry(tmp_path / "profiles", threads=1, timing=FAST)


@pytest.fixture(scope="module")
def spec():
    return describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")


def test_the_host_prices_quantised_models_on_its_onnxruntime_int8_device(registry):
    assert registry.priced_as("host-cpu", "int8") == "host-cpu+int8"
    assert registry.priced_as("host-cpu", "int8-pow2") == "host-cpu+int8"
    assert registry.priced_as("host-cpu", "fp32") == "host-cpu"
    assert "host-cpu+int8" in [device.name for device in registry.devices()]


def test_it_is_fitted_on_first_use_to_int8_timings_then_read_from_the_cache(registry, spec, monkeypatch):
    device = registry.backend("host-cpu+int8")
    assert not device.ready(spec, [1]) and device.profile().coverage == "fitted on first use"
    timed = []
    real = host_int8.time_int8

    def counting(models, batch, *args, **kwargs):
        rows = real(models, batch, *args, **kwargs)
        timed.append((models, batch, [row.ms for row in rows]))
        return rows

    monkeypatch.setattr(host_int8, "time_int8", counting)
    table = registry.table("host-cpu+int8", spec, [1])
    assert table.device.dtype == "int8" and table.device.name == "host-cpu+int8"
    [(models, batch, [measured])] = timed
    assert models == ("deit_tiny_patch16_224",) and batch == 1 and measured > 0
    # Fitted to the one timing: the dense model is priced at what onnxruntime took.
    dense = LatencyPredictor(table).predict(PruneConfig.dense(spec), spec, 1).ms
    assert dense == pytest.approx(measured, rel=0.05)
    record = json.loads(device.path.read_text())
    assert record["dtype"] == "int8" and record["base"] == "mobile-cpu:host" and record["cores"] == "one"
    assert device.ready(spec, [1]) and "fitted at batch 1" in device.profile().coverage

    # A second registry reads the cache; a new batch size is timed and fitted with the old timings.
    again = Registry(registry.root, threads=1, timing=FAST)
    again.table("host-cpu+int8", spec, [1])
    assert len(timed) == 1
    again.table("host-cpu+int8", spec, [1, 2])
    assert [batch for _, batch, _ in timed] == [1, 2]
    assert sorted(row["batch"] for row in json.loads(device.path.read_text())["rows"]) == [1, 2]


def test_its_cache_is_per_thread_count(tmp_path):
    one = Registry(tmp_path, threads=1).backend("host-cpu+int8").path
    two = Registry(tmp_path, threads=2).backend("host-cpu+int8").path
    assert one != two and one.parent == two.parent == tmp_path / "measured"
