"""Analytic latency of a phone CPU running the pruned runtime's fp32 ops: a roofline per op.

Each table entry is broken into the ops the runtime runs for it (`pruning.block`, `pruning.tokens`,
`pruning.merging`, the profiler's kernels): LayerNorm, the Linear layers as GEMMs, attention, GELU,
residual adds, top-k, gather, sort, and token merging's similarity and merge matmuls. Every op costs

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

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from latency_models.profiling import composite_parts

__all__ = ["CoreGroup", "MobileCpuParams", "merge_counts", "mobile_cpu_ms", "patch_count", "select_counts"]

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


def _op_ms(params: MobileCpuParams, parts: list[tuple[str, float]], nbytes: float) -> float:
    """One op: its parts (kind, work) run one after the other; memory overlaps with compute."""
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


def select_counts(key: dict) -> tuple[int, int, bool]:
    """(patch tokens in, patch tokens kept, package) of a select entry, as the profiler's kernel runs it."""
    n = key["tokens_in"] - key["prefix"]
    package = key["package"]
    keep = key["tokens_out"] - key["prefix"] - int(package)
    if keep < 1:  # no room for a kept patch next to the package token: the kernel keeps one, no package
        keep, package = 1, False
    return n, min(keep, n), package


def merge_counts(key: dict) -> tuple[int, int, int, int]:
    """(patch tokens in, tokens of set A, tokens of set B, pairs merged) of a merge entry: the patch
    tokens alternate into A (even positions) and B (odd), and r of the A tokens fold into B."""
    n = key["tokens_in"] - key["prefix"]
    merged = max(0, min(key["tokens_in"] - key["tokens_out"], n // 2))
    return n, (n + 1) // 2, n // 2, merged


def patch_count(key: dict) -> int:
    return (key["image_size"] // key["patch_size"]) ** 2


def mobile_cpu_ms(params: MobileCpuParams, key: dict) -> float:
    """Milliseconds of the work behind table entry `key` (a dict as `profiling.plan` makes)."""
    op = key["op"]
    if op == "attention":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _attention(params, key))
    if op == "mlp":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _mlp(params, key))
    if (parts := composite_parts(key)) is not None:
        # The model has no interaction between ops: a chain, a reducing chain or the whole model costs its parts.
        return sum(mobile_cpu_ms(params, part) for part in parts)
    if op == "select":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _select(key))
    if op == "merge":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _merge(key))
    if op == "embed":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _embed(key))
    if op == "head":
        return sum(_op_ms(params, parts, nbytes) for parts, nbytes in _head(params, key))
    raise ValueError(f"unknown table entry op {op!r}")


Op = tuple[list[tuple[str, float]], float]


def _layernorm(params: MobileCpuParams, rows: int, dim: int) -> Op:
    return [("elementwise", params.layernorm_flops_per_element * rows * dim)], FP32 * (2 * rows * dim + 2 * dim)


def _linear(rows: int, k: int, n: int) -> Op:
    return [("gemm", 2.0 * rows * k * n)], FP32 * (rows * k + k * n + n + rows * n)


def _add(elements: int) -> Op:
    return [("elementwise", float(elements))], FP32 * 3 * elements


def _copy(elements: int) -> Op:
    return [], FP32 * 2 * elements


def _attention(params: MobileCpuParams, key: dict) -> list[Op]:
    B, N, D, h, hd = key["batch"], key["tokens"], key["embed_dim"], key["heads"], key["head_dim"]
    rows, inner = B * N, h * hd
    if h == 0:  # x + proj(empty): the projection is its bias, broadcast
        return [([], 0.0), ([("elementwise", rows * D)], FP32 * (rows * D + D)), _add(rows * D)]
    logits = B * h * N * N
    ops = [_layernorm(params, rows, D), _linear(rows, D, 3 * inner)]
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
    ops += [_copy(out), _linear(rows, inner, D), _add(rows * D)]  # heads back to (B, N, h*hd); proj; residual
    return ops


def _mlp(params: MobileCpuParams, key: dict) -> list[Op]:
    B, N, D, H = key["batch"], key["tokens"], key["embed_dim"], key["mlp_hidden"]
    rows = B * N
    ops = [_layernorm(params, rows, D)]
    if H == 0:  # fc2 of an empty hidden layer is its bias, broadcast
        ops.append(([("elementwise", rows * D)], FP32 * (rows * D + D)))
    else:
        gelu = ([("elementwise", params.gelu_flops_per_element * rows * H)], FP32 * 2 * rows * H)
        ops += [_linear(rows, D, H), gelu, _linear(rows, H, D)]
    ops.append(_add(rows * D))
    return ops


