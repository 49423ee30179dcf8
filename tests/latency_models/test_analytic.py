"""Analytic device models: valid tables, monotone costs, physical bounds, plausible totals, clear errors."""

from __future__ import annotations

import itertools
import json

import pytest
from pydantic import ValidationError

from latency_models.analytic import (
    PRESETS,
    Fpga,
    FpgaParams,
    MobileCpu,
    MobileCpuParams,
    analytic_model,
    analytic_table,
)
from latency_models.predictor import LatencyPredictor
from latency_models.profiling import SHAPES, composite_parts, entry_id, plan
from latency_models.schema import LatencyTable
from pruning.config import PruneConfig
from pruning.tokens.topk import TopKReduction
from tests.latency_models.specs import DEIT_TINY

TINY = SHAPES["deit_tiny_patch16_224"]
SMALL = SHAPES["deit_small_patch16_224"]
CPU = PRESETS["mobile-cpu:snapdragon-8-gen-2"]
FPGA = PRESETS["fpga:zcu102"]


def mobile_cpu_ms(params: MobileCpuParams, key: dict) -> float:
    return MobileCpu(params).cost(key)


def fpga_ms(params: FpgaParams, key: dict) -> float:
    return Fpga(params).cost(key)


MODELS = {"cpu": (CPU, mobile_cpu_ms), "fpga": (FPGA, fpga_ms)}


@pytest.fixture(scope="module", params=sorted(PRESETS))
def preset_table(request) -> tuple[MobileCpuParams | FpgaParams, LatencyTable]:
    params = PRESETS[request.param]
    return params, analytic_table(params, [TINY], [1, 32])


def attention(shape, tokens, heads, batch=1, scored=False, masked=False) -> dict:
    return {
        "op": "attention",
        "batch": batch,
        "embed_dim": shape.embed_dim,
        "tokens": tokens,
        "heads": heads,
        "head_dim": shape.head_dim,
        "scored": scored,
        "masked": masked,
    }


def mlp(shape, tokens, hidden, batch=1) -> dict:
    return {"op": "mlp", "batch": batch, "embed_dim": shape.embed_dim, "tokens": tokens, "mlp_hidden": hidden}


def head(shape, tokens, batch=1) -> dict:
    return {"op": "head", "batch": batch, "embed_dim": shape.embed_dim, "tokens": tokens, "num_classes": 1000}


def merge(shape, tokens_in, r, batch=1) -> dict:
    return {
        "op": "merge",
        "batch": batch,
        "embed_dim": shape.embed_dim,
        "tokens_in": tokens_in,
        "tokens_out": tokens_in - r,
        "prefix": shape.prefix,
        "heads": shape.heads,
        "head_dim": shape.head_dim,
    }


def embed(shape, batch=1) -> dict:
    return {
        "op": "embed",
        "batch": batch,
        "embed_dim": shape.embed_dim,
        "tokens": shape.tokens,
        "image_size": 224,
        "patch_size": 16,
    }


def dense_ms(cost, params, shape, batch: int, depth: int = 12) -> float:
    block = cost(params, attention(shape, shape.tokens, shape.heads, batch)) + cost(
        params, mlp(shape, shape.tokens, shape.mlp_hidden, batch)
    )
    return cost(params, embed(shape, batch)) + depth * block + cost(params, head(shape, shape.tokens, batch))


def assert_non_decreasing(values: list[float], what: str) -> None:
    for i, (a, b) in enumerate(itertools.pairwise(values)):
        assert b >= a * (1 - 1e-12), f"{what}: cost drops from {a} to {b} at step {i}"
    assert values[-1] > values[0], f"{what}: cost does not grow at all over the sweep"


# -- presets and tables -----------------------------------------------------------------------------


def test_every_preset_validates_and_cites_sources():
    assert {"mobile-cpu:snapdragon-8-gen-2", "fpga:zcu102"} <= set(PRESETS)
    for name, params in PRESETS.items():
        assert params.name == name
        assert type(params).model_validate(params.model_dump()) == params
        assert any(s.startswith("Spec") for s in params.sources)
        assert any(s.startswith("Assumption") for s in params.sources), "assumptions must be labelled as such"
    assert CPU.threads == 4
    assert FPGA.dsps_required <= FPGA.dsp_budget == 2520


