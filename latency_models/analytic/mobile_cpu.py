"""Analytic latency of a phone CPU running the pruned runtime's fp32 ops: a roofline per op.

Each table entry is broken into the ops the runtime runs for it (`pruning.block`, `pruning.tokens`,
the profiler's kernels): LayerNorm, the Linear layers as GEMMs, attention, GELU, residual adds, and
for a token op's entries what its pricing module in `latency_models.profiling.ops` counts (top-k,
gathers, sorts, token merging's similarity and merge matmuls). `MobileCpu.cost` prices one entry;
every op costs

    max(compute time, memory time) + a fixed per-op overhead

compute time = sum over its parts of work / (peak rate of the threads it can use x efficiency of
that kind of work), memory time = bytes read and written / (DRAM bandwidth x bandwidth efficiency).

Kinds of work and their rate per core:

- `gemm` (Linear layers, patch-embedding conv as a GEMM) and `attention` (QK^T and PV, many small
  per-head GEMMs, and merging's per-image similarity and one-hot merge matmuls): fp32 FLOPs at the
  SIMD FMA peak times `gemm_efficiency` / `attention_efficiency`;
- `elementwise` (LayerNorm, GELU, softmax, adds, scaling, masking, reductions): FLOPs counted per
  element (the `*_flops_per_element` parameters) at the SIMD peak times `elementwise_efficiency`,
  because exp/erf polynomials, reductions and shuffles do not keep the FMA pipes busy;
- `scalar` (top-k, sort, index work): comparisons at `scalar_ops_per_cycle` per core.

Threads: the cores of `cores` are filled fastest first. An op of F units of work uses
min(threads, max(1, F / grain)) threads, fractionally, so small ops do not scale to all cores and
the cost stays continuous and non-decreasing in F (a thread pool only pays off above some work
per thread). Memory traffic is counted as weights plus activations read and written once, in
fp32; caches are not modelled separately (the bandwidth efficiency absorbs them).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from latency_models.profiling import composite_parts
from latency_models.profiling.ops import ENTRY_KINDS

__all__ = ["CoreGroup", "MobileCpu", "MobileCpuParams", "patch_count"]

FP32 = 4

Fraction = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CoreGroup(_Frozen):
    """Identical cores that the runtime's threads run on."""

    name: str = Field(min_length=1)
    """Core type, e.g. "Cortex-X3"."""
    count: int = Field(gt=0)
    """Cores of this type used by the runtime (one thread each)."""
    clock_ghz: PositiveFloat
    """Sustained clock under load, GHz (the vendor's maximum clock: thermal throttling is not modelled)."""
    fp32_flops_per_cycle: PositiveFloat
    """Peak fp32 FLOPs per cycle per core: FMA-capable 128-bit SIMD pipes x 4 lanes x 2."""


class MobileCpuParams(_Frozen):
    """A phone CPU running fp32 inference on some of its cores (see the module docstring)."""

    name: str = Field(min_length=1)
    """Device name in the table, e.g. "mobile-cpu:snapdragon-8-gen-2"."""
    hardware: str = Field(min_length=1)
    """The chip and the cores used, in words."""
    cores: tuple[CoreGroup, ...] = Field(min_length=1)
    """The cores the runtime's threads run on; thread count = total count."""
    gemm_efficiency: Fraction
    """Share of the SIMD FMA peak a tuned fp32 GEMM reaches on ViT-sized Linear layers (assumption)."""
    attention_efficiency: Fraction
    """Share of the peak reached by the per-head attention matmuls, K = head_dim or N (assumption)."""
    elementwise_efficiency: Fraction
    """Share of the peak reached by elementwise and normalisation FLOPs (assumption)."""
    scalar_ops_per_cycle: PositiveFloat
    """Comparisons / index operations per cycle per core in top-k and sort (assumption)."""
    dram_bandwidth_gbs: PositiveFloat
    """Peak DRAM bandwidth, GB/s (spec)."""
    bandwidth_efficiency: Fraction
    """Share of the DRAM peak the CPU cluster sustains (assumption)."""
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
    sources: tuple[str, ...] = ()
    """Where each number comes from; assumptions are marked as such."""

    @property
    def threads(self) -> int:
        return sum(group.count for group in self.cores)

    def peak_gflops(self, threads: float | None = None) -> float:
        """Peak fp32 GFLOP/s of the `threads` fastest cores (all of them by default)."""
        return _fill(self, self.threads if threads is None else threads, lambda g: g.fp32_flops_per_cycle)