def _select(key: dict) -> list[Op]:
    B, D = key["batch"], key["embed_dim"]
    n, keep, package = select_counts(key)
    log_n, log_k = math.log2(max(n, 2)), math.log2(max(keep, 2))
    ops: list[Op] = []
    if key["method"] == "gather":
        ops += [
            ([("scalar", B * n * log_k)], FP32 * B * (n + 2 * keep)),  # top-k: a heap of k over n scores
            ([("scalar", B * keep * log_k)], 8 * 2 * B * keep),  # indices back in token order
        ]
    else:
        ops += [
            ([("elementwise", B * n)], FP32 * B * n),  # mean score
            ([("elementwise", B * n)], FP32 * B * n + B * n),  # scores >= mean
            ([], B * keep),  # at least `keep` tokens kept
            ([("elementwise", B * n)], 2 * B * n),  # ~mask as int8
            ([("scalar", B * n * log_n)], B * n + 8 * B * n),  # stable argsort of the mask
        ]
    ops.append(_copy(B * keep * D))  # gather the kept token vectors
    if package:
        ops += [
            ([("scalar", B * n)], B * n + 8 * B * keep),  # dropped mask (ones + scatter, or ~keep)
            ([("elementwise", B * n)], FP32 * 2 * B * n),  # scores * dropped
            ([("elementwise", 2.0 * B * n * D)], FP32 * (B * n * D + B * n + B * D)),  # weighted sum
            ([("elementwise", B * n)], FP32 * B * n),  # total weight
            ([("elementwise", B * D)], FP32 * 2 * B * D),  # normalise
        ]
    ops.append(_copy(B * (key["prefix"] + keep + int(package)) * D))  # concatenate prefix, kept, package
    return ops


def _merge(key: dict) -> list[Op]:
    """`pruning.merging.merge_tokens` op for op, after the attention that hands it the keys.

    The cost grows with the tokens in. With more pairs merged the matching is the same, the merge
    matmul grows and fewer tokens are written: compute-bound it costs more, memory-starved a little less.
    """
    B, D, N, h, hd = key["batch"], key["embed_dim"], key["tokens_in"], key["heads"], key["head_dim"]
    n, a, b, r = merge_counts(key)
    keep, out = a - r, N - r  # A tokens left unmerged; tokens after the merge
    return [
        ([("elementwise", B * N * h * hd)], FP32 * (B * N * h * hd + B * N * hd)),  # keys averaged over heads
        ([("elementwise", 2.0 * B * n * hd)], FP32 * (B * n * hd + B * n)),  # their norms
        ([("elementwise", B * n)], FP32 * 2 * B * n),  # clamped away from zero
        ([("elementwise", B * n * hd)], FP32 * (2 * B * n * hd + B * n)),  # unit keys
        ([("attention", 2.0 * B * a * b * hd)], FP32 * (B * n * hd + B * a * b)),  # similarity |A| x |B| x d
        ([("elementwise", B * a * b)], FP32 * (B * a * b + B * a) + 8 * B * a),  # best partner of each A token
        ([("scalar", B * a * math.log2(max(a, 2)))], FP32 * B * a + 8 * 2 * B * a),  # argsort of the best
        ([("scalar", B * keep * math.log2(max(keep, 2)))], 8 * 2 * B * keep),  # unmerged A back in token order
        ([("elementwise", B * a * D)], FP32 * (2 * B * a * D + B * a)),  # A tokens weighted by their sizes
        ([("elementwise", B * b * r)], 8 * B * r + FP32 * B * b * r),  # one-hot |B| x r: merged A -> partner
        _copy(B * r * D),  # gather the merged A tokens
        ([("elementwise", B * b * D)], FP32 * (2 * B * b * D + B * b)),  # B tokens weighted by their sizes
        ([("attention", 2.0 * B * b * r * D)], FP32 * (B * b * r + B * r * D + B * b * D)),  # merge matmul
        _add(B * b * D),
        ([("attention", 2.0 * B * b * r)], FP32 * (B * b * r + 2 * B * r + 2 * B * b)),  # the sizes, alike
        ([("elementwise", B * b * D)], FP32 * (2 * B * b * D + B * b)),  # divided by the new sizes
        _copy(B * keep * D),  # gather the unmerged A tokens
        _copy(B * out * D),  # concatenate prefix, unmerged A and B tokens
        _copy(B * out),  # and their sizes
    ]


def _embed(key: dict) -> list[Op]:
    B, D, T, p = key["batch"], key["embed_dim"], key["tokens"], key["patch_size"]
    P, K = patch_count(key), 3 * p * p
    pixels = B * 3 * key["image_size"] ** 2
    return [
        _copy(max(pixels, B * P * K)),  # im2col: with stride = kernel a permutation of the image
        _linear(B * P, K, D),
        _copy(B * P * D),  # (B, D, P) -> (B, P, D)
        _copy(B * T * D),  # prefix tokens concatenated
        ([("elementwise", B * T * D)], FP32 * (2 * B * T * D + T * D)),  # + position embedding
    ]


def _head(params: MobileCpuParams, key: dict) -> list[Op]:
    B, N, D, C = key["batch"], key["tokens"], key["embed_dim"], key["num_classes"]
    return [_layernorm(params, B * N, D), _linear(B, D, C)]
