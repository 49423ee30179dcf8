"""Phone SoC presets for the analytic mobile-CPU model, every number traced to a public document.

Each source line starts with what it is: "Spec" (the vendor's own document: a product brief, an Arm
Technical Reference Manual or Software Optimization Guide), "Spec-derived" (arithmetic on specs),
"Reported" (a named public analysis, teardown or review, where the vendor publishes nothing) or
"Assumption" (a modelling choice, with why). docs/devices.md has the tables and the reasoning.

The core types' SIMD facts are shared between presets (`CORES`); the model's free parameters are the
same assumptions for every phone (`_MODEL`), because nothing public pins them per SoC: fitting a
preset to a few timings of the phone (`vitprune devices fit`) is what sets them.
"""

from __future__ import annotations

from typing import Any

from latency_models.analytic.mobile_cpu import Cluster, MobileCpuParams

__all__ = ["CORES", "PHONES", "SNAPDRAGON_8_GEN_2"]

_SOG = "Software Optimization Guide (developer.arm.com)"
_LLVM = "LLVM llvm/lib/Target/AArch64/AArch64Processors.td"

CORES: dict[str, dict[str, Any]] = {
    "Cortex-A53": dict(fma_pipes=1, pipe_bits=64, int8_pipes=1, dot_product=False, i8mm=False),
    "Cortex-A55": dict(fma_pipes=2, pipe_bits=64, int8_pipes=2, dot_product=True, i8mm=False),
    "Cortex-A75": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=False),
    "Cortex-A76": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=False, l1d_kb=64),
    "Cortex-A510": dict(fma_pipes=1, int8_pipes=1, dot_product=True, i8mm=True),
    "Cortex-A520": dict(fma_pipes=1, int8_pipes=1, dot_product=True, i8mm=True),
    "Cortex-A710": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=True),
    "Cortex-A715": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=True),
    "Cortex-A720": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=True, l1d_kb=64),
    "Cortex-X3": dict(fma_pipes=4, int8_pipes=4, dot_product=True, i8mm=True, l1d_kb=64),
    "Cortex-X4": dict(fma_pipes=4, int8_pipes=4, dot_product=True, i8mm=True, l1d_kb=64),
    "Exynos M4": dict(fma_pipes=3, int8_pipes=2, dot_product=True, i8mm=False, l1d_kb=64),
    "Apple Hurricane": dict(fma_pipes=2, int8_pipes=2, dot_product=False, i8mm=False, l1d_kb=64),
    "Apple Zephyr": dict(fma_pipes=1, int8_pipes=1, dot_product=False, i8mm=False),
    "Apple Vortex": dict(fma_pipes=3, int8_pipes=3, dot_product=False, i8mm=False, l1d_kb=128),
    "Apple Tempest": dict(fma_pipes=2, int8_pipes=2, dot_product=False, i8mm=False),
    "Apple A17 Pro P-core": dict(fma_pipes=4, int8_pipes=4, dot_product=True, i8mm=True, l1d_kb=128),
    "Apple A17 Pro E-core": dict(fma_pipes=2, int8_pipes=2, dot_product=True, i8mm=True),
}
"""SIMD facts of each core type (their sources: `CORE_SOURCES`)."""

