"""Devices fitted to a few timings: the timings file, the fit (recovery, priors, bounds, robustness,
leave-one-model-out), the configuration it is fitted for, and the fitted device in the registry."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import timm

from latency_models.analytic import PRESETS, Fpga, FpgaParams, MobileCpuParams
from latency_models.devices.fitted import FittedKind
from latency_models.fitting import (
    FREE,
    FittedRecord,
    TimingsError,
    configured,
    fit,
    fit_device,
    parse_timings,
    predict,
    resolve_model,
    select,
    split_base,
)
from latency_models.profiling import SHAPES
from latency_models.registry import Registry, UnknownDeviceError
from pruning import PruneConfig, describe

PHONE = PRESETS["mobile-cpu:snapdragon-8-gen-2"]
BOARD = PRESETS["fpga:zcu102"]
MODELS = [
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "vit_tiny_patch16_384",
    "vit_small_patch16_384",
    "vit_base_patch32_224",
    "embed_dim=256;heads=4;depth=8",
    "embed_dim=64;heads=1;depth=4;patch=8",
]


def timings_of(params, models: list[str], batches=(1,), noise: float = 0.0, seed: int = 0):
    """Timings of `models` as the analytic model of `params` prices them, times log-normal noise."""
    pairs = [(m, b) for m in models for b in batches]
    exact = predict(params, parse_timings("model,batch,ms\n" + "\n".join(f"{m},{b},1" for m, b in pairs)))
    rng = np.random.default_rng(seed)
    lines = [f"{m},{b},{ms * math.exp(rng.normal(0, noise)):.9g}" for (m, b), ms in zip(pairs, exact, strict=True)]
    return parse_timings("model,batch,ms\n" + "\n".join(lines))


def held_out_errors(params, models: list[str], truth) -> np.ndarray:
    rows = timings_of(truth, models)
    return np.array(predict(params, rows)) / np.array([r.ms for r in rows]) - 1


# -- the timings file ---------------------------------------------------------------------------


def test_a_timings_file_is_read_with_defaults_comments_and_inline_shapes():
    rows = parse_timings(
        "# pixel, one big core\n"
        "ms , Model,image_size,batch,cores,dtype\n"
        "12.5,deit_tiny_patch16_224,,,one,float32\n"
        "\n"
        "80,vit_small_patch16_384,,2,ONE,\n"
        "33,deit_small_patch16_224,384,1,4,int8\n"
        '7,"embed_dim=96,heads=2,depth=6,mlp_ratio=3,patch=8",64,1,,\n'
    )
    tiny, small384, small_at_384, inline = rows
    assert (tiny.line, tiny.ms, tiny.batch, tiny.cores, tiny.dtype) == (3, 12.5, 1, "one", "float32")
    assert tiny.shape == SHAPES["deit_tiny_patch16_224"] and tiny.depth == 12
    # A size suffix names the built-in shape at that size; the image_size column says it too.
    assert small384.shape.image_size == 384 and small384.shape.tokens == 24 * 24 + 1 and small384.batch == 2
    assert small384.cores == "one" and small384.dtype is None
    assert small_at_384.shape == small384.shape and small_at_384.cores == "4" and small_at_384.dtype == "int8"
    s = inline.shape
    assert (s.embed_dim, s.heads, s.head_dim, s.mlp_hidden, s.patch_size, s.tokens) == (96, 2, 48, 288, 8, 65)
    assert inline.depth == 6 and inline.key()["depth"] == 6
    # Leave-one-model-out groups one architecture at one resolution, however it is named.
    assert small384.model_id == small_at_384.model_id != tiny.model_id
    assert parse_timings("model,ms\nvit_small_patch16_224,3\n")[0].model_id != small384.model_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header line"),
        ("model,ms\n", "a header line but no timings"),
        ("model,image_size\ndeit_tiny_patch16_224,224\n", "missing column(s) ms"),
        ("model,ms,latency\ndeit_tiny_patch16_224,3,4\n", "line 1: unknown column(s) 'latency'"),
        ("model,ms\ndeit_tiny_patch16_224,3\nresnet50,4\n", "line 3: unknown model 'resnet50'"),
        ("model,ms\ndeit_tiny_patch16_224,fast\n", "line 2: ms 'fast' is not a number"),
        ("model,ms\ndeit_tiny_patch16_224,-3\n", "line 2: ms must be a positive number"),
        ("model,ms\ndeit_tiny_patch16_224,nan\n", "line 2: ms must be a positive number"),
        ("model,ms,batch\ndeit_tiny_patch16_224,3,1.5\n", "line 2: batch '1.5' is not a whole number"),
        ("model,ms,batch\ndeit_tiny_patch16_224,3,0\n", "line 2: batch must be positive"),
        ("model,ms\ndeit_tiny_patch16_224,3,9\n", "line 2: 3 cells for 2 columns"),
        ("model,ms,cores\ndeit_tiny_patch16_224,3,big\n", "line 2: cores 'big': use one, cluster, all"),
        ("model,ms,dtype\ndeit_tiny_patch16_224,3,fp16\n", "line 2: dtype 'fp16'"),
        ("model,ms\nembed_dim=384;heads=6,3\n", "line 2: inline shape .* missing depth"),
        ("model,ms\nembed_dim=384;heads=5;depth=12,3\n", "not a multiple of heads"),
        ("model,ms\nembed_dim=384;heads=6;depth=12;width=3,3\n", "'width=3' is not one of"),
        ("model,ms,image_size\ndeit_tiny_patch16_224,3,8\n", "line 2: image_size 8 is smaller than the patch"),
        ("model,ms,model\ndeit_tiny_patch16_224,3,x\n", "named twice"),
    ],
)
def test_a_bad_timings_file_is_refused_with_the_line_and_the_reason(text, message):
    with pytest.raises(TimingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_timings(text)


def test_a_named_model_and_its_inline_shape_are_the_same_model():
    named, depth = resolve_model("deit_small_patch16_224")
    inline, inline_depth = resolve_model("embed_dim=384;heads=6;depth=12;mlp_ratio=4;patch=16")
    assert named == inline and depth == inline_depth == 12


# -- the fit ------------------------------------------------------------------------------------


def test_the_fit_recovers_the_parameters_that_made_noisy_timings():
    truth = PHONE.model_copy(
        update={
            "gemm_efficiency": 0.3,
            "attention_efficiency": 0.2,
            "elementwise_efficiency": 0.1,
            "bandwidth_efficiency": 0.3,
            "op_overhead_us": 20.0,
        }
    )
    rows = timings_of(truth, MODELS, batches=(1, 8), noise=0.01, seed=1)
    result = fit(PHONE, rows, lomo=False)
    for name in ("gemm_efficiency", "attention_efficiency", "elementwise_efficiency"):
        assert getattr(result.params, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    # Memory time and per-op overhead are a small share of a ViT's time: pinned more loosely.
    assert result.params.bandwidth_efficiency == pytest.approx(0.3, rel=0.3)
    assert result.params.op_overhead_us == pytest.approx(20.0, rel=0.3)
    assert result.converged and result.summary()["fit_median_error"] < 0.01
    assert result.summary()["base_median_error"] > 0.3  # the preset alone was far off
    assert np.abs(held_out_errors(result.params, ["deit_tiny_patch16_448"], truth)).max() < 0.02


def test_one_timing_sets_the_common_factor_and_the_others_follow():
    """A device that runs every kind of op at a quarter of its preset: one timing is enough."""
    truth = PHONE.model_copy(
        update={f.name: getattr(PHONE, f.name) / 4 for f in FREE[MobileCpuParams] if f.common}
        | {"op_overhead_us": PHONE.op_overhead_us}
    )
    result = fit(PHONE, timings_of(truth, ["deit_small_patch16_224"]))
    assert result.summary()["lomo_median_error"] is None and result.lomo_ms == (None,)
    errors = held_out_errors(result.params, MODELS, truth)
    assert np.abs(errors).max() < 0.03
    assert np.abs(held_out_errors(PHONE, MODELS, truth)).min() > 0.5  # unfitted: far off


def test_three_timings_give_a_sane_fit_of_a_device_unlike_its_preset():
    truth = PHONE.model_copy(
        update={
            "gemm_efficiency": 0.15,
            "attention_efficiency": 0.05,
            "elementwise_efficiency": 0.08,
            "bandwidth_efficiency": 0.25,
            "op_overhead_us": 15.0,
        }
    )
    train = ["deit_tiny_patch16_224", "deit_base_patch16_224", "vit_small_patch16_384"]
    result = fit(PHONE, timings_of(truth, train, noise=0.01))
    others = [m for m in MODELS if m not in train]
    errors = np.abs(held_out_errors(result.params, others, truth))
    assert np.median(errors) < 0.05 and errors.max() < 0.15
    assert all(0.02 <= getattr(result.params, f.name) <= 1 for f in FREE[MobileCpuParams] if f.common)


def test_leave_one_model_out_refits_without_each_models_timings():
    truth = PHONE.model_copy(update={"gemm_efficiency": 0.2, "attention_efficiency": 0.1})
    rows = timings_of(truth, MODELS[:4], batches=(1, 4), noise=0.02, seed=3)
    result = fit(PHONE, rows)
    assert all(ms is not None for ms in result.lomo_ms) and result.summary()["models"] == 4
    # The left-out prediction of deit_small's rows is a fit on the other models' rows alone.
    held = [i for i, row in enumerate(rows) if row.model == "deit_small_patch16_224"]
    alone = fit(PHONE, [row for row in rows if row.model != "deit_small_patch16_224"], lomo=False)
    assert [result.lomo_ms[i] for i in held] == pytest.approx(predict(alone.params, [rows[i] for i in held]))
    lomo = [abs(e) for e in result.errors("lomo")]
    assert result.summary()["lomo_median_error"] == pytest.approx(np.median(lomo), abs=1e-6)
    assert result.summary()["lomo_worst_error"] == pytest.approx(max(lomo), abs=1e-6)
    assert fit(PHONE, rows).params == result.params  # deterministic


def test_the_fit_stays_in_physical_bounds_and_says_where_it_hit_one():
    fast = [replace(r, ms=r.ms / 20) for r in timings_of(PHONE, MODELS[:3])]
    result = fit(PHONE, fast)
    for f in FREE[MobileCpuParams]:
        low, high = f.bounds(getattr(PHONE, f.name))
        assert low <= getattr(result.params, f.name) <= high
    assert result.params.gemm_efficiency == pytest.approx(1.0)
    assert any(text.startswith("gemm_efficiency") and "upper bound" in text for text in result.at_bound())
    slow = [replace(r, ms=r.ms * 500) for r in timings_of(PHONE, MODELS[:3])]
    result = fit(PHONE, slow)
    assert result.params.gemm_efficiency == pytest.approx(0.02) and "lower bound" in " ".join(result.at_bound())
    assert not fit(PHONE, timings_of(PHONE, MODELS[:3])).at_bound()


def test_one_bad_timing_does_not_drag_the_others():
    truth = PHONE.model_copy(update={"gemm_efficiency": 0.25, "attention_efficiency": 0.12})
    rows = timings_of(truth, MODELS[:6], noise=0.005)
    rows[2] = replace(rows[2], ms=rows[2].ms * 2.5)  # a timing gone wrong
    result = fit(PHONE, rows, lomo=False)
    errors = [abs(e) for i, e in enumerate(result.errors()) if i != 2]
    assert max(errors) < 0.03 and abs(result.errors()[2]) > 0.5


def test_an_fpga_board_is_fitted_to_its_timing_report():
    truth = BOARD.model_copy(
        update={"clock_mhz": 180.0, "array_efficiency": 0.7, "ddr_efficiency": 0.5, "layer_overhead_cycles": 900}
    )
    rows = timings_of(truth, MODELS, batches=(1, 4), noise=0.005)
    result = fit(BOARD, rows, lomo=False)
    assert isinstance(result.params, FpgaParams) and isinstance(result.params.layer_overhead_cycles, int)
    assert result.summary()["fit_worst_error"] < 0.03 and result.summary()["base_median_error"] > 0.2
    assert 0.02 <= result.params.array_efficiency <= 1 and 50 <= result.params.clock_mhz <= 400
    # What the board runs at, whatever the split between clock and array stalls: GEMM cycles per second.
    assert result.params.clock_mhz * result.params.array_efficiency == pytest.approx(180 * 0.7, rel=0.1)


def test_the_default_array_efficiency_keeps_the_board_presets_figures():
    key = {"op": "mlp", "batch": 1, "embed_dim": 192, "tokens": 197, "mlp_hidden": 768}
    halved = Fpga(BOARD.model_copy(update={"array_efficiency": 0.5}))
    assert BOARD.array_efficiency == 1.0 and Fpga(BOARD).cost(key) < halved.cost(key)


# -- the configuration fitted -------------------------------------------------------------------


def test_a_mixed_file_is_fitted_one_configuration_at_a_time():
    rows = parse_timings(
        "model,cores,dtype,ms\n"
        "deit_tiny_patch16_224,one,float32,40\n"
        "deit_small_patch16_224,one,float32,120\n"
        "deit_tiny_patch16_224,all,float32,12\n"
        "deit_small_patch16_224,,,30\n"
    )
    with pytest.raises(TimingsError, match=r"several cores settings: all \(1 rows\), one \(2 rows\).*@<cores>"):
        select(rows, None, None)
    cores, dtype, kept = select(rows, "one", None)
    assert (cores, dtype) == ("one", "float32") and [r.line for r in kept] == [2, 3, 5]
    assert select(rows[:2], None, None)[0] == "one"  # a file of one configuration picks it
    with pytest.raises(TimingsError, match="no timing is of cores cluster"):
        select(rows[:3], "cluster", None)
    assert select(rows, "cluster", None, use_cores=False)[2] == rows  # an FPGA ignores cores
    assert split_base("mobile-cpu:snapdragon-8-gen-2@4") == ("mobile-cpu:snapdragon-8-gen-2", "4")
    with pytest.raises(ValueError, match="cores 'big'"):
        split_base("mobile-cpu@big")


def test_a_device_is_fitted_on_the_core_configuration_and_dtype_it_was_timed_on():
    one = PHONE.on_cores("one")
    assert configured(PHONE, "one", None) == one and configured(PHONE, "2", None).threads == 2
    assert configured(PHONE, None, "int8").dtype == "int8" and configured(PHONE, None, None) == PHONE
    with pytest.raises(ValueError, match="dtype 'float32' for fpga:zcu102: use int8, int16, w4a8"):
        configured(BOARD, None, "float32")
    assert configured(BOARD, None, "int16") == BOARD.with_dtype("int16") and configured(BOARD, None, "int8") == BOARD
    truth = one.model_copy(update={"gemm_efficiency": 0.4})
    rows = timings_of(truth, MODELS[:3], noise=0.01)
    rows += [replace(r, cores="all", ms=r.ms / 3) for r in rows]  # another configuration in the same file
    record, left_out = fit_device("big-core", "mobile-cpu:snapdragon-8-gen-2", PHONE, rows, cores="one")
    params = record.params()
    assert left_out == 3 and record.cores == "one" and params.threads == 1 and params.name == "big-core"
    assert params.gemm_efficiency == pytest.approx(0.4, rel=0.1)
    assert record.configuration == "mobile-cpu:snapdragon-8-gen-2@one"
    assert "to mobile-cpu:snapdragon-8-gen-2@one:" in record.basis()
    int8 = [replace(r, dtype="int8") for r in timings_of(one.with_dtype("int8"), MODELS[:2])]
    record, _ = fit_device("big-core-int8", "mobile-cpu:snapdragon-8-gen-2", PHONE, int8, cores="one")
    assert record.dtype == "int8" and record.params().dtype == "int8" and "(int8)" in record.basis()
    assert record.summary["fit_worst_error"] < 0.01


# -- the fitted device ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return describe(timm.create_model("deit_tiny_patch16_224"), "deit_tiny_patch16_224")


def test_a_fitted_device_is_served_by_the_registry_and_prices_a_deit_tiny_config(tmp_path, tiny):
    registry = Registry(tmp_path, threads=1)
    fitted = next(kind for kind in registry.kinds if isinstance(kind, FittedKind))
    truth = PHONE.model_copy(update={"gemm_efficiency": 0.2, "attention_efficiency": 0.1})
    rows = timings_of(truth, ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_tiny_patch16_384"], noise=0.01)
    record, _ = fitted.fit("my-phone", "mobile-cpu", rows)
    assert record.base == "mobile-cpu:snapdragon-8-gen-2" and record.dtype == "float32"
    assert record.cores == str(PHONE.cores)  # the preset's own configuration, named
    stored = json.loads((tmp_path / "fitted" / "my-phone.json").read_text())
    assert stored["schema"] == "vitprune.fitted-device" and len(stored["rows"]) == 3
    assert set(stored["free"]) == {f.name for f in FREE[MobileCpuParams]}

    listed = {d.name: d for d in registry.devices()}["my-phone"]
    assert listed.kind == "fitted" and listed.available and listed.basis == record.basis()
    assert listed.basis.startswith(f"fitted on 3 timings of 3 models to {PHONE.base}@{PHONE.cores}: median error ")
    assert "leave-one-model-out median" in listed.basis
    assert registry.backend("my-phone").profile() == listed

    predictor = registry.predictor("my-phone", tiny, [1])
    info = predictor.table.device
    assert info.kind == "fitted" and info.name == "my-phone" and record.basis() in info.notes
    assert [t["ms"] for t in info.parameters["fit"]["timings"]] == [r.ms for r in rows]
    assert info.parameters["gemm_efficiency"] == record.free["gemm_efficiency"].fitted
    dense = predictor.predict(PruneConfig.dense(tiny), tiny).ms
    # The table prices the dense model as the fit did.
    assert dense == pytest.approx(record.rows[0].fitted_ms, rel=1e-6)
    pruned = PruneConfig.uniform(tiny, keep_ratio=0.5, at=(3, 6), mlp_ratio=0.5)
    assert 0 < predictor.predict(pruned, tiny).ms < dense
    assert registry.backend("my-phone").details()["fit"]["summary"] == record.summary
    # Fitted to float32 timings, it prices float models and no quantised ones.
    assert registry.priced_as("my-phone", "fp32") == "my-phone" and registry.priced_as("my-phone", "int8") is None


def test_fitted_and_imported_names_never_collide(tmp_path):
    registry = Registry(tmp_path, threads=1)
    fitted = next(kind for kind in registry.kinds if isinstance(kind, FittedKind))
    rows = timings_of(PHONE, ["deit_tiny_patch16_224"])
    fitted.fit("pixel", "mobile-cpu", rows)
    table = tmp_path / "table.json"
    registry.table("fpga", describe(timm.create_model("deit_tiny_patch16_224", depth=1)), [1]).save(table)
    with pytest.raises(ValueError, match="not a built-in name"):
        registry.import_table(table, "pixel")
    registry.import_table(table, "board")
    with pytest.raises(ValueError, match="imported table"):
        fitted.fit("board", "mobile-cpu", rows)
    for name in ("host-cpu", "fpga", "mobile-cpu:x", "../up", "Upper"):
        with pytest.raises(ValueError, match="device name"):
            fitted.fit(name, "mobile-cpu", rows)
    with pytest.raises(UnknownDeviceError, match="presets: "):
        fitted.fit("other", "mobile-cpu:nope", rows)
    assert not (tmp_path / "fitted" / "other.json").exists()


def test_an_unreadable_fitted_file_is_listed_as_such(tmp_path):
    (tmp_path / "fitted").mkdir()
    (tmp_path / "fitted" / "broken.json").write_text('{"schema": "vitprune.fitted-device", "version": 1}')
    listed = {d.name: d for d in Registry(tmp_path, threads=1).devices()}["broken"]
    assert listed.kind == "fitted" and not listed.available and "unreadable" in listed.description
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a vitprune fitted device"):
        FittedRecord.load(tmp_path / "other.json")