def test_table_covers_the_plan_and_round_trips(preset_table):
    params, table = preset_table
    assert table.keys() == {entry_id(key) for key in plan(TINY, [1, 32])}
    assert len(table.entries) == len(table.keys())
    again = LatencyTable.parse(table.model_dump(by_alias=True))
    assert again == table
    from_json = LatencyTable.parse(json.loads(table.model_dump_json(by_alias=True)))
    assert from_json.entries == table.entries
    assert from_json.device.parameters == table.device.parameters
    device = table.device
    assert device.kind == "analytic" and device.name == params.name and device.hardware == params.hardware
    assert device.batch_sizes == (1, 32)
    assert device.sources == params.sources and device.notes
    assert "name" not in device.parameters and "sources" not in device.parameters
    if isinstance(params, MobileCpuParams):
        assert device.threads == params.threads and device.dtype == "float32"
    else:
        assert device.threads is None and device.dtype == f"int{params.bits}"
    assert all(e.spread_ms == 0.0 and e.median_ms > 0 for e in table.entries)


def test_shapes_are_deduplicated():
    twins = analytic_table(CPU, [TINY, SHAPES["vit_tiny_patch16_224"]], [1])
    assert len(twins.entries) == len(analytic_table(CPU, [TINY], [1]).entries)
    both = analytic_table(CPU, [TINY, SMALL], [1])
    assert {e.embed_dim for e in both.entries} == {192, 384}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_composite_entries_are_the_sum_of_their_parts(model):
    params, cost = MODELS[model]
    key = {**attention(TINY, 100, 3, 4), **mlp(TINY, 100, 768, 4), "op": "chain", "blocks": 6}
    del key["scored"], key["masked"]
    halves = cost(params, attention(TINY, 100, 3, 4)) + cost(params, mlp(TINY, 100, 768, 4))
    assert cost(params, key) == pytest.approx(halves)
    composites = [k for k in plan(TINY, [1]) if k["op"] in ("model", "reducing_chain")]
    assert len(composites) > 1
    for key in composites:
        assert cost(params, key) == pytest.approx(sum(cost(params, part) for part in composite_parts(key)))


# -- monotone costs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
def test_cost_grows_with_tokens(model):
    params, cost = MODELS[model]
    tokens = range(1, TINY.tokens + 1)
    for batch in (1, 8):
        for heads in range(TINY.heads + 1):
            for scored in (False, True) if heads else (False,):
                for masked in (False, True):
                    values = [cost(params, attention(TINY, n, heads, batch, scored, masked)) for n in tokens]
                    assert_non_decreasing(values, f"attention heads={heads} scored={scored} masked={masked} B={batch}")
        for hidden in (0, 8, 384, 768):
            assert_non_decreasing([cost(params, mlp(TINY, n, hidden, batch)) for n in tokens], f"mlp H={hidden}")
        assert_non_decreasing([cost(params, head(TINY, n, batch)) for n in tokens], f"head B={batch}")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_cost_grows_with_heads_and_width(model):
    params, cost = MODELS[model]
    for tokens in (1, 50, SMALL.tokens):
        for scored, masked in ((False, False), (True, False), (True, True)):
            heads = range(1 if scored else 0, SMALL.heads + 1)
            values = [cost(params, attention(SMALL, tokens, h, 4, scored, masked)) for h in heads]
            assert_non_decreasing(values, f"attention over heads, N={tokens} scored={scored}")
        widths = range(0, SMALL.mlp_hidden + 1, 8)
        assert_non_decreasing([cost(params, mlp(SMALL, tokens, w, 4)) for w in widths], f"mlp over width, N={tokens}")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_cost_grows_with_batch(model):
    params, cost = MODELS[model]
    batches = range(1, 65)
    keys = {
        "attention": lambda b: attention(TINY, 197, 3, b, scored=True, masked=b > 1),
        "mlp": lambda b: mlp(TINY, 197, 768, b),
        "head": lambda b: head(TINY, 197, b),
        "embed": lambda b: embed(TINY, b),
    }
    for op, make in keys.items():
        assert_non_decreasing([cost(params, make(b)) for b in batches], f"{op} over batch")
    for method in ("gather", "compact"):
        for package in (False, True):
            select = {"op": "select", "embed_dim": 192, "tokens_in": 197, "tokens_out": 120, "prefix": 1}
            values = [cost(params, {**select, "batch": b, "method": method, "package": package}) for b in batches]
            assert_non_decreasing(values, f"select {method} package={package} over batch")
    assert_non_decreasing([cost(params, merge(TINY, 197, 16, b)) for b in batches], "merge over batch")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_merge_cost_grows_with_tokens(model):
    params, cost = MODELS[model]
    for variant in (params, params.model_copy(update={"dram_bandwidth_gbs": 0.5, "ddr_bandwidth_gbs": 0.5})):
        for shape in (TINY, SMALL):
            for batch in (1, 32):
                for r in (1, 8, 32):
                    tokens = range(shape.prefix + 2 * r, shape.tokens + 1)  # at most half the patch tokens merge
                    values = [cost(variant, merge(shape, n, r, batch)) for n in tokens]
                    assert_non_decreasing(values, f"merge r={r} over tokens, B={batch}")
                # More pairs: the same matching, a bigger merge matmul, fewer tokens written. Where ops are
                # bound by compute the matmul wins (memory-starved, writing fewer tokens can win instead).
                if variant is params:
                    most = (shape.tokens - shape.prefix) // 2
                    assert cost(params, merge(shape, shape.tokens, most, batch)) > cost(
                        params, merge(shape, shape.tokens, 1, batch)
                    )