CORE_SOURCES: dict[str, str] = {
    "Cortex-A53": (
        "Reported - Cortex-A53 (Arm publishes no optimization guide for it): a 64-bit ASIMD datapath; a 128-bit "
        "FMLA occupies the multiply-accumulate pipe for two cycles (LLVM AArch64SchedA53.td; ncnn's "
        "docs/developer-guide/arm-a53-a55-dual-issue.md): 1 x 64/32 x 2 = 4 FLOP/cycle. Armv8.0: no SDOT, no "
        f"i8mm ({_LLVM}, cortex-a53); int8 runs on widening multiplies."
    ),
    "Cortex-A55": (
        f"Spec - Arm Cortex-A55 {_SOG}: two 64-bit FP/ASIMD pipes, a Q-form (128-bit) FMLA or SDOT issues on "
        "both: 2 x 64/32 x 2 = 8 FLOP/cycle, 16 int8 MAC/cycle by SDOT; Armv8.2 with DotProd, no i8mm "
        f"({_LLVM}, cortex-a55)."
    ),
    "Cortex-A75": (
        f"Spec - Arm Cortex-A75 {_SOG}: two 128-bit FP/ASIMD pipes (F0, F1) that each issue FMLA: 2 x 4 x 2 = 16 "
        "FLOP/cycle; Armv8.2 with SDOT/UDOT on both pipes, no i8mm (L1D size is the implementer's choice)."
    ),
    "Cortex-A76": (
        f"Spec - Arm Cortex-A76 {_SOG}: two 128-bit FP/ASIMD pipes (V0, V1) that each issue FMLA and SDOT: "
        f"16 FLOP/cycle, 32 int8 MAC/cycle; DotProd, no i8mm ({_LLVM}, cortex-a76); 64 KiB L1D (Cortex-A76 TRM)."
    ),
    "Cortex-A510": (
        "Spec - Arm Cortex-A510 TRM: two cores of a complex share one vector unit of two pipes (128- or 64-bit, "
        f"the implementer's choice); Armv9.0 with DotProd and i8mm ({_LLVM}, cortex-a510). Assumption - one "
        "128-bit FMA pipe per core (8 FLOP/cycle) when both cores of a complex run, as under a thread pool."
    ),
    "Cortex-A520": (
        "Spec - Arm Cortex-A520 TRM: merged-core complexes sharing the vector unit, as the A510; Armv9.2 with "
        f"DotProd and i8mm ({_LLVM}, cortex-a520). Assumption - one 128-bit FMA pipe per core (8 FLOP/cycle)."
    ),
    "Cortex-A710": (
        f"Spec - Arm Cortex-A710 {_SOG}: two 128-bit FP/ASIMD pipes with FMLA, SDOT and SMMLA: 16 FLOP/cycle; "
        f"Armv9.0 with DotProd and i8mm ({_LLVM}, cortex-a710)."
    ),
    "Cortex-A715": (
        f"Spec - Arm Cortex-A715 {_SOG}: two 128-bit FP/ASIMD pipes with FMLA, SDOT and SMMLA: 16 FLOP/cycle; "
        f"Armv9.0 with DotProd and i8mm ({_LLVM}, cortex-a715)."
    ),
    "Cortex-A720": (
        f"Spec - Arm Cortex-A720 Core {_SOG} (doc 109720): two FP/ASIMD pipes; FMLA, SDOT and SMMLA each at a "
        "throughput of 2 per cycle on V0/V1: 16 FLOP/cycle, 32 int8 MAC/cycle by SDOT, 64 by SMMLA; Armv9.2 "
        f"({_LLVM}, cortex-a720)."
    ),
    "Cortex-X3": (
        f"Spec - Arm Cortex-X3 Core {_SOG}: four 128-bit FP/ASIMD pipes that each issue FMLA, SDOT and SMMLA: "
        f"32 FLOP/cycle; Armv9.0 with DotProd and i8mm ({_LLVM}, cortex-x3)."
    ),
    "Cortex-X4": (
        f"Spec - Arm Cortex-X4 Core {_SOG} (PJDOC-1505342170-538636): four FP/ASIMD pipes, FMLA throughput 4 "
        f"per cycle: 32 FLOP/cycle; Armv9.2 with DotProd and i8mm ({_LLVM}, cortex-x4). Assumption - SDOT and "
        "SMMLA on all four pipes, as in the Cortex-A720 and Neoverse V2 guides."
    ),
    "Exynos M4": (
        "Spec - Samsung Exynos M4 ('Cheetah') scheduling model contributed by Samsung, LLVM "
        "AArch64SchedExynosM4.td: three FP pipes each with an FMAC unit (24 FLOP/cycle on 128-bit vectors), "
        f"SDOT on the two vector-multiply units (NMUL); Armv8.2 with DotProd, no i8mm ({_LLVM}, exynos-m4). "
        "Reported - WikiChip, Exynos M4 microarchitecture: 64 KiB L1D, 512 KiB L2 per core."
    ),
    "Apple Hurricane": (
        "Reported - Apple publishes no microarchitecture. Apple A10 cores are Armv8.0 without DotProd or i8mm "
        f"({_LLVM}, apple-a10). Assumption - two FMA-capable 128-bit pipes (8 FLOP/cycle x 2), as in the "
        "scheduling model LLVM applies to apple-a7 ... apple-a10 (AArch64SchedCyclone.td, from Apple's Cyclone "
        "tuning guide: FMLA, SMULL/SMLAL and SADALP on the two vector-multiply pipes V0-V1)."
    ),
    "Apple Zephyr": (
        "Assumption - Apple A10's efficiency core (no public microarchitecture): one 128-bit FMA pipe, no "
        f"DotProd ({_LLVM}, apple-a10)."
    ),
    "Apple Vortex": (
        "Reported - AnandTech, 'The iPhone XS & XS Max Review: Unveiling the Silicon Secrets' (A. Frumusanu, "
        "2018, anandtech.com/show/13392): Vortex has a 128 KiB L1D; AnandTech, 'Apple's Humongous CPU "
        "Microarchitecture' (A14 Firestorm, 2020, anandtech.com/show/16226) reports Firestorm adding a fourth FP "
        "pipeline to its predecessors' three. Assumption - Vortex has three 128-bit FMA pipes (24 FLOP/cycle). "
        f"Armv8.3 without DotProd or i8mm ({_LLVM}, apple-a12): int8 runs on widening multiplies."
    ),
    "Apple Tempest": (
        "Assumption - Apple A12's efficiency core (no public microarchitecture): two 128-bit FMA pipes, as "
        "reported for its successor Icestorm (dougallj.github.io/applecpu/icestorm.html); no DotProd "
        f"({_LLVM}, apple-a12)."
    ),
    "Apple A17 Pro P-core": (
        "Reported - AnandTech, 'Apple's Humongous CPU Microarchitecture' (2020, anandtech.com/show/16226) and "
        "dougallj.github.io/applecpu/firestorm.html: Apple's performance core has four 128-bit FP/NEON pipes "
        "that each issue FMLA (32 FLOP/cycle), 128 KiB L1D. Assumption - the A17 Pro's P-core keeps this "
        f"width. DotProd and i8mm ({_LLVM}, apple-a17); Assumption - SDOT/SMMLA on all four pipes."
    ),
    "Apple A17 Pro E-core": (
        "Assumption - two 128-bit FMA pipes, as Apple's Icestorm efficiency core "
        f"(dougallj.github.io/applecpu/icestorm.html); DotProd and i8mm ({_LLVM}, apple-a17)."
    ),
}

