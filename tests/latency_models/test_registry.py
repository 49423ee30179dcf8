"""Device profiles: host-cpu measured on first use and cached, imports, analytic presets, validation."""

from __future__ import annotations

import json
import random

import pytest
import timm
import torch

from latency_models.calibration.run import CalibrationPlan
from latency_models.predictor import CoverageError, LatencyPredictor, shape_of
from latency_models.profiling import Timing, entry_id, plan
from latency_models.registry import DeviceProfile, Registry, UnknownDeviceError, complete_table, to_time
from latency_models.schema import LatencyTable, TableError
from latency_models.validate import random_config, token_kind, validate
from pruning import PruneConfig, describe

FAST = Timing(passes=1, warmup=1, min_round_s=0.0005)


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def spec(small_vit):
    return describe(small_vit, "tiny32")


FAST_CALIBRATION = CalibrationPlan(configs=10, check=8, timing=FAST)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return Registry(tmp_path_factory.mktemp("profiles"), threads=1, timing=FAST, calibration=FAST_CALIBRATION)


def test_host_cpu_is_measured_on_first_use_then_read_from_the_cache(registry, spec, monkeypatch):
    first = registry.table("host-cpu", spec, [1], progress=False)
    path = registry.measured_path("host-cpu")
    assert path.exists() and path.name.endswith("-t1.json")
    assert first.device.kind == "measured" and first.device.threads == 1

    import latency_models.devices.completion as module

    def no_profiling(*args, **kwargs):
        raise AssertionError("a covered shape was profiled again")

    monkeypatch.setattr(module, "profile", no_profiling)
    assert registry.table("host-cpu", spec, [1]) == first
    predictor = registry.predictor("host-cpu", spec, [1])
    dense = predictor.predict(PruneConfig.dense(spec), spec)
    assert dense.ms > 0 and not dense.extrapolated
    listed = {d.name: d for d in registry.devices()}
    assert "192" in listed["host-cpu"].coverage and listed["host-cpu"].available


def test_a_host_table_is_calibrated_end_to_end_and_says_how_well_it_checked(registry, spec):
    table = registry.table("host-cpu", spec, [1], progress=False)
    (calibration,) = [c for c in table.calibrations if c.batch == 1]
    assert calibration.configs == FAST_CALIBRATION.configs and calibration.embed_dim == 192
    check = calibration.check
    assert check is not None and check.configs == FAST_CALIBRATION.check and check.seed == FAST_CALIBRATION.seed + 1
    assert 0.0 <= check.within_10pct <= 1.0 and check.under_p95 >= 0.0
    prediction = LatencyPredictor(table).predict(PruneConfig.dense(spec), spec, 1)
    assert prediction.calibrated
    basis = {d.name: d for d in registry.devices()}["host-cpu"].basis
    assert "calibrated end to end" in basis and f"{check.configs} fresh configs" in basis
    # A table that lost its calibration (made before calibrations) is not ready: it is calibrated on next use.
    path = registry.measured_path("host-cpu")
    path.write_text(table.model_copy(update={"calibrations": ()}).model_dump_json(by_alias=True))
    assert not registry.ready("host-cpu", spec, [1])
    again = registry.table("host-cpu", spec, [1], progress=False)
    assert [c.batch for c in again.calibrations] == [1] and registry.ready("host-cpu", spec, [1])


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
        slim = predictor.predict(PruneConfig.uniform(spec, mlp_ratio=0.5), spec).ms
        pruned = predictor.predict(PruneConfig.uniform(spec, keep_ratio=0.5, at=(1,), mlp_ratio=0.5), spec).ms
        # On this 5-token, 2-block toy a token op's fixed per-op costs can outweigh the one MLP it shrinks.
        assert 0 < slim < dense and pruned > 0


def test_every_device_is_one_backend_found_by_its_name(registry, spec):
    for listed in registry.devices():
        assert registry.backend(listed.name).profile() == listed
    fpga = registry.backend("fpga")  # a bare analytic model name stands for its default preset
    assert registry.aliases()["fpga"] == fpga.name == "fpga:zcu102"
    assert registry.table("fpga", spec, [1]) is registry.table("fpga:zcu102", spec, [1])  # priced once
    assert fpga.details()["parameters"]["name"] == "fpga:zcu102" and registry.backend("host-cpu").details() == {}
    with pytest.raises(UnknownDeviceError, match=r"unknown analytic device 'fpga:nope'; presets: "):
        registry.table("fpga:nope", spec, [1])
    assert registry.ready("fpga:nope", spec, [1])  # `table` answers at once, with the error


