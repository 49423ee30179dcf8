"""Analytic latency of a phone CPU running the pruned runtime's ops in fp32 or int8: a roofline per op.

A phone's CPU is described whole (`MobileCpuParams.clusters`: every cluster of the SoC with its
core type, count, clock, SIMD pipes, dot-product support and caches, plus its DRAM), and a *core
configuration* picks the cores the runtime's threads run on (`MobileCpuParams.on_cores`):

- `"one"`: one thread on one core of the fastest cluster;
- `"cluster"`: every performance core (all clusters not marked `efficiency`; see docs/devices.md);
- `"all"`: every core the SoC can run at once;
- an int n: n threads, placed on the fastest cores first.

Each table entry is broken into the ops the runtime runs for it (`pruning.block`, `pruning.tokens`,
the profiler's kernels): LayerNorm, the Linear layers as GEMMs, attention, GELU, residual adds, and
for a token op's entries what its pricing module in `latency_models.profiling.ops` counts. Every op
costs

    max(compute time, memory time) + a fixed per-op overhead

compute time = sum over its parts of work / (rate of the threads it uses x efficiency of that kind
of work), memory time = bytes read and written / (DRAM bandwidth x bandwidth efficiency).

Kinds of work and their rate per core:

- `gemm` (Linear layers, patch-embedding conv) and `attention` (QK^T and PV): in fp32, FLOPs at the
  core's SIMD FMA peak; in int8, operations (2 per multiply-accumulate) at the core's int8 peak
  (`Cluster.int8_macs_per_cycle`: SDOT, SMMLA or widening multiplies), times `gemm_efficiency` /
  `attention_efficiency` (and `int8_kernel_efficiency` where the int8 peak is SDOT's or SMMLA's);
- `elementwise` (LayerNorm, GELU, softmax, adds, (de)quantisation, masking, reductions): float FLOPs
  counted per element at the SIMD FMA peak times `elementwise_efficiency`;
- `scalar` (top-k, sort, index work): comparisons at `scalar_ops_per_cycle` per core.

int8 is static quantisation as XNNPACK and TFLite run it: weights and activations are int8 in
memory (biases int32); the GEMMs and the attention matmuls multiply int8 and requantise their int32
results; LayerNorm, softmax and GELU run in float between a dequantise and a quantise
(`quantize_flops_per_element` each way); residual adds are quantised adds. Token ops compute their
scores, similarities and weights in fp32 as the pruning code does, and move int8 token vectors.
`w4a8` is the same with 4-bit weights (XNNPACK's qc4w: unpacked to int8 inside the GEMM micro-kernel, so
the GEMMs run at the int8 rate; the unpacking is not priced), whose bytes halve.

Threads: an op of F units of work uses t = min(threads, max(1, F / grain)) threads, fractionally (a
thread pool only pays off above some work per thread), placed on the performance cores fastest first,
then on the efficiency cores. Its work is split evenly, F / t per thread (the last, fractional thread
a fractional share). The performance threads pool their shares: the thread pool's work stealing
(pthreadpool, under XNNPACK) balances them, so together they take (their shares) / (sum of their
rates). An efficiency thread works through its own share at its own rate, and the op ends when the
slowest share is done:

    time = max( (F / t) x n_perf / sum(perf rates),  max over efficiency threads of (F / t) x share / rate )

so a thread on a little core holds up every op split over it (observed on big.LITTLE phones: more
threads than performance cores run slower; docs/devices.md). On performance cores alone this is F
over the summed rates of the fastest t cores. Cost is continuous and non-decreasing in F. Memory
traffic is weights plus activations read and written once; caches are recorded but not modelled
(the bandwidth efficiency absorbs them).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from latency_models.profiling import composite_parts
from latency_models.profiling.ops import ENTRY_KINDS

__all__ = ["CORE_WORDS", "DTYPES", "Cluster", "MobileCpu", "MobileCpuParams", "patch_count"]

FP32 = 4
INT8 = 1
INT32 = 4

CORE_WORDS = ("one", "cluster", "all")
"""Named core configurations; an int (a thread count) is the fourth kind."""
DTYPES = ("float32", "int8", "w4a8")

WIDENING_MACS_PER_128_BIT = 16 / 3
"""int8 multiply-accumulates per cycle of a 128-bit pipe without SDOT: SMULL + SMLAL2 give 16 products
in 16-bit lanes, SADALP adds them pairwise into int32 accumulators, three instructions per 16 MACs
(the non-dot-product kernels of Ruy and XNNPACK)."""

Fraction = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
CoreConfig = Literal["one", "cluster", "all"] | Annotated[int, Field(gt=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cluster(_Frozen):
    """Identical cores of one clock domain of the SoC."""

    name: str = Field(min_length=1)
    """The vendor's name for the tier, e.g. "prime", "performance", "efficiency"."""
    core: str = Field(min_length=1)
    """Core type, e.g. "Cortex-A76"."""
    count: int = Field(gt=0)
    clock_ghz: PositiveFloat
    """Maximum clock, GHz (thermal throttling and load-dependent clocks are not modelled)."""
    fma_pipes: int = Field(gt=0)
    """FP/ASIMD pipes that issue a vector FMLA every cycle."""
    pipe_bits: Literal[64, 128] = 128
    """Width of each pipe: 128, or 64 where a 128-bit (Q-form) op takes two pipe-cycles (A53, A55)."""
    int8_pipes: int = Field(gt=0)
    """Pipes that issue the int8 multiply instructions (SDOT / SMMLA, or SMULL / SMLAL without them)."""
    dot_product: bool
    """Armv8.2 SDOT/UDOT: 16 int8 multiply-accumulates per 128-bit instruction."""
    i8mm: bool
    """Armv8.6 SMMLA/UMMLA: 32 int8 multiply-accumulates per 128-bit instruction."""
    l1d_kb: int | None = Field(default=None, gt=0)
    """L1 data cache per core, KiB (None: not published)."""
    l2_kb: int | None = Field(default=None, gt=0)
    """L2 cache, KiB: per core, or per cluster if `l2_shared` (None: not published)."""
    l2_shared: bool = False
    efficiency: bool = False
    """An efficiency (little) tier: left out of the "cluster" configuration."""

    @property
    def fp32_flops_per_cycle(self) -> float:
        """Peak fp32 FLOPs per cycle: pipes x (pipe bits / 32) lanes x 2 (an FMA is two FLOPs)."""
        return self.fma_pipes * self.pipe_bits / 32 * 2

    @property
    def int8_macs_per_cycle(self) -> float:
        """Peak int8 multiply-accumulates per cycle: SMMLA 32, SDOT 16, widening 16/3 per 128-bit pipe."""
        per_pipe = 32.0 if self.i8mm else 16.0 if self.dot_product else WIDENING_MACS_PER_128_BIT
        return self.int8_pipes * self.pipe_bits / 128 * per_pipe

    def describe(self, count: int | None = None) -> str:
        return f"{self.count if count is None else count}x {self.core} @{self.clock_ghz:g} GHz"


