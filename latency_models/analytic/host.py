"""This machine's CPU described as an analytic mobile-CPU device (`MobileCpuParams`), for when what
runs here must be priced by a model rather than by a table timed op by op: its int8 kernels, which
torch does not run (`latency_models.devices.host_int8`), and as a stand-in device to test fitting on
(`bench/device_fit.py`).

Its SIMD width and clock come from /proc/cpuinfo; what the hypervisor hides (FMA ports, DRAM
bandwidth) and the efficiencies are stated assumptions, the default phone preset's, which a fit to
timings moves. Each number's basis is in the parameters' `sources`.
"""

from __future__ import annotations

import platform
from pathlib import Path

from latency_models.analytic.mobile_cpu import Cluster, MobileCpuParams
from latency_models.analytic.phones import SNAPDRAGON_8_GEN_2

__all__ = ["NAME", "cpu_info", "host_params"]

NAME = "mobile-cpu:host"
"""The name the host's parameters carry (and a device fitted from them records as its base)."""


def cpu_info() -> dict:
    """Model name, SIMD flags and the clock of this CPU, from /proc/cpuinfo (Linux)."""
    info = {"model": platform.processor() or platform.machine(), "flags": [], "mhz": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value
        elif key == "flags" and not info["flags"]:
            info["flags"] = value.split()
        elif key == "cpu MHz" and info["mhz"] is None:
            info["mhz"] = float(value)
    return info


def host_params(info: dict, dtype: str = "float32", threads: int = 1) -> MobileCpuParams:
    """This CPU on `threads` threads, as the analytic mobile-CPU model's parameters in `dtype`, each
    number's basis stated."""
    flags = set(info["flags"])
    vnni = bool({"avx512_vnni", "avx_vnni"} & flags)
    if {"avx512f", "fma"} <= flags:
        lanes, simd = 16, "AVX-512F with FMA: 16 fp32 lanes per 512-bit FMA"
    elif {"avx2", "fma"} <= flags:
        lanes, simd = 8, "AVX2 with FMA3: 8 fp32 lanes per 256-bit FMA"
    else:
        lanes, simd = 4, "no AVX2/FMA flag: 4 fp32 lanes per 128-bit SSE multiply-add pair"
    ports = 2
    pipes = ports * lanes // 4  # the model counts 128-bit pipes: a 512-bit FMA port is four of them
    clock = (info["mhz"] or 2000.0) / 1000
    core = Cluster(
        name="host",
        core=info["model"],
        count=threads,
        clock_ghz=clock,
        fma_pipes=pipes,
        int8_pipes=pipes,
        dot_product=vnni,
        i8mm=False,
    )
    base = SNAPDRAGON_8_GEN_2  # the default phone preset
    sources = (
        f"Derived - fp32 FLOP/cycle {core.fp32_flops_per_cycle:g} = {lanes} lanes x 2 (FMA) x {ports} FMA ports, "
        f"from the CPU flags in /proc/cpuinfo ({simd}); given to the model as {pipes} 128-bit pipes.",
        "Assumption - 2 FMA ports per core: Intel's server cores since Skylake-SP (Gold/Platinum) and its "
        "client cores since Haswell have two FMA units (Intel 64 and IA-32 Architectures Optimization Reference "
        "Manual); the exact SKU is hidden here, so the count is assumed. A fit absorbs a wrong factor into "
        "gemm_efficiency.",
        f"Measured - clock {clock:.2f} GHz: 'cpu MHz' in /proc/cpuinfo (under a hypervisor, the nominal clock; "
        "turbo and AVX-512 licence clocks are not visible).",
        "Assumption - 12 GB/s of DRAM bandwidth for one core: a single core's sustained bandwidth on recent "
        "server CPUs is bounded by its outstanding cache-line fills, roughly 10-15 GB/s; the host's memory is "
        "not visible under a hypervisor.",
        f"Assumption - efficiencies, overhead, grain and per-element FLOP counts: those of {base.name}, the "
        "default phone preset (the starting point a user's fit has too).",
        "Derived - int8: VNNI's VPDPBUSD multiplies 4 int8 pairs into each 32-bit lane, as SDOT does, so it "
        "counts as a dot-product instruction (16 int8 MACs per 128-bit pipe)"
        if vnni
        else "Derived - int8: no VNNI flag, so widening multiplies",
    )
    return MobileCpuParams.model_validate(
        {
            **base.model_dump(),
            "name": NAME,
            "soc": f"{info['model']} (this host's CPU as a stand-in device)",
            "clusters": [core.model_dump()],
            "all_clusters_at_once": True,
            "cores": "one" if threads == 1 else threads,
            "dtype": dtype,
            "dram": "not visible under the hypervisor",
            "dram_bandwidth_gbs": 12.0,
            "l3_kb": None,
            "slc_kb": None,
            "sources": sources,
        }
    )
