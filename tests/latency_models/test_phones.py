"""Phone presets of the analytic mobile-CPU model: core configurations, int8, device names, sources."""

from __future__ import annotations

import pytest

from latency_models.analytic import PRESETS, MobileCpu, MobileCpuParams, analytic_table
from latency_models.analytic.mobile_cpu import WIDENING_MACS_PER_128_BIT, Cluster
from latency_models.analytic.phones import CORE_SOURCES, CORES, PHONES
from latency_models.devices import UnknownDeviceError
from latency_models.devices.analytic import BASIS
from latency_models.profiling import SHAPES, entry_id, plan
from latency_models.registry import Registry
from pruning.config import PruneConfig
from tests.latency_models.specs import DEIT_TINY
from tests.latency_models.test_analytic import assert_non_decreasing, attention, mlp

TINY = SHAPES["deit_tiny_patch16_224"]
SMALL = SHAPES["deit_small_patch16_224"]
NAMES = [p.name for p in PHONES]
LABELS = ("Spec - ", "Spec-derived - ", "Reported - ", "Assumption - ")


def phone(name: str) -> MobileCpuParams:
    return PRESETS[f"mobile-cpu:{name}"]


def ms(params: MobileCpuParams, key: dict) -> float:
    return MobileCpu(params).cost(key)


def big_mlp(batch: int = 8) -> dict:
    """A GEMM-dominated entry: DeiT-Small's MLP at all 197 tokens (2 x 8 x 197 x 384 x 1536 x 2 FLOP)."""
    return mlp(SMALL, SMALL.tokens, SMALL.mlp_hidden, batch)


def gemm_flops(key: dict) -> float:
    return 2 * 2.0 * key["batch"] * key["tokens"] * key["embed_dim"] * key["mlp_hidden"]


def performance_count(params: MobileCpuParams) -> int:
    return sum(c.count for c in params.clusters if not c.efficiency)


# -- presets and tables -----------------------------------------------------------------------------


def test_the_phones_people_own_are_presets():
    wanted = {
        "snapdragon-855", "snapdragon-710", "snapdragon-8-gen-2", "snapdragon-8-gen-3", "exynos-9820",
        "tensor-g3", "helio-p35", "dimensity-9300", "apple-a10", "apple-a12", "apple-a17-pro",
    }  # fmt: skip
    assert {f"mobile-cpu:{n}" for n in wanted} <= set(PRESETS)
    assert all(PRESETS[p.name] is p for p in PHONES)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_cites_its_sources_and_labels_its_assumptions(name):
    params = PRESETS[name]
    assert all(s.startswith(LABELS) for s in params.sources), "every source line says what it is"
    assert any(s.startswith("Spec - ") for s in params.sources)
    assert any(s.startswith("Assumption - ") for s in params.sources)
    for cluster in params.clusters:
        assert CORE_SOURCES[cluster.core] in params.sources, f"{cluster.core}'s SIMD facts are cited"
        assert {k: getattr(cluster, k) for k in CORES[cluster.core]} == CORES[cluster.core]
    assert any("default core configuration" in s for s in params.sources)
    assert type(params).model_validate(params.model_dump()) == params


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cores", [None, "one", "all"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_every_preset_builds_a_valid_deit_tiny_table(name, cores, dtype):
    params = PRESETS[name] if cores is None else PRESETS[name].on_cores(cores)
    params = params.with_dtype(dtype)
    table = analytic_table(params, [TINY], [1])
    assert table.keys() == {entry_id(key) for key in plan(TINY, [1])}
    device = table.device
    assert device.kind == "analytic" and device.dtype == dtype and device.threads == params.threads
    assert device.name == params.name and params.describe_cores() in device.hardware and dtype in device.hardware
    assert device.parameters["cores"] == params.cores and device.parameters["dtype"] == dtype
    assert all(e.median_ms > 0 for e in table.entries)


# -- core configurations ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_core_configurations_pick_the_documented_cores(name):
    params = PRESETS[name]
    one, cluster, every = (params.on_cores(c) for c in ("one", "cluster", "all"))
    fastest = max(params.clusters, key=lambda c: c.clock_ghz * c.fp32_flops_per_cycle)
    assert one.thread_cores() == [fastest] and one.threads == 1
    assert cluster.threads == performance_count(params)
    assert not any(c.efficiency for c in cluster.thread_cores())
    total = sum(c.count for c in params.clusters)
    assert every.threads == (total if params.all_clusters_at_once else performance_count(params))
    for n in range(1, every.threads + 1):  # n threads: the n fastest cores, performance cores first
        assert params.on_cores(n).thread_cores() == every.thread_cores()[:n]
        assert params.on_cores(str(n)) == params.on_cores(n)
    assert one.name == f"{name}@one" and one.on_cores(3 if every.threads >= 3 else 2).name.count("@") == 1
    assert type(params).model_validate(one.model_dump()) == one  # a fitted record restores its configuration


