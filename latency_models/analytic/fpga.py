"""Analytic latency of a ViT accelerator on an FPGA: a tiled GEMM array plus nonlinear units.

The accelerator runs the ops of each table entry one after the other (no fusion between ops,
a conservative choice), in fixed point of `bits` bits (weights and activations):

- Linear layers and the patch-embedding conv are GEMMs with M = batch x tokens rows (the images of
  a batch share each weight tile). An output-stationary array of `pe_rows` x `pe_cols` MACs
  computes a `pe_rows` x `pe_cols` output tile in K cycles, then drains its accumulators (one row
  per cycle over a `pe_cols`-wide output bus: `pe_rows` cycles, not overlapped because there is one
  set of accumulators); the first tile also fills the array's skew (`pe_rows + pe_cols` cycles):

      cycles = ceil(M / pe_rows) * ceil(N / pe_cols) * (K + pe_rows) + pe_rows + pe_cols

- Attention runs per image and head on the same array (QK^T, then PV), with the softmax unit in
  between; one head's N x N probabilities stay on chip.
- LayerNorm (two passes: statistics, normalise), softmax (two passes: max and exp-sum, normalise)
  and GELU (one pass) have their own units of `*_lanes` elements per cycle, each pass paying
  `nonlinear_latency_cycles` of pipeline latency; adds, bias broadcasts and weighted sums use a
  vector unit of `vector_lanes` lanes.
- Token selection runs on the device: top-k by a merge-sort network of `sorter_lanes` comparators
  per cycle (n * ceil(log2 n) comparisons per image), then a streaming pass that marks the kept
  tokens in token order; threshold compaction is two streaming passes (mean, then compare and
  prefix-sum); kept token vectors move over an on-chip datapath of `onchip_bytes_per_cycle`.
- Token merging (ToMe) reuses the same units: the keys are averaged over heads on the vector unit and
  normalised on the LayerNorm unit, the |A| x |B| cosine similarities are a GEMM on the array, the
  best partner of each A token a pass of the vector unit, the ranking a sort of |A| scores on the
  sorter, the size-weighted merge the runtime's one-hot (|B| x r) @ (r x C) product on the array, and
  the surviving tokens move over the on-chip datapath.

Memory: activations live in an on-chip buffer of `activation_buffer_bytes`. A tensor that does not
fit goes to DDR (written and read once by each op touching it); a GEMM whose input does not fit
processes it in chunks that do and streams its weights once per chunk, otherwise once. DDR time is
bytes / (`ddr_bandwidth_gbs` x `ddr_efficiency`); with double buffering an op takes
max(compute, DDR) cycles, plus `layer_overhead_cycles` of control (instruction fetch, DMA set-up).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from latency_models.analytic.mobile_cpu import (
    Fraction,
    PositiveFloat,
    _Frozen,
    merge_counts,
    patch_count,
    select_counts,
)
from latency_models.profiling import composite_parts

__all__ = ["FpgaParams", "fpga_ms"]

ACCUMULATOR = 4  # bias and logits are kept as 32-bit integers


class FpgaParams(_Frozen):
    """A ViT accelerator on an FPGA board (see the module docstring)."""

    name: str = Field(min_length=1)
    """Device name in the table, e.g. "fpga:zcu102"."""
    hardware: str = Field(min_length=1)
    """The board and device, in words."""
    bits: Literal[8, 16]
    """Fixed-point width of weights and activations."""
    clock_mhz: PositiveFloat
    """Accelerator clock, MHz."""
    pe_rows: int = Field(gt=0)
    """GEMM array rows: output rows (tokens) per tile."""
    pe_cols: int = Field(gt=0)
    """GEMM array columns: output features per tile."""
    dsp_budget: int = Field(gt=0)
    """DSP slices on the device (spec)."""
    bram_bytes: int = Field(gt=0)
    """On-chip block RAM, bytes (spec)."""
    activation_buffer_bytes: int = Field(gt=0)
    """Part of the block RAM that holds activations (assumption; the rest holds weight tiles, FIFOs)."""
    ddr_bandwidth_gbs: PositiveFloat
    """Peak DDR bandwidth to the accelerator, GB/s (spec)."""
    ddr_efficiency: Fraction
    """Share of the DDR peak sustained by the accelerator's DMA (assumption)."""
    layernorm_lanes: int = Field(gt=0)
    """LayerNorm unit: elements per cycle (assumption)."""
    softmax_lanes: int = Field(gt=0)
    """Softmax unit: elements per cycle (assumption)."""
    gelu_lanes: int = Field(gt=0)
    """GELU unit: elements per cycle (assumption)."""
    vector_lanes: int = Field(gt=0)
    """Vector unit for adds, bias broadcasts, weighted sums: elements per cycle (assumption)."""
    nonlinear_dsps_per_lane: int = Field(ge=0)
    """DSP slices per lane of the LayerNorm, softmax and GELU units (assumption)."""
    nonlinear_latency_cycles: int = Field(ge=0)
    """Pipeline latency of one pass of a nonlinear or vector unit, cycles (assumption)."""
    sorter_lanes: int = Field(gt=0)
    """Comparators per cycle of the token-selection sorter, built from LUTs (assumption)."""
    onchip_bytes_per_cycle: int = Field(gt=0)
    """On-chip datapath moving kept token vectors, bytes per cycle (assumption)."""
    layer_overhead_cycles: int = Field(ge=0)
    """Control cycles per op: instruction fetch, DMA descriptors, pipeline drain (assumption)."""
    sources: tuple[str, ...] = ()
    """Where each number comes from; assumptions are marked as such."""

    @property
    def macs_per_dsp(self) -> int:
        """A DSP48E2 packs two 8-bit multiplies that share an operand (Xilinx WP486); one at 16 bits."""
        return 2 if self.bits == 8 else 1

    @property
    def dsps_required(self) -> int:
        gemm = math.ceil(self.pe_rows * self.pe_cols / self.macs_per_dsp)
        nonlinear = (self.layernorm_lanes + self.softmax_lanes + self.gelu_lanes) * self.nonlinear_dsps_per_lane
        return gemm + nonlinear + math.ceil(self.vector_lanes / self.macs_per_dsp)

    @property
    def peak_gmacs(self) -> float:
        return self.pe_rows * self.pe_cols * self.clock_mhz / 1e3

    @property
    def element_bytes(self) -> int:
        return self.bits // 8

    @model_validator(mode="after")
    def _fits(self) -> FpgaParams:
        if self.dsps_required > self.dsp_budget:
            raise ValueError(
                f"pe_rows x pe_cols = {self.pe_rows} x {self.pe_cols} MACs at {self.bits} bits plus the nonlinear "
                f"and vector units need {self.dsps_required} DSP slices, more than dsp_budget = {self.dsp_budget}"
            )
        if self.activation_buffer_bytes > self.bram_bytes:
            raise ValueError(
                f"activation_buffer_bytes = {self.activation_buffer_bytes} exceeds bram_bytes = {self.bram_bytes}"
            )
        return self