def test_each_device_names_the_table_that_prices_each_precision(registry, spec):
    # A phone runs float models in float32 and quantised ones with int8 dot products; an FPGA has no
    # float units, so its float models run on the board's 16-bit design.
    assert registry.priced_as("mobile-cpu", "fp32") == "mobile-cpu:snapdragon-8-gen-2"
    assert registry.priced_as("mobile-cpu@one", "int8") == "mobile-cpu:snapdragon-8-gen-2@one+int8"
    assert registry.priced_as("mobile-cpu+int8", "fp32") == "mobile-cpu:snapdragon-8-gen-2"
    assert registry.priced_as("fpga", "fp32") == "fpga:zcu102+int16"
    assert registry.priced_as("fpga:zcu102", "int8-pow2") == "fpga:zcu102"
    assert registry.priced_as("host-cpu", "fp32") == "host-cpu" and registry.priced_as("cuda", "int8") is None
    assert registry.priced_as("fpga", "int4") is None
    int16, int8 = (registry.table(registry.priced_as("fpga", p), spec, [1]) for p in ("fp32", "int8"))
    assert (int16.device.dtype, int8.device.dtype) == ("int16", "int8")
    dense = PruneConfig.dense(spec)
    assert LatencyPredictor(int8).predict(dense, spec, 1).ms < LatencyPredictor(int16).predict(dense, spec, 1).ms


def test_a_phone_and_an_fpga_compute_a_quantised_model_fully_in_integer(registry):
    # As their int8 prices assume: a phone's full-int8 runtime scales its residual stream per tensor, the FPGA
    # per channel (FQ-ViT's factors up to 2^3); onnxruntime on this CPU keeps products and adds float.
    for device, shifts in (
        ("mobile-cpu", 0),
        ("mobile-cpu:snapdragon-855@one", 0),
        ("fpga", 3),
        ("fpga:zcu102+int16", 3),
    ):
        assert registry.fully_integer(device, "int8") == registry.fully_integer(device, "int8-pow2") == shifts
        assert registry.fully_integer(device, "fp32") is None
    assert registry.fully_integer("host-cpu", "int8") is None and registry.fully_integer("cuda", "int8") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_without_a_gpu_is_listed_unavailable_and_refused_with_the_reason(registry, spec):
    assert not {d.name: d for d in registry.devices()}["cuda"].available
    assert registry.ready("cuda", spec, [1])  # nothing to time first: `table` says at once why not
    with pytest.raises(UnknownDeviceError, match="torch sees no CUDA GPU"):
        registry.table("cuda", spec, [1])


def test_a_new_device_kind_is_one_class_and_one_registration(spec, tmp_path, monkeypatch):
    import latency_models.registry as module

    class Board:  # a DeviceBackend
        name = "npu-demo"

        def profile(self) -> DeviceProfile:
            return DeviceProfile(self.name, "fitted", "a made-up NPU", True, "any ViT")

        def ready(self, spec, batches) -> bool:
            return True

        def table(self, spec, batches, progress=True) -> LatencyTable:
            return Registry(tmp_path).table("fpga", spec, batches)

        def details(self) -> dict:
            return {}

        def priced_as(self, precision: str) -> str | None:
            return self.name if precision == "fp32" else None

        def fully_integer(self, precision: str) -> int | None:
            return None

    class Boards:  # a DeviceKind
        def __init__(self, settings) -> None:
            self.settings, self.aliases = settings, {"npu": "npu-demo"}

        def claims(self, name: str) -> bool:
            return name.startswith("npu")

        def listed(self) -> list[Board]:
            return [Board()]

        def backend(self, name: str) -> Board | None:
            return Board() if self.aliases.get(name, name) == "npu-demo" else None

    monkeypatch.setattr(module, "KINDS", (*module.KINDS, Boards))
    registry = Registry(tmp_path, threads=1)
    assert [d.name for d in registry.devices() if d.kind == "fitted"] == ["npu-demo"]
    assert registry.backend("npu").name == "npu-demo" and registry.predictor("npu", spec, [1])
    with pytest.raises(UnknownDeviceError, match=r"known devices: host-cpu, cuda, .*npu-demo"):
        registry.table("npu-other", spec, [1])
    with pytest.raises(ValueError, match="not a built-in name"):  # its names are not free for imports
        registry.imported_path("npu-board")


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