def test_cluster_is_one_prime_and_three_big_on_a_1_3_4_design():
    sd855 = phone("snapdragon-855")
    assert [c.count for c in sd855.on_cores("cluster").clusters if not c.efficiency] == [1, 3]
    assert sd855.on_cores("cluster").describe_cores() == "4 threads: 1x Cortex-A76 @2.84 GHz + 3x Cortex-A76 @2.42 GHz"
    assert sd855.cores == "cluster"
    assert phone("snapdragon-8-gen-2").threads == 4  # the preset keeps its 4 threads by default
    a10 = phone("apple-a10")  # the A10 runs its big pair or its little pair, never both
    assert a10.on_cores("all").thread_cores() == a10.on_cores("cluster").thread_cores()


@pytest.mark.parametrize("bad", ["big", "", 0, -1, 99, True, 2.5])
def test_a_bad_core_configuration_says_what_is_valid(bad):
    with pytest.raises(ValueError, match="use one, cluster, all or a thread count from 1 to 8"):
        phone("snapdragon-855").on_cores(bad)
    with pytest.raises(ValueError, match=r"dtype 'int4'.*float32, int8, w4a8"):
        phone("snapdragon-855").with_dtype("int4")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_more_performance_cores_are_never_slower_on_big_gemms(name, dtype):
    params = PRESETS[name].with_dtype(dtype)
    for batch in (1, 8):
        key = big_mlp(batch)
        costs = [ms(params.on_cores(n), key) for n in range(1, performance_count(params) + 1)]
        assert_non_decreasing(costs[::-1], f"{name} {dtype} B={batch}: cost over fewer threads")
        if performance_count(params) > 1:
            assert ms(params.on_cores("one"), key) > 1.5 * ms(params.on_cores("cluster"), key)


WITH_LITTLE_CORES = [n for n in NAMES if PRESETS[n].on_cores("all").threads > performance_count(PRESETS[n])]


@pytest.mark.parametrize("name", WITH_LITTLE_CORES)
def test_all_cores_obey_the_slowest_share_rule(name):
    """On `@all` an op split over every core ends when a little core's share does: a big GEMM takes at least
    (its FLOPs / threads) at the slowest core's achieved rate, and is slower than on the performance cores
    alone exactly when that share outlasts the performance cores' pooled work."""
    params = PRESETS[name]
    every, cluster = params.on_cores("all"), params.on_cores("cluster")
    key = big_mlp(8)
    flops, threads = gemm_flops(key), every.threads
    slowest = min(c.clock_ghz * 1e9 * c.fp32_flops_per_cycle for c in every.thread_cores())
    little_share_ms = flops / threads / (slowest * params.gemm_efficiency) * 1e3
    # The two GEMMs dominate the entry: its LayerNorm, GELU and add cost a few percent more.
    assert little_share_ms <= ms(every, key) <= 1.15 * little_share_ms
    perf = [c.clock_ghz * 1e9 * c.fp32_flops_per_cycle for c in cluster.thread_cores()]
    little_share_s = flops / threads / slowest
    pooled_s = flops * len(perf) / threads / sum(perf)
    if little_share_s > flops / sum(perf) * 1.2:  # the little cores' share takes clearly longer: @all loses
        assert ms(every, key) > ms(cluster, key)
    if max(little_share_s, pooled_s) < flops / sum(perf) / 1.2:  # ... clearly shorter: @all wins
        assert ms(every, key) < ms(cluster, key)