def _fill(params: MobileCpuParams, threads: float, per_cycle) -> float:
    """Sum of clock x per_cycle over the `threads` fastest cores, the last one counted fractionally.

    Filling fastest first makes rate/threads non-increasing, so work / rate(work / grain) never
    decreases as the work grows."""
    cores = sorted(
        (g for g in params.cores for _ in range(g.count)), key=lambda g: g.clock_ghz * per_cycle(g), reverse=True
    )
    rate, left = 0.0, threads
    for group in cores:
        share = min(1.0, left)
        if share <= 0:
            break
        rate += share * group.clock_ghz * per_cycle(group)
        left -= share
    return rate * 1e9


Op = tuple[list[tuple[str, float]], float]
"""One op: its parts (kind of work, amount) and the bytes it moves."""


def patch_count(key: dict) -> int:
    return (key["image_size"] // key["patch_size"]) ** 2


class MobileCpu:
    """The roofline model of one phone CPU (see the module docstring): `cost(key)` is a table entry's ms.

    A token op's entries are counted in its pricing module, with the primitives here (`copy`, `add`,
    `FP32`); the block halves and the ends are counted here."""

    FP32 = FP32
    """Bytes of an fp32 value."""

    def __init__(self, params: MobileCpuParams) -> None:
        self.params = params

    def device(self) -> dict:
        """The fields of a table's device record that this model sets."""
        return {"runtime": "analytic mobile-cpu model v1", "threads": self.params.threads, "dtype": "float32"}

    def cost(self, key: dict) -> float:
        """Milliseconds of the work behind table entry `key` (a dict as `profiling.plan` makes)."""
        if (parts := composite_parts(key)) is not None:
            # The model has no interaction between ops: a chain, a reducing chain or the whole model costs its parts.
            return sum(self.cost(part) for part in parts)
        return sum(self._op_ms(parts, nbytes) for parts, nbytes in self._ops(key))

    def _ops(self, key: dict) -> list[Op]:
        op = key["op"]
        if op in ENTRY_KINDS:
            return ENTRY_KINDS[op].mobile_cpu(self, key)
        own = {"attention": self._attention, "mlp": self._mlp, "embed": self._embed, "head": self._head}
        if op not in own:
            raise ValueError(f"unknown table entry op {op!r}")
        return own[op](key)

    def _op_ms(self, parts: list[tuple[str, float]], nbytes: float) -> float:
        """One op: its parts (kind, work) run one after the other; memory overlaps with compute."""
        params = self.params
        compute = 0.0
        for kind, work in parts:
            if work <= 0:
                continue
            threads = min(params.threads, max(1.0, work / (params.parallel_grain_mflop * 1e6)))
            if kind == "scalar":
                rate = _fill(params, threads, lambda g: params.scalar_ops_per_cycle)
            else:
                efficiency = {
                    "gemm": params.gemm_efficiency,
                    "attention": params.attention_efficiency,
                    "elementwise": params.elementwise_efficiency,
                }[kind]
                rate = _fill(params, threads, lambda g: g.fp32_flops_per_cycle) * efficiency
            compute += work / rate
        memory = nbytes / (params.dram_bandwidth_gbs * 1e9 * params.bandwidth_efficiency)
        return max(compute, memory) * 1e3 + params.op_overhead_us * 1e-3

    # -- primitives ---------------------------------------------------------------------------------

    def copy(self, elements: int) -> Op:
        """Moving `elements` fp32 values (a gather, a concatenation, a permute)."""
        return [], FP32 * 2 * elements

    def add(self, elements: int) -> Op:
        """An elementwise add of two tensors of `elements` values."""
        return [("elementwise", float(elements))], FP32 * 3 * elements

    def _layernorm(self, rows: int, dim: int) -> Op:
        flops = self.params.layernorm_flops_per_element * rows * dim
        return [("elementwise", flops)], FP32 * (2 * rows * dim + 2 * dim)

    @staticmethod
    def _linear(rows: int, k: int, n: int) -> Op:
        return [("gemm", 2.0 * rows * k * n)], FP32 * (rows * k + k * n + n + rows * n)

    # -- the parts ----------------------------------------------------------------------------------

    def _attention(self, key: dict) -> list[Op]:
        params = self.params
        B, N, D, h, hd = key["batch"], key["tokens"], key["embed_dim"], key["heads"], key["head_dim"]
        rows, inner = B * N, h * hd
        if h == 0:  # x + proj(empty): the projection is its bias, broadcast
            return [([], 0.0), ([("elementwise", rows * D)], FP32 * (rows * D + D)), self.add(rows * D)]
        logits = B * h * N * N
        ops = [self._layernorm(rows, D), self._linear(rows, D, 3 * inner)]
        qkv, out = 3 * rows * inner, rows * inner
        mask = B * N if key["masked"] else 0  # one bool per key
        if key["scored"]:
            ops += [
                ([("elementwise", rows * inner)], FP32 * 2 * rows * inner),  # q * scale
                ([("attention", 2.0 * logits * hd)], FP32 * (2 * rows * inner + logits)),  # q @ k^T
            ]
            if key["masked"]:
                ops.append(([("elementwise", logits)], FP32 * 2 * logits + mask))
            ops += [
                ([("elementwise", params.softmax_flops_per_element * logits)], FP32 * 2 * logits),
                ([("attention", 2.0 * logits * hd)], FP32 * (logits + rows * inner + out)),  # probs @ v
                ([("elementwise", B * h * N)], FP32 * (B * h * N + B * N)),  # class-token row, mean over heads
            ]
        else:  # fused SDPA: the probabilities never leave the kernel
            softmax = (params.softmax_flops_per_element + (1 if key["masked"] else 0)) * logits
            parts = [("attention", 4.0 * logits * hd), ("elementwise", softmax)]
            ops.append((parts, FP32 * (qkv + out) + mask))
        # heads back to (B, N, h*hd); proj; residual
        ops += [self.copy(out), self._linear(rows, inner, D), self.add(rows * D)]
        return ops

    def _mlp(self, key: dict) -> list[Op]:
        B, N, D, H = key["batch"], key["tokens"], key["embed_dim"], key["mlp_hidden"]
        rows = B * N
        ops = [self._layernorm(rows, D)]
        if H == 0:  # fc2 of an empty hidden layer is its bias, broadcast
            ops.append(([("elementwise", rows * D)], FP32 * (rows * D + D)))
        else:
            gelu = ([("elementwise", self.params.gelu_flops_per_element * rows * H)], FP32 * 2 * rows * H)
            ops += [self._linear(rows, D, H), gelu, self._linear(rows, H, D)]
        ops.append(self.add(rows * D))
        return ops

    def _embed(self, key: dict) -> list[Op]:
        B, D, T, p = key["batch"], key["embed_dim"], key["tokens"], key["patch_size"]
        P, K = patch_count(key), 3 * p * p
        pixels = B * 3 * key["image_size"] ** 2
        return [
            self.copy(max(pixels, B * P * K)),  # im2col: with stride = kernel a permutation of the image
            self._linear(B * P, K, D),
            self.copy(B * P * D),  # (B, D, P) -> (B, P, D)
            self.copy(B * T * D),  # prefix tokens concatenated
            ([("elementwise", B * T * D)], FP32 * (2 * B * T * D + T * D)),  # + position embedding
        ]

    def _head(self, key: dict) -> list[Op]:
        B, N, D, C = key["batch"], key["tokens"], key["embed_dim"], key["num_classes"]
        return [self._layernorm(B * N, D), self._linear(B, D, C)]