def test_a_cached_table_made_before_merging_was_priced_gains_the_merge_entries(registry, spec, monkeypatch):
    full = registry.table("host-cpu", spec, [1], progress=False)
    path = registry.measured_path("host-cpu")
    old = LatencyTable(device=full.device, entries=tuple(e for e in full.entries if e.op != "merge"))
    old.save(path)
    merging = PruneConfig.uniform(spec, r=2, at=(0, 1))
    assert not registry.ready("host-cpu", spec, [1])
    with pytest.raises(CoverageError, match="merge entries"):
        LatencyPredictor(old).predict(merging, spec)

    import latency_models.devices.completion as module

    timed, real_profile = [], module.profile

    def recording(keys, **kwargs):
        timed.extend(keys)
        return real_profile(keys, **kwargs)

    monkeypatch.setattr(module, "profile", recording)
    grown = registry.table("host-cpu", spec, [1], progress=False)
    # Only what was missing is timed, beside the probe that puts it at the table's machine speed.
    assert timed and {k["op"] for k in timed} == {"merge", "mlp"} and sum(k["op"] == "mlp" for k in timed) == 1
    assert grown.keys() == old.keys() | {entry_id(k) for k in plan(shape_of(spec), [1])}  # batch 1 asked for
    assert LatencyTable.load(path) == grown and registry.ready("host-cpu", spec, [1])
    kept = {e.model_dump_json() for e in old.entries}
    assert all(e.model_dump_json() in kept for e in grown.entries if e.op != "merge")  # the rest is untouched
    prediction = registry.predictor("host-cpu", spec, [1]).breakdown(merging, spec)
    # Priced from the new entries (its sign is a difference of timings, so noise on a busy machine can flip it).
    assert "merge" in prediction.parts and not prediction.extrapolated


def test_validation_draws_merge_configs_and_reports_each_kind(registry, spec, small_vit):
    predictor = registry.predictor("host-cpu", spec, [1])
    assert "merge" not in predictor.unpriced(spec, 1)
    configs = 6

    def kinds(seed: int) -> list[str]:  # the draws `validate` makes for `seed`
        rng = random.Random(seed)
        return [token_kind(random_config(spec, rng)) for _ in range(configs - 1)]

    seed = next(s for s in range(200) if {"merge", "topk+merge"} <= set(kinds(s)))
    report = validate(predictor, small_vit, configs=configs, batch=1, seed=seed, threads=1, timing=FAST, name="tiny32")
    assert [r.kind for r in report.rows] == ["none", *kinds(seed)]
    assert all(r.measured_ms > 0 and r.predicted_ms > 0 for r in report.rows)
    by_kind = report.summary()["by_kind"]
    assert by_kind["merge"]["configs"] == kinds(seed).count("merge")
    assert sum(k["configs"] for k in by_kind.values()) == configs
    assert by_kind["merge"]["mape"] == pytest.approx(
        sum(abs(r.error()) for r in report.rows if r.kind == "merge") / by_kind["merge"]["configs"], abs=1e-4
    )
    assert "| topk+merge |" in report.to_markdown() and "merge 2@" in report.to_markdown()

    # A table that does not price merging: merge configs are left out, or, when asked for, refused up front.
    old = LatencyTable(
        device=predictor.table.device, entries=tuple(e for e in predictor.table.entries if e.op != "merge")
    )
    with pytest.raises(CoverageError, match="merge entries"):
        validate(LatencyPredictor(old), small_vit, configs=configs, seed=seed, threads=1, timing=FAST, leave_out=())
    without = validate(LatencyPredictor(old), small_vit, configs=3, seed=seed, threads=1, timing=FAST)
    assert "merge" not in {r.kind for r in without.rows} and "topk+merge" not in {r.kind for r in without.rows}