_MODEL: dict[str, Any] = dict(
    gemm_efficiency=0.6,
    attention_efficiency=0.35,
    elementwise_efficiency=0.25,
    scalar_ops_per_cycle=1.0,
    bandwidth_efficiency=0.5,
    op_overhead_us=5.0,
    parallel_grain_mflop=1.0,
    layernorm_flops_per_element=8.0,
    gelu_flops_per_element=20.0,
    softmax_flops_per_element=20.0,
    int8_kernel_efficiency=0.7,
    quantize_flops_per_element=3.0,
)
"""The model's parameters, the same assumptions for every phone (their reasons: `MODEL_ASSUMPTIONS`)."""

MODEL_ASSUMPTIONS = (
    "Assumption - gemm_efficiency 0.6: tuned NEON GEMM kernels (XNNPACK, Ruy) reach a majority of the SIMD peak "
    "on large shapes; packing, edge tiles and the narrow D=192/384 layers of small ViTs cost the rest.",
    "Assumption - attention_efficiency 0.35: the per-head matmuls are small (K = head_dim = 64, or N) and "
    "batched over heads, so they reach a lower share of peak than the Linear layers.",
    "Assumption - elementwise_efficiency 0.25 with FLOP counts LayerNorm 8, GELU 20 (erf approximation), softmax "
    "20 (exp polynomial, max, sum, divide) per element: these ops do not keep the FMA pipes busy.",
    "Assumption - int8: static quantisation as XNNPACK/TFLite run it; SDOT/SMMLA kernels keep 0.7 of the fp32 "
    "kernels' efficiency (more loads per multiply-accumulate, zero-point sums, requantisation); 3 float "
    "operations per element to quantise or dequantise around LayerNorm, softmax and GELU, which stay float.",
    "Assumption - scalar_ops_per_cycle 1: top-k and sort are branchy scalar code (one comparison per cycle).",
    "Assumption - bandwidth_efficiency 0.5: a phone CPU sustains roughly half the DRAM peak; caches are not "
    "modelled (their sizes are recorded for reference).",
    "Assumption - op_overhead_us 5: operator dispatch plus waking and joining the thread pool, per op.",
    "Assumption - parallel_grain_mflop 1: below about 1 MFLOP per thread another thread costs more in wake-up and "
    "barrier than it saves; an op split over threads ends when its slowest share does (little cores hold it up).",
    "Assumption - clocks are the maximum clocks: no thermal throttling and no load-dependent clock drop.",
)