Op = tuple[float, float]  # (compute cycles, DDR bytes)


def fpga_ms(params: FpgaParams, key: dict) -> float:
    """Milliseconds of the work behind table entry `key` (a dict as `profiling.plan` makes)."""
    op = key["op"]
    if (parts := composite_parts(key)) is not None:
        # The model has no interaction between ops: a chain, a reducing chain or the whole model costs its parts.
        return sum(fpga_ms(params, part) for part in parts)
    builders = {
        "attention": _attention,
        "mlp": _mlp,
        "select": _select,
        "merge": _merge,
        "embed": _embed,
        "head": _head,
    }
    if op not in builders:
        raise ValueError(f"unknown table entry op {op!r}")
    bytes_per_cycle = params.ddr_bandwidth_gbs * 1e9 * params.ddr_efficiency / (params.clock_mhz * 1e6)
    cycles = sum(
        max(compute, ddr / bytes_per_cycle) + params.layer_overhead_cycles for compute, ddr in builders[op](params, key)
    )
    return cycles / (params.clock_mhz * 1e3)


def _spill(params: FpgaParams, nbytes: float) -> float:
    """DDR traffic of a tensor: none while it fits the activation buffer."""
    return nbytes if nbytes > params.activation_buffer_bytes else 0.0


def _matmul_cycles(params: FpgaParams, count: int, m: int, k: int, n: int) -> float:
    """`count` independent (m x k) @ (k x n) products, back to back on the array."""
    if count * m * k * n == 0:
        return 0.0
    R, C = params.pe_rows, params.pe_cols
    return count * math.ceil(m / R) * math.ceil(n / C) * (k + R) + R + C