# -- physical bounds --------------------------------------------------------------------------------


def mlp_work(shape, tokens, hidden, batch) -> tuple[float, float]:
    """(MACs, weight elements) of fc1 and fc2."""
    rows = batch * tokens
    return 2 * rows * shape.embed_dim * hidden, 2 * shape.embed_dim * hidden


def attention_work(shape, tokens, heads, batch) -> tuple[float, float]:
    """(MACs, weight elements) of qkv, QK^T, PV and proj."""
    rows, inner = batch * tokens, heads * shape.head_dim
    macs = rows * shape.embed_dim * 3 * inner + 2 * batch * heads * tokens * tokens * shape.head_dim
    macs += rows * inner * shape.embed_dim
    return macs, 4 * shape.embed_dim * inner


CASES = [(n, b) for n in (1, 17, 100, 197) for b in (1, 8, 32)]


# Each preset, and a variant starved of bandwidth so that the memory bound is the one that binds.
CPUS = [CPU, CPU.model_copy(update={"dram_bandwidth_gbs": 0.5})]
FPGAS = [FPGA, FPGA.model_copy(update={"ddr_bandwidth_gbs": 0.5})]


@pytest.mark.parametrize("params", CPUS, ids=["preset", "starved"])
@pytest.mark.parametrize(("tokens", "batch"), CASES)
def test_cpu_never_beats_its_roofline(tokens, batch, params):
    peak_flops = sum(c.clock_ghz * 1e9 * c.fp32_flops_per_cycle for c in params.thread_cores())
    bandwidth = params.dram_bandwidth_gbs * 1e9
    for shape in (TINY, SMALL):
        for hidden in (8, shape.mlp_hidden):
            macs, weights = mlp_work(shape, tokens, hidden, batch)
            ms = mobile_cpu_ms(params, mlp(shape, tokens, hidden, batch))
            assert ms >= 2 * macs / peak_flops * 1e3
            assert ms >= 4 * weights / bandwidth * 1e3  # fp32 weights read at least once
        for heads in (1, shape.heads):
            macs, weights = attention_work(shape, tokens, heads, batch)
            for scored in (False, True):
                ms = mobile_cpu_ms(params, attention(shape, tokens, heads, batch, scored))
                assert ms >= 2 * macs / peak_flops * 1e3
                assert ms >= 4 * weights / bandwidth * 1e3


@pytest.mark.parametrize("params", CPUS, ids=["preset", "starved"])
@pytest.mark.parametrize("batch", [1, 32])
def test_cpu_merge_never_beats_its_roofline(params, batch):
    peak_flops = sum(c.clock_ghz * 1e9 * c.fp32_flops_per_cycle for c in params.thread_cores())
    bandwidth = params.dram_bandwidth_gbs * 1e9
    for n, r in ((197, 8), (197, 98), (101, 30)):
        a, b = n // 2, (n - 1) // 2  # the n - 1 patch tokens alternate into A and B
        flops = 2 * batch * (a * b * TINY.head_dim + b * r * TINY.embed_dim)  # similarity and merge matmuls
        moved = 4 * batch * (n + n - r) * TINY.embed_dim  # every token read, the survivors written
        ms = mobile_cpu_ms(params, merge(TINY, n, r, batch))
        assert ms >= flops / peak_flops * 1e3 and ms >= moved / bandwidth * 1e3