def test_complete_table_times_only_what_a_table_file_lacks(tmp_path, monkeypatch):
    keys = [k for k in plan(shape_of(describe(timm.create_model("deit_tiny_patch16_224", img_size=32, depth=1))), [1])
            if k["op"] in ("select", "merge")]  # fmt: skip
    path = tmp_path / "board.json"
    first = complete_table(path, [k for k in keys if k["op"] == "select"], name="board", threads=1, timing=FAST)
    assert {e.op for e in first.entries} == {"select"} and LatencyTable.load(path) == first

    import latency_models.devices.completion as module

    timed, real_profile = [], module.profile
    monkeypatch.setattr(module, "profile", lambda missing, **kw: timed.extend(missing) or real_profile(missing, **kw))
    grown = complete_table(path, keys, name="board", threads=1, timing=FAST, progress=False)
    assert {k["op"] for k in timed} == {"merge"} and grown.keys() == {entry_id(k) for k in keys}  # no MLP: no probe
    assert [e for e in grown.entries if e.op == "select"] == list(first.entries)
    assert complete_table(path, keys, name="board") == grown and len(timed) == sum(k["op"] == "merge" for k in keys)


def test_a_table_timed_with_another_allocator_is_neither_completed_nor_shared(tmp_path, monkeypatch):
    import latency_models.devices.measured as module
    import latency_models.profiling.run as run

    def run_with(malloc: str) -> None:
        for where in (run, module):
            monkeypatch.setattr(where, "allocator", lambda: malloc)

    keys = [k for k in plan(shape_of(describe(timm.create_model("deit_tiny_patch16_224", img_size=32, depth=1))), [1])
            if k["op"] == "select"]  # fmt: skip
    path = tmp_path / "board.json"
    run_with("system")
    table = complete_table(path, keys[:2], name="board", threads=1, timing=FAST, progress=False)
    assert table.device.runtime == f"torch {torch.__version__} (cpu)"
    system_cache = Registry(tmp_path, threads=1).measured_path("host-cpu")

    run_with("tcmalloc")
    assert run.runtime_name(torch.device("cpu")) == f"torch {torch.__version__} (cpu, tcmalloc)"
    with pytest.raises(
        ValueError, match=r"measured with torch .* \(cpu\) in float32, eager and this process runs .*tcmalloc"
    ):
        complete_table(path, keys, name="board", threads=1, timing=FAST, progress=False)
    assert complete_table(path, keys[:2], name="board") == table  # nothing to add: read as it is
    assert Registry(tmp_path, threads=1).measured_path("host-cpu") != system_cache


def test_entries_added_to_a_table_are_scaled_to_the_speed_it_was_measured_at(tmp_path, monkeypatch):
    import latency_models.devices.completion as module

    keys = [k for k in plan(shape_of(describe(timm.create_model("deit_tiny_patch16_224", img_size=32, depth=1))), [1])
            if k["op"] in ("mlp", "merge")]  # fmt: skip
    real_profile, slowdown, timed = module.profile, [1.0], []

    def machine(missing, **kw):  # every entry costs a made-up figure of its key, times the machine's slowdown
        timed.extend(missing)
        table = real_profile(missing, **kw)
        for entry in table["entries"]:
            entry["median_ms"] = slowdown[0] * (1 + len(entry_id(entry)) % 7)
        return table

    monkeypatch.setattr(module, "profile", machine)
    path = tmp_path / "board.json"
    first = complete_table(path, [k for k in keys if k["op"] == "mlp"], name="board", threads=1, timing=FAST)
    slowdown[0], timed[:] = 2.0, []  # later, the shared machine runs at half speed
    grown = complete_table(path, keys, name="board", threads=1, timing=FAST, progress=False)
    probe = max((e for e in first.entries), key=lambda e: (e.tokens, e.mlp_hidden))
    assert entry_id(probe.model_dump()) in {entry_id(k) for k in timed}  # re-timed beside the new entries
    assert [e for e in grown.entries if e.op == "mlp"] == list(first.entries)  # kept as they were
    merges = [e for e in grown.entries if e.op == "merge"]
    assert merges and all(e.median_ms == pytest.approx(1 + len(entry_id(e.model_dump())) % 7) for e in merges)


def test_composites_are_added_only_with_their_parts():
    shape = shape_of(describe(timm.create_model("deit_tiny_patch16_224", img_size=32, depth=1)))
    batch_1, batch_2 = plan(shape, [1]), plan(shape, [2])
    composite = {"reducing_chain", "model"}
    old = {entry_id(k) for k in batch_1 if k["op"] not in composite}  # a table made before composites were timed
    assert to_time(old, batch_1) == []  # its parts were timed in another run: no composite to compare with them
    grown = to_time(old, batch_1 + batch_2)  # a new batch size: its composites come with their parts
    assert grown == batch_2 and {k["op"] for k in grown} >= composite
    assert to_time(set(), batch_1) == batch_1