DEFAULT_CORES = (
    "Assumption - default core configuration 'cluster' (every performance core, no efficiency core): what "
    "ExecuTorch's thread pool uses (extension/threadpool/cpuinfo_utils.cpp, get_num_performant_cores: all cores "
    "but Cortex-A53/A55/A510/A520 and Apple's efficiency cores) and, on 1+3+4 designs, the 4 threads of "
    "TFLite's benchmark_model examples (--num_threads=4)."
)


def _phone(
    slug: str,
    soc: str,
    clusters: list[tuple[str, str, int, float, dict[str, Any]]],
    *,
    dram: str,
    dram_bandwidth_gbs: float,
    sources: tuple[str, ...],
    cores: str | int = "cluster",
    default_cores: str = DEFAULT_CORES,
    **extra: Any,
) -> MobileCpuParams:
    """A preset: `clusters` as (tier, core type, count, clock GHz, per-SoC extras such as caches)."""
    built = tuple(
        Cluster(name=tier, core=core, count=n, clock_ghz=ghz, **{**CORES[core], **more})
        for tier, core, n, ghz, more in clusters
    )
    core_sources = tuple(dict.fromkeys(CORE_SOURCES[c.core] for c in built))
    return MobileCpuParams(
        name=f"mobile-cpu:{slug}",
        soc=soc,
        clusters=built,
        cores=cores,
        dram=dram,
        dram_bandwidth_gbs=dram_bandwidth_gbs,
        **extra,
        **_MODEL,
        sources=sources + core_sources + (default_cores,) + MODEL_ASSUMPTIONS,
    )


LITTLE = {"efficiency": True}