@pytest.mark.parametrize("params", FPGAS, ids=["preset", "starved"])
@pytest.mark.parametrize(("tokens", "batch"), CASES)
def test_fpga_never_beats_its_roofline(tokens, batch, params):
    peak_macs = params.pe_rows * params.pe_cols * params.clock_mhz * 1e6
    bandwidth = params.ddr_bandwidth_gbs * 1e9
    element = params.bits / 8
    for shape in (TINY, SMALL):
        for hidden in (8, shape.mlp_hidden):
            macs, weights = mlp_work(shape, tokens, hidden, batch)
            ms = fpga_ms(params, mlp(shape, tokens, hidden, batch))
            assert ms >= macs / peak_macs * 1e3
            assert ms >= element * weights / bandwidth * 1e3  # weights read from DDR at least once
        for heads in (1, shape.heads):
            macs, weights = attention_work(shape, tokens, heads, batch)
            ms = fpga_ms(params, attention(shape, tokens, heads, batch))
            assert ms >= macs / peak_macs * 1e3
            assert ms >= element * weights / bandwidth * 1e3


# -- plausible totals -------------------------------------------------------------------------------


def test_deit_tiny_on_the_phone_is_plausible():
    # Published fp32 phone-CPU latencies of DeiT-Tiny are roughly 10-40 ms; the band is wider on purpose.
    ms = dense_ms(mobile_cpu_ms, CPU, TINY, 1)
    assert 5.0 <= ms <= 60.0


def test_deit_tiny_on_the_fpga_is_plausible():
    # 1.26 GMAC of DeiT-Tiny at the array's peak is the floor; ViT accelerators reach 25%+ of their peak.
    floor = 1.26e9 / (FPGA.pe_rows * FPGA.pe_cols * FPGA.clock_mhz * 1e6) * 1e3
    ms = dense_ms(fpga_ms, FPGA, TINY, 1)
    assert floor <= ms <= 4 * floor


