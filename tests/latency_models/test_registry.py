"""Device profiles: host-cpu measured on first use and cached, imports, analytic presets, validation."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from latency_models.profiling import Timing
from latency_models.registry import Registry, UnknownDeviceError
from latency_models.schema import TableError
from latency_models.validate import validate
from pruning import PruneConfig, describe

FAST = Timing(passes=1, warmup=1, min_round_s=0.0005)


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def spec(small_vit):
    return describe(small_vit, "tiny32")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return Registry(tmp_path_factory.mktemp("profiles"), threads=1, timing=FAST)


def test_host_cpu_is_measured_on_first_use_then_read_from_the_cache(registry, spec, monkeypatch):
    first = registry.table("host-cpu", spec, [1], progress=False)
    path = registry.measured_path("host-cpu")
    assert path.exists() and path.name.endswith("-t1.json")
    assert first.device.kind == "measured" and first.device.threads == 1

    import latency_models.registry as module

    def no_profiling(*args, **kwargs):
        raise AssertionError("a covered shape was profiled again")

    monkeypatch.setattr(module, "profile", no_profiling)
    assert registry.table("host-cpu", spec, [1]) == first
    predictor = registry.predictor("host-cpu", spec, [1])
    dense = predictor.predict(PruneConfig.dense(spec), spec)
    assert dense.ms > 0 and not dense.extrapolated
    listed = {d.name: d for d in registry.devices()}
    assert "192" in listed["host-cpu"].coverage and listed["host-cpu"].available


def test_a_new_batch_size_is_added_to_the_cached_table(registry, spec):
    registry.table("host-cpu", spec, [1], progress=False)
    grown = registry.table("host-cpu", spec, [1, 2], progress=False)
    assert grown.device.batch_sizes == (1, 2)
    assert {e.batch for e in grown.entries} == {1, 2}


def test_imported_tables_become_devices_and_bad_ones_are_refused(registry, spec, tmp_path):
    source = registry.measured_path("host-cpu")
    registry.table("host-cpu", spec, [1], progress=False)
    imported = registry.import_table(source, "my-board")
    assert imported.device.kind == "imported" and imported.device.name == "my-board"
    assert any(d.name == "my-board" and d.kind == "imported" for d in registry.devices())
    assert registry.predictor("my-board", spec, [1]).predict(PruneConfig.dense(spec), spec).ms > 0

    for name in ("../escape", "host-cpu", "Upper", "a/b", "mobile-cpu:x"):
        with pytest.raises(ValueError, match="device name"):
            registry.import_table(source, name)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "vitprune.latency-table", "version": 1, "device": {}, "entries": []}))
    with pytest.raises(TableError, match=r"device\.name"):
        registry.import_table(bad, "broken")
    assert not registry.imported_path("broken").exists()
    with pytest.raises(UnknownDeviceError, match="vitprune devices"):
        registry.table("nowhere", spec, [1])


def test_analytic_presets_are_listed_and_price_any_vit(registry, spec):
    analytic = [d for d in registry.devices() if d.kind == "analytic"]
    assert {d.name.split(":")[0] for d in analytic} == {"mobile-cpu", "fpga"}
    for device in analytic:
        predictor = registry.predictor(device.name, spec, [1])
        dense = predictor.predict(PruneConfig.dense(spec), spec).ms
        pruned = predictor.predict(PruneConfig.uniform(spec, keep_ratio=0.5, at=(1,), mlp_ratio=0.5), spec).ms
        assert 0 < pruned < dense


def test_validation_report_compares_measured_and_predicted(registry, spec, small_vit, tmp_path):
    predictor = registry.predictor("host-cpu", spec, [1])
    report = validate(predictor, small_vit, configs=4, batch=1, threads=1, timing=FAST, name="tiny32")
    assert len(report.rows) == 4 and report.rows[0].summary.startswith("all tokens")
    assert all(r.measured_ms > 0 and r.predicted_ms > 0 for r in report.rows)
    assert report.drift > 0
    summary = report.summary()
    assert 0.0 <= summary["within_10pct"] <= 1.0 and summary["configs"] == 4
    assert report.mape == pytest.approx(sum(abs(e) for e in report.errors()) / 4)
    assert summary["mape"] == round(report.mape, 4)
    written = report.save(tmp_path / "check")
    assert [p.suffix for p in written] == [".json", ".md", ".html"]
    html = written[2].read_text()
    # The chart library is embedded (megabytes of it), never loaded from a CDN.
    assert len(html) > 1_000_000 and 'src="http' not in html
    assert json.loads(written[0].read_text())["summary"]["configs"] == 4