SNAPDRAGON_855 = _phone(
    "snapdragon-855",
    "Qualcomm Snapdragon 855 (SM8150)",
    [
        ("prime", "Cortex-A76", 1, 2.84, {"l2_kb": 512}),
        ("performance", "Cortex-A76", 3, 2.42, {"l2_kb": 256}),
        ("efficiency", "Cortex-A55", 4, 1.78, {"l2_kb": 128, **LITTLE}),
    ],
    dram="LPDDR4X-4266, 4 x 16-bit",
    dram_bandwidth_gbs=34.1,
    l3_kb=2048,
    slc_kb=3072,
    sources=(
        "Spec - Qualcomm, Snapdragon 855 Mobile Platform product brief (qualcomm.com): Kryo 485 CPU, 1 prime core "
        "up to 2.84 GHz, 3 performance cores up to 2.42 GHz, 4 efficiency cores up to 1.78 GHz; LPDDR4X, "
        "4 x 16-bit, 2133 MHz.",
        "Spec-derived - DRAM peak: 2133 MHz x 2 (DDR) x 8 bytes = 34.1 GB/s.",
        "Reported - AnandTech, 'The Snapdragon 855 Performance Preview' (2019, anandtech.com/show/13786): Kryo 485 "
        "Gold cores are Cortex-A76 derivatives and Silver cores Cortex-A55; L2 512 KiB (prime), 256 KiB "
        "(performance), 128 KiB (efficiency); 2 MiB L3; 3 MiB system cache.",
    ),
)

SNAPDRAGON_710 = _phone(
    "snapdragon-710",
    "Qualcomm Snapdragon 710 (SDM710)",
    [
        ("performance", "Cortex-A75", 2, 2.2, {"l2_kb": 256}),
        ("efficiency", "Cortex-A55", 6, 1.7, {"l2_kb": 64, **LITTLE}),
    ],
    dram="LPDDR4X-3733, 2 x 16-bit",
    dram_bandwidth_gbs=14.9,
    l3_kb=1024,
    sources=(
        "Spec - Qualcomm, Snapdragon 710 Mobile Platform product brief (qualcomm.com): Kryo 360 CPU, 2 performance "
        "cores up to 2.2 GHz, 6 efficiency cores up to 1.7 GHz; LPDDR4X, 2 x 16-bit, 1866 MHz.",
        "Spec-derived - DRAM peak: 1866 MHz x 2 (DDR) x 4 bytes = 14.9 GB/s.",
        "Reported - AnandTech's Snapdragon 710 announcement coverage (May 2018): Kryo 360 Gold "
        "cores are Cortex-A75 derivatives, Silver cores Cortex-A55; L2 256 KiB (Gold), 64 KiB (Silver); 1 MiB L3.",
    ),
)

SNAPDRAGON_8_GEN_2 = _phone(
    "snapdragon-8-gen-2",
    "Qualcomm Snapdragon 8 Gen 2 (SM8550)",
    [
        ("prime", "Cortex-X3", 1, 3.2, {"l2_kb": 1024}),
        ("performance", "Cortex-A715", 2, 2.8, {"l2_kb": 512}),
        ("performance", "Cortex-A710", 2, 2.8, {"l2_kb": 512}),
        ("efficiency", "Cortex-A510", 3, 2.0, LITTLE),
    ],
    dram="LPDDR5X-8400, 4 x 16-bit",
    dram_bandwidth_gbs=67.2,
    l3_kb=8192,
    cores=4,
    default_cores=(
        "Assumption - default core configuration 4 threads (the prime core and three of the four performance "
        "cores): ExecuTorch's thread pool uses 4 threads on this SoC's Galaxy S23 ('balanced execution with 4 "
        "cores', extension/threadpool/cpuinfo_utils.cpp), as do TFLite's benchmark_model examples "
        "(--num_threads=4); 'cluster' prices all five performance cores."
    ),
    sources=(
        "Spec - Qualcomm, Snapdragon 8 Gen 2 Mobile Platform product brief (qualcomm.com): Kryo CPU, 1 prime core "
        "(Arm Cortex-X3) up to 3.2 GHz, 4 performance cores (2x Cortex-A715, 2x Cortex-A710) up to 2.8 GHz, "
        "3 efficiency cores (Cortex-A510) up to 2.0 GHz; LPDDR5X up to 4200 MHz.",
        "Spec-derived - DRAM peak: LPDDR5X at 4200 MHz is 8400 MT/s; x 64-bit bus (four 16-bit channels, the usual "
        "flagship configuration; the bus width is not in the product brief) = 67.2 GB/s.",
        "Reported - Qualcomm's Snapdragon 8 Gen 2 launch material as covered by AnandTech (Nov 2022): 8 MiB L3; L2 "
        "1 MiB (X3) and 512 KiB (A715/A710).",
    ),
)