def test_an_fpga_design_for_16_bit_words_has_the_same_dsps_and_half_the_macs():
    int16 = FPGA.with_dtype("int16")
    assert (int16.bits, int16.pe_rows, int16.pe_cols) == (16, FPGA.pe_rows, FPGA.pe_cols // 2)
    assert int16.pe_rows * int16.pe_cols / int16.macs_per_dsp == FPGA.pe_rows * FPGA.pe_cols / FPGA.macs_per_dsp
    assert int16.with_dtype("int8") == FPGA.model_copy(update={"hardware": int16.with_dtype("int8").hardware})
    assert FPGA.with_dtype("int8") is FPGA and "32 x 32" in int16.hardware
    # Twice the cycles on the GEMMs and twice the bytes, so 16-bit costs more, but less than twice (units, overheads).
    ratio = dense_ms(fpga_ms, int16, TINY, 1) / dense_ms(fpga_ms, FPGA, TINY, 1)
    assert 1.2 < ratio < 2.0
    with pytest.raises(ValueError, match="dtype 'int4' for fpga:zcu102: use int8, int16, w4a8"):
        FPGA.with_dtype("int4")


def test_an_fpga_design_for_four_bit_weights_keeps_its_array_and_halves_the_weight_traffic():
    w4a8 = FPGA.with_dtype("w4a8")
    assert (w4a8.dtype, w4a8.bits, w4a8.weight_bytes, w4a8.pe_cols) == ("w4a8", 8, 0.5, FPGA.pe_cols)
    assert w4a8.macs_per_dsp == FPGA.macs_per_dsp and w4a8.with_dtype("int8").weight_bits is None
    assert FPGA.with_dtype("int16").with_dtype("w4a8").pe_cols == FPGA.pe_cols
    # A board starved of DDR bandwidth waits on the weights: half their bytes, less time; with bandwidth to
    # spare the array's cycles are the same.
    starved = FPGA.model_copy(update={"ddr_bandwidth_gbs": 0.2})
    key = mlp(TINY, 197, 768, 1)
    assert fpga_ms(starved.with_dtype("w4a8"), key) < 0.9 * fpga_ms(starved, key)
    assert dense_ms(fpga_ms, w4a8, TINY, 1) <= dense_ms(fpga_ms, FPGA, TINY, 1)
    ample = FPGA.model_copy(update={"ddr_bandwidth_gbs": 1e6})
    assert fpga_ms(ample.with_dtype("w4a8"), key) == pytest.approx(fpga_ms(ample, key))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bigger_models_and_batches_cost_more(model):
    params, cost = MODELS[model]
    for batch in (1, 32):
        assert dense_ms(cost, params, SMALL, batch) > 2 * dense_ms(cost, params, TINY, batch)
    one, many = dense_ms(cost, params, TINY, 1), dense_ms(cost, params, TINY, 32)
    assert one < many <= 32 * one  # batching amortises fixed costs, never adds per image


def test_predictor_reads_an_analytic_table():
    table = analytic_table(CPU, [TINY], [1])
    spec = DEIT_TINY
    predictor = LatencyPredictor(table)
    dense = predictor.predict(PruneConfig.dense(spec), spec)
    assert dense.ms == pytest.approx(dense_ms(mobile_cpu_ms, CPU, TINY, 1), rel=1e-9)
    assert not dense.extrapolated
    pruned = PruneConfig.uniform(spec, keep_ratio=0.6, at=(3, 6, 9), mlp_ratio=0.5)
    assert predictor.predict(pruned, spec).ms < 0.7 * dense.ms


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_predictor_prices_merging_from_an_analytic_table(name):
    params = PRESETS[name]
    spec = DEIT_TINY
    predictor = LatencyPredictor(analytic_table(params, [TINY], [1, 32]))
    for batch in (1, 32):
        dense = predictor.breakdown(PruneConfig.dense(spec), spec, batch)
        tome = predictor.breakdown(PruneConfig.uniform(spec, r=8, at=tuple(range(12))), spec, batch)
        assert not tome.extrapolated and tome.parts["select"] == 0.0
        # The first merge is the table's own entry: 197 tokens in, 8 pairs merged.
        first = params_cost(params, merge(TINY, 197, 8, batch))
        assert first < tome.parts["merge"] < 12 * first
        # ToMe r=8: the MLPs run at 189 down to 101 tokens, 145 on average, 0.74 of the dense 197.
        assert 0.68 * dense.parts["mlp"] < tome.parts["mlp"] < 0.80 * dense.parts["mlp"]
        assert tome.ms < dense.ms
        mixed = PruneConfig.uniform(spec, r=8, at=tuple(range(12))).model_copy(update={"package_token": True})
        blocks = list(mixed.blocks)
        blocks[6] = blocks[6].model_copy(update={"tokens": TopKReduction(keep_ratio=0.5)})
        mixed = mixed.model_copy(update={"blocks": tuple(blocks)})
        both = predictor.breakdown(mixed, spec, batch)
        assert both.parts["select"] > 0 and both.parts["merge"] > 0 and both.ms < tome.ms


def params_cost(params, key: dict) -> float:
    return analytic_model(params).cost(key)


# -- invalid parameters -----------------------------------------------------------------------------


def with_changes(params, **changes):
    return type(params).model_validate({**params.model_dump(), **changes})


def test_invalid_cpu_parameters_name_the_field():
    clusters = [dict(c) for c in CPU.model_dump()["clusters"]]
    clusters[0]["clock_ghz"] = 0.0
    with pytest.raises(ValidationError, match="clock_ghz"):
        with_changes(CPU, clusters=clusters)
    with pytest.raises(ValidationError, match="gemm_efficiency"):
        with_changes(CPU, gemm_efficiency=1.5)
    with pytest.raises(ValidationError, match="dram_bandwidth_gbs"):
        with_changes(CPU, dram_bandwidth_gbs=-1.0)
    with pytest.raises(ValidationError, match="cache_mb"):
        with_changes(CPU, cache_mb=8)


def test_invalid_fpga_parameters_name_the_field():
    with pytest.raises(ValidationError, match="clock_mhz"):
        with_changes(FPGA, clock_mhz=0.0)
    with pytest.raises(ValidationError, match=r"pe_rows x pe_cols = 64 x 128.*dsp_budget = 2520"):
        with_changes(FPGA, pe_rows=64, pe_cols=128)
    # The same array fits at 8 bits but not at 16, where a DSP does one multiply instead of two.
    assert with_changes(FPGA, pe_rows=64, pe_cols=64, bits=8).dsps_required <= 2520
    with pytest.raises(ValidationError, match="dsp_budget"):
        with_changes(FPGA, pe_rows=64, pe_cols=64, bits=16)
    with pytest.raises(ValidationError, match="activation_buffer_bytes"):
        with_changes(FPGA, activation_buffer_bytes=FPGA.bram_bytes + 1)
    with pytest.raises(ValidationError, match="bits"):
        with_changes(FPGA, bits=4)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_unknown_entry_raises(model):
    params, cost = MODELS[model]
    with pytest.raises(ValueError, match="unknown table entry op 'conv'"):
        cost(params, {"op": "conv", "batch": 1, "embed_dim": 192})