@pytest.mark.parametrize("name", ["snapdragon-855", "helio-p35", "apple-a12"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_costs_stay_monotone_with_little_cores(name, dtype):
    params = phone(name).on_cores("all").with_dtype(dtype)
    for batch in (1, 8):
        tokens = range(1, TINY.tokens + 1, 4)
        assert_non_decreasing([ms(params, mlp(TINY, n, TINY.mlp_hidden, batch)) for n in tokens], "mlp")
        for scored in (False, True):
            values = [ms(params, attention(TINY, n, TINY.heads, batch, scored)) for n in tokens]
            assert_non_decreasing(values, f"attention scored={scored}")
        widths = range(0, TINY.mlp_hidden + 1, 32)
        assert_non_decreasing([ms(params, mlp(TINY, 197, w, batch)) for w in widths], "mlp over width")


# -- int8 -------------------------------------------------------------------------------------------


def test_int8_peaks_follow_the_instructions():
    base = dict(name="t", core="c", count=1, clock_ghz=1.0, fma_pipes=2, int8_pipes=2)
    assert Cluster(**base, dot_product=True, i8mm=False).int8_macs_per_cycle == 2 * 16
    assert Cluster(**base, dot_product=True, i8mm=True).int8_macs_per_cycle == 2 * 32
    assert Cluster(**base, dot_product=False, i8mm=False).int8_macs_per_cycle == 2 * WIDENING_MACS_PER_128_BIT
    narrow = Cluster(**{**base, "fma_pipes": 1, "int8_pipes": 1}, pipe_bits=64, dot_product=False, i8mm=False)
    assert narrow.fp32_flops_per_cycle == 4 and narrow.int8_macs_per_cycle == WIDENING_MACS_PER_128_BIT / 2


@pytest.mark.parametrize("name", NAMES)
def test_int8_is_cheaper_than_fp32_for_big_gemms_on_dot_product_cores(name):
    for cores in ("one", "cluster"):
        params = PRESETS[name].on_cores(cores)
        if not all(c.dot_product for c in params.thread_cores()):
            continue
        fp32, int8 = ms(params, big_mlp(8)), ms(params.with_dtype("int8"), big_mlp(8))
        assert int8 < 0.7 * fp32, f"{name}@{cores}: int8 {int8:.2f} ms vs fp32 {fp32:.2f} ms"


def test_without_dot_product_int8_gains_less():
    """The A53's widening multiplies give a third more MACs than its FMAs; a dot-product core four times more."""

    def gain(params: MobileCpuParams) -> float:
        return ms(params, big_mlp(8)) / ms(params.with_dtype("int8"), big_mlp(8))

    a53, a76 = phone("helio-p35").on_cores("one"), phone("snapdragon-855").on_cores("one")
    assert 1.0 < gain(a53) < gain(a76)


def test_int8_moves_a_quarter_of_the_bytes_and_quantises_around_float_ops():
    starved = phone("snapdragon-855").model_copy(update={"dram_bandwidth_gbs": 0.05})  # memory-bound throughout
    key = mlp(TINY, 197, 768, 1)
    fp32, int8 = ms(starved, key), ms(starved.with_dtype("int8"), key)
    assert 0.2 < int8 / fp32 < 0.3  # weights and activations 1 byte instead of 4 (biases stay 4)
    compute = phone("snapdragon-855").model_copy(update={"dram_bandwidth_gbs": 1e6})
    costly = compute.model_copy(update={"quantize_flops_per_element": 30.0}).with_dtype("int8")
    assert ms(costly, key) > ms(compute.with_dtype("int8"), key)  # (de)quantisation is priced


def test_four_bit_weights_halve_the_weight_bytes_at_the_int8_rate():
    starved = phone("snapdragon-855").model_copy(update={"dram_bandwidth_gbs": 0.05})
    key = mlp(TINY, 1, 768, 1)  # one token: the weights are nearly all the bytes
    int8, w4a8 = ms(starved.with_dtype("int8"), key), ms(starved.with_dtype("w4a8"), key)
    assert 0.45 < w4a8 / int8 < 0.6
    compute = phone("snapdragon-855").model_copy(update={"dram_bandwidth_gbs": 1e6})
    assert ms(compute.with_dtype("w4a8"), big_mlp(8)) == pytest.approx(ms(compute.with_dtype("int8"), big_mlp(8)))


# -- device names -----------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path, threads=1)


def test_core_configurations_are_device_names(registry):
    one = registry.backend("mobile-cpu:snapdragon-855@one")
    profile = one.profile()
    assert profile.name == "mobile-cpu:snapdragon-855@one" and profile.basis == BASIS
    assert "1 thread: 1x Cortex-A76 @2.84 GHz" in profile.description
    assert registry.backend("mobile-cpu@one").name == "mobile-cpu:snapdragon-8-gen-2@one"
    assert registry.backend("mobile-cpu:apple-a17-pro@2").params.threads == 2
    listed = {d.name: d for d in registry.devices()}
    for params in PHONES:
        device = listed[params.name]
        assert device.basis == BASIS and params.describe_cores() in device.description
        assert f"default @{params.cores}" in device.description
    assert listed["fpga:zcu102"].basis == BASIS


def test_a_dtype_is_part_of_a_phone_name_and_int8_is_priced_faster(registry):
    int8 = registry.backend("mobile-cpu@cluster+int8")
    assert int8.name == "mobile-cpu:snapdragon-8-gen-2@cluster+int8" and int8.params.dtype == "int8"
    assert registry.backend("mobile-cpu+int8").name == "mobile-cpu:snapdragon-8-gen-2+int8"
    float32 = registry.backend("mobile-cpu@cluster")
    assert float32.params.dtype == "float32" and float32.params.threads == int8.params.threads
    spec = DEIT_TINY
    fast, slow = (registry.predictor(d.name, spec, [1]) for d in (int8, float32))
    dense = PruneConfig.dense(spec)
    assert fast.predict(dense, spec).ms < slow.predict(dense, spec).ms
    assert registry.table("mobile-cpu@cluster+int8", spec, [1]).device.dtype == "int8"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mobile-cpu:snapdragon-855@big", "use one, cluster, all or a thread count from 1 to 8"),
        ("mobile-cpu:apple-a10@3", "use one, cluster, all or a thread count from 1 to 2"),
        ("mobile-cpu@0", "use one, cluster, all"),
        ("fpga:zcu102@one", "no core configurations"),
        ("fpga+int4", "dtype 'int4' for fpga:zcu102: use int8, int16, w4a8"),
        ("mobile-cpu@one+int4", "dtype 'int4'.*use float32, int8, w4a8"),
        ("mobile-cpu:nope@one", "presets: .*mobile-cpu:snapdragon-855"),
    ],
)
def test_bad_device_names_say_what_is_valid(registry, name, message):
    with pytest.raises(UnknownDeviceError, match=message):
        registry.backend(name)