SNAPDRAGON_8_GEN_3 = _phone(
    "snapdragon-8-gen-3",
    "Qualcomm Snapdragon 8 Gen 3 (SM8650)",
    [
        ("prime", "Cortex-X4", 1, 3.3, {"l2_kb": 2048}),
        ("performance", "Cortex-A720", 3, 3.15, {"l2_kb": 512}),
        ("performance", "Cortex-A720", 2, 2.96, {"l2_kb": 512}),
        ("efficiency", "Cortex-A520", 2, 2.27, LITTLE),
    ],
    dram="LPDDR5X-9600, 4 x 16-bit",
    dram_bandwidth_gbs=76.8,
    l3_kb=12288,
    sources=(
        "Spec - Qualcomm, Snapdragon 8 Gen 3 Mobile Platform product brief (qualcomm.com): 1 prime core (Arm "
        "Cortex-X4) up to 3.3 GHz, 5 performance cores (Cortex-A720) up to 3.2 GHz, 2 efficiency cores "
        "(Cortex-A520) up to 2.3 GHz; LPDDR5X up to 4.8 GHz.",
        "Reported - the performance cores run in two clock domains, 3 at 3.15 GHz and 2 at 2.96 GHz, and the "
        "efficiency cores at 2.27 GHz (Android Authority's Snapdragon 8 Gen 3 coverage, Oct 2023; the brief rounds "
        "to 3.2 and 2.3); 12 MiB L3, 2 MiB L2 on the X4, 512 KiB on each A720.",
        "Spec-derived - DRAM peak: 4.8 GHz x 2 (DDR) = 9600 MT/s x 8 bytes (64-bit bus, as on its predecessor) "
        "= 76.8 GB/s.",
    ),
)

EXYNOS_9820 = _phone(
    "exynos-9820",
    "Samsung Exynos 9820",
    [
        ("prime", "Exynos M4", 2, 2.73, {"l2_kb": 512}),
        ("performance", "Cortex-A75", 2, 2.31, {}),
        ("efficiency", "Cortex-A55", 4, 1.95, LITTLE),
    ],
    dram="LPDDR4X-4186, 4 x 16-bit",
    dram_bandwidth_gbs=33.5,
    l3_kb=2048,
    sources=(
        "Spec - Samsung Semiconductor, Exynos 9 Series 9820 product page (semiconductor.samsung.com): tri-cluster "
        "CPU, two custom cores (Exynos M4) at 2.73 GHz, two Cortex-A75 at 2.31 GHz, four Cortex-A55 at 1.95 GHz; "
        "LPDDR4X.",
        "Reported - AnandTech, 'The Samsung Galaxy S10+ Snapdragon & Exynos Review' (2019): LPDDR4X at 2093 MHz "
        "over 4 x 16-bit channels; 2 MiB L3 shared by the CPU (WikiChip, Exynos M4: 2 MiB L3).",
        "Spec-derived - DRAM peak: 2093 MHz x 2 (DDR) x 8 bytes = 33.5 GB/s.",
    ),
)