class MobileCpuParams(_Frozen):
    """A phone SoC's CPU, the cores and dtype a run uses, and the model's parameters (module docstring)."""

    name: str = Field(min_length=1)
    """Device name, e.g. "mobile-cpu:snapdragon-855"; `on_cores` appends "@<cores>"."""
    soc: str = Field(min_length=1)
    """The chip, in words, e.g. "Qualcomm Snapdragon 855 (SM8150)"."""
    clusters: tuple[Cluster, ...] = Field(min_length=1)
    """Every CPU cluster of the SoC."""
    all_clusters_at_once: bool = True
    """False where the SoC runs one cluster at a time (Apple A10: the big or the little pair)."""
    cores: CoreConfig
    """The core configuration the runtime's threads run on (the preset's default; see `on_cores`)."""
    dtype: Literal["float32", "int8", "w4a8"] = "float32"
    dram: str = Field(min_length=1)
    """Memory type and bus, e.g. "LPDDR4X-4266, 4 x 16-bit"."""
    dram_bandwidth_gbs: PositiveFloat
    """Peak DRAM bandwidth, GB/s (spec or spec-derived)."""
    l3_kb: int | None = Field(default=None, ge=0)
    """Shared CPU L3 (DSU) cache, KiB (0: none; None: not published)."""
    slc_kb: int | None = Field(default=None, ge=0)
    """System-level cache shared with the rest of the SoC, KiB (0: none; None: not published)."""
    gemm_efficiency: Fraction
    """Share of the SIMD peak a tuned GEMM reaches on ViT-sized Linear layers (assumption)."""
    attention_efficiency: Fraction
    """Share of the peak reached by the per-head attention matmuls, K = head_dim or N (assumption)."""
    elementwise_efficiency: Fraction
    """Share of the fp32 peak reached by elementwise and normalisation FLOPs (assumption)."""
    scalar_ops_per_cycle: PositiveFloat
    """Comparisons / index operations per cycle per core in top-k and sort (assumption)."""
    bandwidth_efficiency: Fraction
    """Share of the DRAM peak the CPU sustains (assumption)."""
    op_overhead_us: NonNegativeFloat
    """Fixed cost per op: dispatch plus waking and joining the thread pool (assumption)."""
    parallel_grain_mflop: PositiveFloat
    """Work (MFLOP, or M comparisons) below which an op gains nothing from another thread (assumption)."""
    layernorm_flops_per_element: PositiveFloat
    """FLOPs per element of LayerNorm: mean, centre, square, accumulate, scale, shift (count)."""
    gelu_flops_per_element: PositiveFloat
    """FLOPs per element of GELU: erf by a vectorised rational/polynomial approximation (count)."""
    softmax_flops_per_element: PositiveFloat
    """FLOPs per element of softmax: max, exp polynomial, sum, divide (count)."""
    int8_kernel_efficiency: Fraction = 0.7
    """Share of the fp32 kernels' efficiency that SDOT/SMMLA int8 kernels keep of their own peak: their
    operands take more loads per multiply-accumulate, and zero-point sums and requantisation take
    instructions (assumption). Widening kernels count their extra instructions in their peak."""
    quantize_flops_per_element: PositiveFloat = 3.0
    """Float operations per element to quantise or to dequantise: widen/convert, scale, round and
    saturate (count)."""
    sources: tuple[str, ...] = ()
    """Where each number comes from; assumptions are marked as such."""

    @model_validator(mode="after")
    def _check(self) -> MobileCpuParams:
        if all(c.efficiency for c in self.clusters):
            raise ValueError("clusters: at least one cluster must be a performance (not efficiency) cluster")
        self.thread_cores()  # the core configuration fits this SoC
        return self

    # -- core configurations ------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """The preset's name without a core configuration."""
        return self.name.split("@", 1)[0]

    def ranked(self) -> list[Cluster]:
        """The clusters in the order threads are placed: performance before efficiency, each fastest first
        (fp32 peak, then clock)."""
        return sorted(
            self.clusters,
            key=lambda c: (not c.efficiency, c.clock_ghz * c.fp32_flops_per_cycle, c.clock_ghz),
            reverse=True,
        )

    def usable(self) -> list[Cluster]:
        """The clusters that can run at once, fastest first."""
        ranked = self.ranked()
        return ranked if self.all_clusters_at_once else [c for c in ranked if not c.efficiency]

    def thread_cores(self, cores: CoreConfig | None = None) -> list[Cluster]:
        """The cluster of each thread under configuration `cores` (default: this one's), in placement
        order (`ranked`)."""
        cores = self.cores if cores is None else cores
        usable = [c for c in self.usable() for _ in range(c.count)]
        if cores == "one":
            return usable[:1]
        if cores == "cluster":
            return [c for c in usable if not c.efficiency]
        if cores == "all":
            return usable
        if isinstance(cores, int) and not isinstance(cores, bool) and 1 <= cores <= len(usable):
            return usable[:cores]
        raise ValueError(f"core configuration {cores!r} for {self.base}: {self.valid_cores()}")

    def valid_cores(self) -> str:
        n = sum(c.count for c in self.usable())
        return f"use one, cluster, all or a thread count from 1 to {n}"

    @property
    def threads(self) -> int:
        return len(self.thread_cores())

    def on_cores(self, cores: str | int) -> MobileCpuParams:
        """The same SoC run on core configuration `cores` ("one", "cluster", "all", or a thread count,
        also as digits), named `<preset>@<cores>`. ValueError if the SoC has no such configuration."""
        if isinstance(cores, str) and cores.strip().isdigit():
            cores = int(cores)
        if isinstance(cores, str):
            cores = cores.strip().lower()
        if not (cores in CORE_WORDS or (isinstance(cores, int) and not isinstance(cores, bool))):
            raise ValueError(f"core configuration {cores!r} for {self.base}: {self.valid_cores()}")
        self.thread_cores(cores)
        return self.model_copy(update={"cores": cores, "name": f"{self.base}@{cores}"})

    def with_dtype(self, dtype: str) -> MobileCpuParams:
        """The same SoC and cores running `dtype` ("float32", "int8" or "w4a8"); the name is kept (a table
        records its dtype)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} for {self.base}: use {', '.join(DTYPES)}")
        return self.model_copy(update={"dtype": dtype})

    def describe_cores(self) -> str:
        """The threads and where they run, e.g. "4 threads: 1x Cortex-A76 @2.84 GHz + 3x Cortex-A76 @2.42 GHz"."""
        groups: list[tuple[Cluster, int]] = []
        for cluster in self.thread_cores():
            if groups and groups[-1][0] is cluster:
                groups[-1] = (cluster, groups[-1][1] + 1)
            else:
                groups.append((cluster, 1))
        n = self.threads
        return f"{n} thread{'s' if n > 1 else ''}: " + " + ".join(c.describe(k) for c, k in groups)

    @property
    def hardware(self) -> str:
        """The chip, the dtype and the cores used, in words."""
        return f"{self.soc}, {self.dtype} on {self.describe_cores()}"

    def peak_gops(self, threads: float | None = None, kind: str = "gemm") -> float:
        """Peak rate (GFLOP/s, or int8 GOP/s for gemm/attention in int8) of an op of `kind` split over
        `threads` of the configured cores (all by default), before any efficiency."""
        cores = self.thread_cores()
        rates = [_peak(self, c, kind) for c in cores]
        little = [c.efficiency for c in cores]
        return _split_rate(rates, little, len(cores) if threads is None else threads) / 1e9


def _peak(params: MobileCpuParams, cluster: Cluster, kind: str) -> float:
    """Work per second of one core on `kind` at its peak (no efficiency)."""
    if kind == "scalar":
        return cluster.clock_ghz * 1e9 * params.scalar_ops_per_cycle
    if kind in ("gemm", "attention") and params.dtype != "float32":
        return cluster.clock_ghz * 1e9 * 2 * cluster.int8_macs_per_cycle
    return cluster.clock_ghz * 1e9 * cluster.fp32_flops_per_cycle


def _split_rate(rates: list[float], little: list[bool], threads: float) -> float:
    """Work per second of an op split evenly over `threads` (fractional) of the cores with `rates`, in
    the order threads are placed; `little` marks efficiency cores. The performance threads pool their
    shares; each efficiency thread does its own; the op ends when the slowest share does (module
    docstring)."""
    threads = min(max(threads, 1.0), len(rates))
    whole = math.floor(threads)
    shares = [1.0] * whole + ([threads - whole] if threads > whole else [])
    used = list(zip(shares, rates[: len(shares)], little[: len(shares)], strict=True))
    pooled_share = sum(share for share, _, slow in used if not slow)
    pooled_rate = sum(share * rate for share, rate, slow in used if not slow)
    seconds = pooled_share / pooled_rate if pooled_share else 0.0
    for share, rate, slow in used:
        if slow:
            seconds = max(seconds, share / rate)
    return threads / seconds


Op = tuple[list[tuple[str, float]], float]
"""One op: its parts (kind of work, amount) and the bytes it moves."""

_FLOAT_KIND = {"gemm": "float_gemm", "attention": "float_attention"}
"""A token op's matmuls run in fp32 whatever the model's dtype (the pruning code computes them so)."""


def patch_count(key: dict) -> int:
    return (key["image_size"] // key["patch_size"]) ** 2


class MobileCpu:
    """The roofline model of one phone CPU (see the module docstring): `cost(key)` is a table entry's ms.

    A token op's entries are counted in its pricing module, with the primitives here (`copy`, `add`,
    `FP32`); the block halves and the ends are counted here."""

    FP32 = FP32
    """Bytes of an fp32 value (a token op's scores, similarities and weights are fp32 in either dtype)."""

    def __init__(self, params: MobileCpuParams) -> None:
        self.params = params
        self.int8 = params.dtype != "float32"
        self.act = INT8 if self.int8 else FP32
        """Bytes of an activation or weight value."""
        self.weight = INT8 / 2 if params.dtype == "w4a8" else self.act
        """Bytes of a Linear layer's weight."""
        self.q = params.quantize_flops_per_element if self.int8 else 0.0
        """FLOPs per element to quantise or dequantise (0 in fp32)."""
        self._cores = params.thread_cores()
        self._little = [c.efficiency for c in self._cores]
        self._rates: dict[str, list[float]] = {}

    def device(self) -> dict:
        """The fields of a table's device record that this model sets."""
        return {"runtime": "analytic mobile-cpu model v2", "threads": self.params.threads, "dtype": self.params.dtype}

    def cost(self, key: dict) -> float:
        """Milliseconds of the work behind table entry `key` (a dict as `profiling.plan` makes)."""
        if (parts := composite_parts(key)) is not None:
            # The model has no interaction between ops: a chain, a reducing chain or the whole model costs its parts.
            return sum(self.cost(part) for part in parts)
        return sum(self._op_ms(parts, nbytes) for parts, nbytes in self._ops(key))

    def _ops(self, key: dict) -> list[Op]:
        op = key["op"]
        if op in ENTRY_KINDS:
            ops = ENTRY_KINDS[op].mobile_cpu(self, key)
            return [([(_FLOAT_KIND.get(kind, kind), work) for kind, work in parts], nbytes) for parts, nbytes in ops]
        own = {"attention": self._attention, "mlp": self._mlp, "embed": self._embed, "head": self._head}
        if op not in own:
            raise ValueError(f"unknown table entry op {op!r}")
        return own[op](key)

    def _rates_of(self, kind: str) -> list[float]:
        """Each thread's work per second on `kind`, efficiency included, in thread order."""
        if kind not in self._rates:
            p = self.params
            peak_kind = {"float_gemm": "gemm", "float_attention": "attention"}.get(kind, kind)
            float_peak = kind in _FLOAT_KIND.values() or not self.int8
            efficiency = {
                "gemm": p.gemm_efficiency,
                "attention": p.attention_efficiency,
                "elementwise": p.elementwise_efficiency,
                "scalar": 1.0,
            }[peak_kind]
            rates = []
            for core in self._cores:
                if peak_kind in ("gemm", "attention") and float_peak:
                    rate = core.clock_ghz * 1e9 * core.fp32_flops_per_cycle * efficiency
                else:
                    rate = _peak(p, core, peak_kind) * efficiency
                    if peak_kind in ("gemm", "attention") and (core.dot_product or core.i8mm):
                        rate *= p.int8_kernel_efficiency
                rates.append(rate)
            self._rates[kind] = rates
        return self._rates[kind]

    def _op_ms(self, parts: list[tuple[str, float]], nbytes: float) -> float:
        """One op: its parts (kind, work) run one after the other; memory overlaps with compute."""
        params = self.params
        compute = 0.0
        for kind, work in parts:
            if work <= 0:
                continue
            threads = min(len(self._cores), max(1.0, work / (params.parallel_grain_mflop * 1e6)))
            compute += work / _split_rate(self._rates_of(kind), self._little, threads)
        memory = nbytes / (params.dram_bandwidth_gbs * 1e9 * params.bandwidth_efficiency)
        return max(compute, memory) * 1e3 + params.op_overhead_us * 1e-3

    # -- primitives ---------------------------------------------------------------------------------

    def copy(self, elements: int) -> Op:
        """Moving `elements` activation values (a gather, a concatenation, a permute): int8 or fp32."""
        return [], self.act * 2 * elements

    def add(self, elements: int) -> Op:
        """An elementwise add of two activation tensors of `elements` values (quantised in int8)."""
        return [("elementwise", (1 + 3 * self.q) * elements)], self.act * 3 * elements

    def _float_op(self, inputs: float, outputs: float, flops: float, extra_bytes: float = 0.0) -> Op:
        """A float op over activations: in int8 it dequantises `inputs` and quantises `outputs`."""
        return [("elementwise", flops + self.q * (inputs + outputs))], self.act * (inputs + outputs) + extra_bytes

    def _layernorm(self, rows: int, dim: int) -> Op:
        flops = self.params.layernorm_flops_per_element * rows * dim
        return self._float_op(rows * dim, rows * dim, flops, FP32 * 2 * dim)

    def _linear(self, rows: int, k: int, n: int) -> Op:
        """A Linear layer as a GEMM; in int8 with an int32 bias and its outputs requantised."""
        gemm = ("gemm", 2.0 * rows * k * n)
        if self.int8:
            moved = INT8 * (rows * k + rows * n) + self.weight * k * n + INT32 * n
            return [gemm, ("elementwise", self.q * rows * n)], moved
        return [gemm], FP32 * (rows * k + k * n + n + rows * n)

    # -- the parts ----------------------------------------------------------------------------------

    def _attention(self, key: dict) -> list[Op]:
        params, a, q = self.params, self.act, self.q
        B, N, D, h, hd = key["batch"], key["tokens"], key["embed_dim"], key["heads"], key["head_dim"]
        rows, inner = B * N, h * hd
        if h == 0:  # x + proj(empty): the projection is its bias, broadcast
            return [([], 0.0), self._float_op(0, rows * D, rows * D, FP32 * D), self.add(rows * D)]
        logits = B * h * N * N
        ops = [self._layernorm(rows, D), self._linear(rows, D, 3 * inner)]
        qkv, out = 3 * rows * inner, rows * inner
        mask = B * N if key["masked"] else 0  # one bool per key
        if key["scored"]:
            ops += [
                self._float_op(rows * inner, rows * inner, rows * inner),  # q * scale
                # q @ k^T; in int8 the int32 logits are requantised
                ([("attention", 2.0 * logits * hd), ("elementwise", q * logits)], a * (2 * rows * inner + logits)),
            ]
            if key["masked"]:
                ops.append(self._float_op(logits, logits, logits, mask))
            ops += [
                self._float_op(logits, logits, params.softmax_flops_per_element * logits),
                ([("attention", 2.0 * logits * hd), ("elementwise", q * out)], a * (logits + rows * inner + out)),
                # the class-token row of the probabilities, mean over heads: fp32 scores for the token op
                ([("elementwise", (1 + q) * B * h * N)], a * B * h * N + FP32 * B * N),
            ]
        else:  # fused SDPA: the probabilities never leave the kernel (in int8: logits dequantised, probs quantised)
            softmax = (params.softmax_flops_per_element + (1 if key["masked"] else 0) + 2 * q) * logits
            parts = [("attention", 4.0 * logits * hd), ("elementwise", softmax + q * out)]
            ops.append((parts, a * (qkv + out) + mask))
        # heads back to (B, N, h*hd); proj; residual
        ops += [self.copy(out), self._linear(rows, inner, D), self.add(rows * D)]
        return ops

    def _mlp(self, key: dict) -> list[Op]:
        B, N, D, H = key["batch"], key["tokens"], key["embed_dim"], key["mlp_hidden"]
        rows = B * N
        ops = [self._layernorm(rows, D)]
        if H == 0:  # fc2 of an empty hidden layer is its bias, broadcast
            ops.append(self._float_op(0, rows * D, rows * D, FP32 * D))
        else:
            gelu = self._float_op(rows * H, rows * H, self.params.gelu_flops_per_element * rows * H)
            ops += [self._linear(rows, D, H), gelu, self._linear(rows, H, D)]
        ops.append(self.add(rows * D))
        return ops

    def _embed(self, key: dict) -> list[Op]:
        B, D, T, p = key["batch"], key["embed_dim"], key["tokens"], key["patch_size"]
        P, K = patch_count(key), 3 * p * p
        pixels = B * 3 * key["image_size"] ** 2
        quantise = [([("elementwise", self.q * pixels)], (FP32 + INT8) * pixels)] if self.int8 else []
        return [
            *quantise,  # the float image quantised on entry (int8)
            self.copy(max(pixels, B * P * K)),  # im2col: with stride = kernel a permutation of the image
            self._linear(B * P, K, D),
            self.copy(B * P * D),  # (B, D, P) -> (B, P, D)
            self.copy(B * T * D),  # prefix tokens concatenated
            # + position embedding (a quantised add in int8)
            ([("elementwise", (1 + 3 * self.q) * B * T * D)], self.act * (2 * B * T * D + T * D)),
        ]

    def _head(self, key: dict) -> list[Op]:
        B, N, D, C = key["batch"], key["tokens"], key["embed_dim"], key["num_classes"]
        ops = [self._layernorm(B * N, D), self._linear(B, D, C)]
        if self.int8:  # the logits dequantised on exit
            ops.append(([("elementwise", self.q * B * C)], (INT8 + FP32) * B * C))
        return ops