def _linear(params: FpgaParams, rows: int, k: int, n: int, input_in_ddr: bool = False) -> Op:
    a = params.element_bytes
    in_bytes, out_bytes = rows * k * a, rows * n * a
    weights = k * n * a + n * ACCUMULATOR
    chunks = max(1, math.ceil(in_bytes / params.activation_buffer_bytes))
    ddr = weights * chunks + (in_bytes if input_in_ddr else _spill(params, in_bytes)) + _spill(params, out_bytes)
    return _matmul_cycles(params, 1, rows, k, n), ddr


def _unit(params: FpgaParams, elements: int, lanes: int, passes: int, tensors: list[float], extra: float = 0) -> Op:
    """A streaming unit: `passes` over `elements`; `tensors` are the bytes of what it reads and writes."""
    compute = passes * (math.ceil(elements / lanes) + params.nonlinear_latency_cycles) if elements else 0.0
    return compute, sum(_spill(params, t) for t in tensors) + extra


def _layernorm(params: FpgaParams, elements: int, dim: int) -> Op:
    size = elements * params.element_bytes
    return _unit(params, elements, params.layernorm_lanes, 2, [size, size], extra=2 * dim * ACCUMULATOR)


def _add(params: FpgaParams, elements: int, dim: int = 0) -> Op:
    """Residual add (with a broadcast bias of `dim` values when the branch is empty)."""
    size = elements * params.element_bytes
    return _unit(params, elements, params.vector_lanes, 1, [size, size, size], extra=dim * ACCUMULATOR)


def _attention(params: FpgaParams, key: dict) -> list[Op]:
    B, N, D, h, hd = key["batch"], key["tokens"], key["embed_dim"], key["heads"], key["head_dim"]
    a, rows, inner = params.element_bytes, B * N, h * hd
    if h == 0:  # x + proj(empty): the projection is its bias
        return [_add(params, rows * D, D)]
    softmax = 2 * (math.ceil(N * N / params.softmax_lanes) + params.nonlinear_latency_cycles)
    core = (
        _matmul_cycles(params, B * h, N, hd, N)
        + B * h * softmax
        + _matmul_cycles(params, B * h, N, N, hd)
        + (math.ceil(B * h * N / params.vector_lanes) if key["scored"] else 0)  # class-token row, mean over heads
    )
    probabilities = 2 * B * h * N * N * a if N * N * a > params.activation_buffer_bytes else 0
    ddr = _spill(params, 3 * rows * inner * a) + _spill(params, rows * inner * a) + probabilities
    ddr += B * N if key["masked"] else 0  # one byte per key of the mask
    return [
        _layernorm(params, rows * D, D),
        _linear(params, rows, D, 3 * inner),
        (core, ddr),
        _linear(params, rows, inner, D),
        _add(params, rows * D),
    ]


def _mlp(params: FpgaParams, key: dict) -> list[Op]:
    B, N, D, H = key["batch"], key["tokens"], key["embed_dim"], key["mlp_hidden"]
    rows, a = B * N, params.element_bytes
    ops = [_layernorm(params, rows * D, D)]
    if H == 0:  # fc2 of an empty hidden layer is its bias
        ops.append(_add(params, rows * D, D))
    else:
        hidden = rows * H * a
        gelu = _unit(params, rows * H, params.gelu_lanes, 1, [hidden, hidden])
        ops += [_linear(params, rows, D, H), gelu, _linear(params, rows, H, D), _add(params, rows * D)]
    return ops