TENSOR_G3 = _phone(
    "tensor-g3",
    "Google Tensor G3",
    [
        ("prime", "Cortex-X3", 1, 2.91, {}),
        ("performance", "Cortex-A715", 4, 2.37, {}),
        ("efficiency", "Cortex-A510", 4, 1.70, LITTLE),
    ],
    dram="LPDDR5X, 4 x 16-bit",
    dram_bandwidth_gbs=68.3,
    sources=(
        "Spec - Google, Pixel 8 / Pixel 8 Pro tech specs (store.google.com): Google Tensor G3, LPDDR5X RAM.",
        "Reported - Google publishes no CPU details; the shipping clocks, 1x Cortex-X3 at 2.91 GHz, 4x Cortex-A715 "
        "at 2.37 GHz and 4x Cortex-A510 at 1.70 GHz, are from the phones' own CPU tables as reported by "
        "PhoneArena ('Tensor G3 specs leaked', Oct 2023) and Android Authority's Tensor G3 coverage.",
        "Assumption - DRAM: 64-bit bus (four 16-bit channels) at LPDDR5X-8533 = 68.3 GB/s; Google publishes "
        "neither rate nor width. Cache sizes are not published (left empty).",
    ),
)

HELIO_P35 = _phone(
    "helio-p35",
    "MediaTek Helio P35 (MT6765)",
    [
        ("performance", "Cortex-A53", 4, 2.3, {}),
        ("efficiency", "Cortex-A53", 4, 1.8, LITTLE),
    ],
    dram="LPDDR4X-3200, 2 x 16-bit",
    dram_bandwidth_gbs=12.8,
    sources=(
        "Spec - MediaTek, Helio P35 product page (mediatek.com/products/smartphones/mediatek-helio-p35): octa-core "
        "CPU, 4x Arm Cortex-A53 up to 2.3 GHz and 4x Cortex-A53 up to 1.8 GHz; LPDDR4X up to 1600 MHz.",
        "Assumption - DRAM bus 32-bit (2 x 16-bit; MediaTek does not state the width, one 32-bit channel is the norm "
        "in this class): 1600 MHz x 2 (DDR) x 4 bytes = 12.8 GB/s. Cache sizes are not published (left empty).",
        "Assumption - 'cluster' is the 2.3 GHz quad: both quads are Cortex-A53, the slower one plays the "
        "efficiency tier.",
    ),
)

DIMENSITY_9300 = _phone(
    "dimensity-9300",
    "MediaTek Dimensity 9300 (MT6989)",
    [
        ("prime", "Cortex-X4", 1, 3.25, {}),
        ("performance", "Cortex-X4", 3, 2.85, {}),
        ("efficiency", "Cortex-A720", 4, 2.0, LITTLE),
    ],
    dram="LPDDR5T-9600, 4 x 16-bit",
    dram_bandwidth_gbs=76.8,
    l3_kb=8192,
    slc_kb=10240,
    sources=(
        "Spec - MediaTek, Dimensity 9300 product page (mediatek.com/products/smartphones-2/mediatek-dimensity-9300): "
        "all-big-core CPU, 1x Arm Cortex-X4 up to 3.25 GHz, 3x Cortex-X4 up to 2.85 GHz, 4x Cortex-A720 up to "
        "2.0 GHz; LPDDR5T up to 9600 Mbps.",
        "Spec-derived - DRAM peak: 9600 MT/s x 8 bytes (64-bit bus) = 76.8 GB/s.",
        "Reported - MediaTek's launch material (Nov 2023): 8 MiB L3 and 10 MiB system-level cache.",
        "Assumption - 'cluster' is the four Cortex-X4 cores: with no little cores, the 2.0 GHz Cortex-A720 quad is "
        "the lowest tier (half the X4's FP width at 70% of its clock) and plays the efficiency role; '@all' prices "
        "all eight, which is what ExecuTorch's performant-core rule would pick here.",
    ),
)

APPLE_A10 = _phone(
    "apple-a10",
    "Apple A10 Fusion",
    [
        ("performance", "Apple Hurricane", 2, 2.34, {"l2_kb": 3072, "l2_shared": True}),
        ("efficiency", "Apple Zephyr", 2, 1.09, LITTLE),
    ],
    all_clusters_at_once=False,
    dram="LPDDR4-3200, 64-bit",
    dram_bandwidth_gbs=25.6,
    l3_kb=4096,
    sources=(
        "Spec - Apple, 'iPhone 7 and iPhone 7 Plus' press release (apple.com/newsroom, Sept 2016): A10 Fusion, a "
        "four-core CPU with two high-performance and two high-efficiency cores; Apple's performance controller "
        "runs either the high-performance or the high-efficiency pair.",
        "Reported - AnandTech, 'The iPhone 7 and iPhone 7 Plus Review' (2016) and the figures Wikipedia's 'Apple A10' "
        "article collects: high-performance cores up to 2.34 GHz, efficiency cores about 1.09 GHz; the two clusters "
        "never run at once (so '@all' is the performance pair); 3 MiB L2 shared by the big cores, 4 MiB L3; LPDDR4 "
        "on a 64-bit bus.",
        "Spec-derived - DRAM peak: 3200 MT/s x 8 bytes = 25.6 GB/s.",
    ),
)

APPLE_A12 = _phone(
    "apple-a12",
    "Apple A12 Bionic",
    [
        ("performance", "Apple Vortex", 2, 2.5, {"l2_kb": 8192, "l2_shared": True}),
        ("efficiency", "Apple Tempest", 4, 1.59, {"l2_kb": 2048, "l2_shared": True, **LITTLE}),
    ],
    dram="LPDDR4X-4266, 64-bit",
    dram_bandwidth_gbs=34.1,
    slc_kb=8192,
    sources=(
        "Spec - Apple, 'iPhone XS and iPhone XS Max' press release (apple.com/newsroom, Sept 2018): A12 Bionic, "
        "six-core CPU with two performance cores and four efficiency cores.",
        "Reported - AnandTech, 'The iPhone XS & XS Max Review: Unveiling the Silicon Secrets' (2018, "
        "anandtech.com/show/13392): Vortex at 2.5 GHz with one thread loaded (2.38 GHz with two), Tempest at "
        "1.59 GHz; 8 MiB L2 shared by the Vortex pair, 2 MiB by the Tempest quad, 8 MiB system cache; LPDDR4X.",
        "Spec-derived - DRAM peak: LPDDR4X at 4266 MT/s x 8 bytes (64-bit bus) = 34.1 GB/s.",
    ),
)

APPLE_A17_PRO = _phone(
    "apple-a17-pro",
    "Apple A17 Pro",
    [
        ("performance", "Apple A17 Pro P-core", 2, 3.78, {"l2_kb": 16384, "l2_shared": True}),
        ("efficiency", "Apple A17 Pro E-core", 4, 2.11, {"l2_kb": 4096, "l2_shared": True, **LITTLE}),
    ],
    dram="LPDDR5-6400, 64-bit",
    dram_bandwidth_gbs=51.2,
    slc_kb=24576,
    sources=(
        "Spec - Apple, 'iPhone 15 Pro and iPhone 15 Pro Max' press release (apple.com/newsroom, Sept 2023): A17 "
        "Pro, six-core CPU with two performance cores and four efficiency cores.",
        "Reported - Apple publishes no clocks or caches; P-cores up to 3.78 GHz and E-cores up to 2.11 GHz as the "
        "phones report to Geekbench (browser.geekbench.com, iPhone16,1), 16 MiB L2 (P) and 4 MiB (E) and 24 MiB "
        "system cache as Wikipedia's 'Apple A17' article collects them from public die analyses; LPDDR5 (iPhone 15 "
        "Pro teardowns).",
        "Assumption - DRAM: LPDDR5 at 6400 MT/s on a 64-bit bus = 51.2 GB/s (the rate and width are not published).",
    ),
)

PHONES: tuple[MobileCpuParams, ...] = (
    SNAPDRAGON_855,
    SNAPDRAGON_710,
    SNAPDRAGON_8_GEN_2,
    SNAPDRAGON_8_GEN_3,
    EXYNOS_9820,
    TENSOR_G3,
    HELIO_P35,
    DIMENSITY_9300,
    APPLE_A10,
    APPLE_A12,
    APPLE_A17_PRO,
)