def _select(params: FpgaParams, key: dict) -> list[Op]:
    B, D, a = key["batch"], key["embed_dim"], params.element_bytes
    n, keep, package = select_counts(key)
    lanes, latency = params.sorter_lanes, params.nonlinear_latency_cycles
    if key["method"] == "gather":
        comparisons = B * n * max(1, math.ceil(math.log2(max(n, 2))))
        order = (math.ceil(comparisons / lanes) + latency) + (math.ceil(B * n / lanes) + latency)
    else:  # mean of the scores, then compare and prefix-sum: two streaming passes
        order = 2 * (math.ceil(B * n / lanes) + latency)
    in_bytes = B * key["tokens_in"] * D * a
    out_bytes = B * (key["prefix"] + keep + int(package)) * D * a
    ops = [
        (order, 0.0),
        (math.ceil(out_bytes / params.onchip_bytes_per_cycle), _spill(params, in_bytes) + _spill(params, out_bytes)),
    ]
    if package:  # every patch token streams through the MACs, weighted by its score if dropped
        ops.append(_unit(params, B * n * D + B * D, params.vector_lanes, 1, [in_bytes]))
    return ops


def _merge(params: FpgaParams, key: dict) -> list[Op]:
    """ToMe on the accelerator's units (see the module docstring), after the attention that gives the keys."""
    B, D, N, e = key["batch"], key["embed_dim"], key["tokens_in"], params.element_bytes
    h, hd = key["heads"], key["head_dim"]
    n, a, b, r = merge_counts(key)
    lanes, latency = params.sorter_lanes, params.nonlinear_latency_cycles
    keys, metric = B * N * h * hd * e, B * n * hd * e
    similarity = B * a * b * ACCUMULATOR
    ranking = math.ceil(B * a * max(1, math.ceil(math.log2(max(a, 2)))) / lanes) + latency
    ranking += math.ceil(B * a / lanes) + latency  # a streaming pass marks the merged A tokens
    tokens_in, tokens_out = B * N * D * e, B * (N - r) * D * e
    merged = B * r * D * e
    return [
        _unit(params, B * N * h * hd, params.vector_lanes, 1, [keys, B * N * hd * e]),  # keys averaged over heads
        _unit(params, B * n * hd, params.layernorm_lanes, 2, [metric, metric]),  # norms, then unit keys
        (_matmul_cycles(params, B, a, hd, b), _spill(params, similarity)),  # similarity |A| x |B| x d
        _unit(params, B * a * b, params.vector_lanes, 1, [similarity]),  # best partner of each A token
        (ranking, 0.0),
        _unit(params, B * n * D, params.vector_lanes, 1, [tokens_in]),  # tokens weighted by their sizes
        (_matmul_cycles(params, B, b, r, D), _spill(params, merged)),  # one-hot (|B| x r) @ merged A tokens
        _unit(params, B * b * D, params.vector_lanes, 2, [tokens_in]),  # added to B, divided by the new sizes
        (math.ceil(tokens_out / params.onchip_bytes_per_cycle), _spill(params, tokens_in) + _spill(params, tokens_out)),
    ]


def _embed(params: FpgaParams, key: dict) -> list[Op]:
    B, D, T, p, a = key["batch"], key["embed_dim"], key["tokens"], key["patch_size"], params.element_bytes
    P = patch_count(key)
    conv = _linear(params, B * P, 3 * p * p, D, input_in_ddr=True)  # the images arrive in DDR
    position = _unit(params, B * T * D, params.vector_lanes, 1, [B * T * D * a] * 2, extra=T * D * a)
    return [conv, position]


def _head(params: FpgaParams, key: dict) -> list[Op]:
    B, N, D, C = key["batch"], key["tokens"], key["embed_dim"], key["num_classes"]
    logits = _linear(params, B, D, C)
    return [_layernorm(params, B * N * D, D), (logits[0], logits[1] + B * C * ACCUMULATOR)]
