"""Analytic latency of a ViT accelerator on an FPGA: a tiled GEMM array plus nonlinear units.

The accelerator runs the ops of each table entry one after the other (no fusion between ops,
a conservative choice), in fixed point of `bits` bits (activations; weights too, unless `weight_bits` says
fewer, W4A8):

- Linear layers and the patch-embedding conv are GEMMs with M = batch x tokens rows (the images of
  a batch share each weight tile). An output-stationary array of `pe_rows` x `pe_cols` MACs
  computes a `pe_rows` x `pe_cols` output tile in K cycles, then drains its accumulators (one row
  per cycle over a `pe_cols`-wide output bus: `pe_rows` cycles, not overlapped because there is one
  set of accumulators); the first tile also fills the array's skew (`pe_rows + pe_cols` cycles):

      cycles = (ceil(M / pe_rows) * ceil(N / pe_cols) * (K + pe_rows) + pe_rows + pe_cols) / array_efficiency

  (`array_efficiency` is 1, the ideal schedule, unless fitted to a board's timings.)

- Attention runs per image and head on the same array (QK^T, then PV), with the softmax unit in
  between; one head's N x N probabilities stay on chip.
- LayerNorm (two passes: statistics, normalise), softmax (two passes: max and exp-sum, normalise)
  and GELU (one pass) have their own units of `*_lanes` elements per cycle, each pass paying
  `nonlinear_latency_cycles` of pipeline latency; adds, bias broadcasts and weighted sums use a
  vector unit of `vector_lanes` lanes.
- Token ops run on the device, on the same units plus a sorter of `sorter_lanes` comparators per
  cycle and an on-chip datapath of `onchip_bytes_per_cycle` that moves kept token vectors; how
  each op uses them is in its pricing module in `latency_models.profiling.ops` (its `fpga` costs).

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

from latency_models.analytic.mobile_cpu import Fraction, PositiveFloat, _Frozen, patch_count
from latency_models.profiling import composite_parts
from latency_models.profiling.ops import ENTRY_KINDS

__all__ = ["DTYPES", "Fpga", "FpgaParams"]

ACCUMULATOR = 4  # bias and logits are kept as 32-bit integers

DTYPES = {"int8": (8, 8), "int16": (16, 16), "w4a8": (8, 4)}
"""The fixed-point words a board's design can be built for (`FpgaParams.with_dtype`): dtype -> (activation bits,
weight bits)."""


class FpgaParams(_Frozen):
    """A ViT accelerator on an FPGA board (see the module docstring)."""

    name: str = Field(min_length=1)
    """Device name in the table, e.g. "fpga:zcu102"."""
    hardware: str = Field(min_length=1)
    """The board and device, in words."""
    bits: Literal[8, 16]
    """Fixed-point width of activations, and of weights unless `weight_bits` is set."""
    weight_bits: Literal[4] | None = None
    """4: weights of 4 bits with 8-bit activations (W4A8). The array packs as many MACs per DSP as at 8 bits
    (two weights sharing one activation), so only the weights' DDR traffic and buffers halve."""
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
    array_efficiency: Fraction = 1.0
    """Share of the GEMM array's cycles that do useful work. 1 is the ideal tiled schedule of the
    module docstring; a board's measured timings can show less (stalls on weight tiles, control
    between tiles), which a fit to its timing report finds (`latency_models.fitting`)."""
    sources: tuple[str, ...] = ()
    """Where each number comes from; assumptions are marked as such."""

    @property
    def macs_per_dsp(self) -> int:
        return _macs_per_dsp(self.bits)

    @property
    def dtype(self) -> str:
        return "w4a8" if self.weight_bits == 4 else f"int{self.bits}"

    @property
    def weight_bytes(self) -> float:
        """Bytes of one weight in DDR and the weight buffers."""
        return (self.weight_bits or self.bits) / 8

    def with_dtype(self, dtype: str) -> FpgaParams:
        """The same design built for `dtype` words ("int8", "int16" or "w4a8") from the same DSP slices: the
        GEMM array keeps its DSPs and rows, so its columns follow the MACs a DSP packs at that width (twice as
        many at int8 as at int16; at W4A8 as at int8); the buffers and DDR move words of the new size. The
        name is kept (a table records its dtype)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} for {self.name}: use {', '.join(DTYPES)}")
        if dtype == self.dtype:
            return self
        bits, weight_bits = DTYPES[dtype]
        pe_cols = self.pe_cols * _macs_per_dsp(bits) // self.macs_per_dsp
        hardware = f"{self.hardware}; built for {dtype} words instead: a {self.pe_rows} x {pe_cols} GEMM array"
        changes = {"bits": bits, "weight_bits": weight_bits if weight_bits != bits else None}
        return type(self).model_validate(self.model_dump() | changes | {"pe_cols": pe_cols, "hardware": hardware})

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


def _macs_per_dsp(bits: int) -> int:
    """A DSP48E2 packs two 8-bit multiplies that share an operand (Xilinx WP486); one at 16 bits. Two 4-bit
    weights times one 8-bit activation pack the same two (27 x 18 bits leave no room for a third with its
    guard bits); four need 4-bit activations too (Xilinx WP521)."""
    return 2 if bits == 8 else 1


Op = tuple[float, float]  # (compute cycles, DDR bytes)


class Fpga:
    """The accelerator model of one FPGA board (see the module docstring): `cost(key)` is a table entry's ms.

    A token op's entries are counted in its pricing module, with the primitives here (`unit`,
    `matmul_cycles`, `spill`, `ACCUMULATOR`) and `params`; the block halves and the ends are counted here."""

    ACCUMULATOR = ACCUMULATOR

    def __init__(self, params: FpgaParams) -> None:
        self.params = params

    def device(self) -> dict:
        """The fields of a table's device record that this model sets."""
        return {"runtime": "analytic fpga model v1", "threads": None, "dtype": self.params.dtype}

    def cost(self, key: dict) -> float:
        """Milliseconds of the work behind table entry `key` (a dict as `profiling.plan` makes)."""
        params = self.params
        if (parts := composite_parts(key)) is not None:
            # The model has no interaction between ops: a chain, a reducing chain or the whole model costs its parts.
            return sum(self.cost(part) for part in parts)
        ops = self._ops(key)
        bytes_per_cycle = params.ddr_bandwidth_gbs * 1e9 * params.ddr_efficiency / (params.clock_mhz * 1e6)
        cycles = sum(max(compute, ddr / bytes_per_cycle) + params.layer_overhead_cycles for compute, ddr in ops)
        return cycles / (params.clock_mhz * 1e3)

    def _ops(self, key: dict) -> list[Op]:
        op = key["op"]
        if op in ENTRY_KINDS:
            return ENTRY_KINDS[op].fpga(self, key)
        own = {"attention": self._attention, "mlp": self._mlp, "embed": self._embed, "head": self._head}
        if op not in own:
            raise ValueError(f"unknown table entry op {op!r}")
        return own[op](key)

    # -- primitives ---------------------------------------------------------------------------------

    def spill(self, nbytes: float) -> float:
        """DDR traffic of a tensor: none while it fits the activation buffer."""
        return nbytes if nbytes > self.params.activation_buffer_bytes else 0.0

    def matmul_cycles(self, count: int, m: int, k: int, n: int) -> float:
        """`count` independent (m x k) @ (k x n) products, back to back on the array."""
        if count * m * k * n == 0:
            return 0.0
        R, C = self.params.pe_rows, self.params.pe_cols
        return (count * math.ceil(m / R) * math.ceil(n / C) * (k + R) + R + C) / self.params.array_efficiency

    def unit(self, elements: int, lanes: int, passes: int, tensors: list[float], extra: float = 0) -> Op:
        """A streaming unit: `passes` over `elements`; `tensors` are the bytes of what it reads and writes."""
        compute = passes * (math.ceil(elements / lanes) + self.params.nonlinear_latency_cycles) if elements else 0.0
        return compute, sum(self.spill(t) for t in tensors) + extra

    def _linear(self, rows: int, k: int, n: int, input_in_ddr: bool = False) -> Op:
        params, a = self.params, self.params.element_bytes
        in_bytes, out_bytes = rows * k * a, rows * n * a
        weights = k * n * params.weight_bytes + n * ACCUMULATOR
        chunks = max(1, math.ceil(in_bytes / params.activation_buffer_bytes))
        ddr = weights * chunks + (in_bytes if input_in_ddr else self.spill(in_bytes)) + self.spill(out_bytes)
        return self.matmul_cycles(1, rows, k, n), ddr

    def _layernorm(self, elements: int, dim: int) -> Op:
        size = elements * self.params.element_bytes
        return self.unit(elements, self.params.layernorm_lanes, 2, [size, size], extra=2 * dim * ACCUMULATOR)

    def _add(self, elements: int, dim: int = 0) -> Op:
        """Residual add (with a broadcast bias of `dim` values when the branch is empty)."""
        size = elements * self.params.element_bytes
        return self.unit(elements, self.params.vector_lanes, 1, [size, size, size], extra=dim * ACCUMULATOR)

    # -- the parts ----------------------------------------------------------------------------------

    def _attention(self, key: dict) -> list[Op]:
        params = self.params
        B, N, D, h, hd = key["batch"], key["tokens"], key["embed_dim"], key["heads"], key["head_dim"]
        a, rows, inner = params.element_bytes, B * N, h * hd
        if h == 0:  # x + proj(empty): the projection is its bias
            return [self._add(rows * D, D)]
        softmax = 2 * (math.ceil(N * N / params.softmax_lanes) + params.nonlinear_latency_cycles)
        core = (
            self.matmul_cycles(B * h, N, hd, N)
            + B * h * softmax
            + self.matmul_cycles(B * h, N, N, hd)
            + (math.ceil(B * h * N / params.vector_lanes) if key["scored"] else 0)  # class-token row, mean over heads
        )
        probabilities = 2 * B * h * N * N * a if N * N * a > params.activation_buffer_bytes else 0
        ddr = self.spill(3 * rows * inner * a) + self.spill(rows * inner * a) + probabilities
        ddr += B * N if key["masked"] else 0  # one byte per key of the mask
        return [
            self._layernorm(rows * D, D),
            self._linear(rows, D, 3 * inner),
            (core, ddr),
            self._linear(rows, inner, D),
            self._add(rows * D),
        ]

    def _mlp(self, key: dict) -> list[Op]:
        B, N, D, H = key["batch"], key["tokens"], key["embed_dim"], key["mlp_hidden"]
        rows, a = B * N, self.params.element_bytes
        ops = [self._layernorm(rows * D, D)]
        if H == 0:  # fc2 of an empty hidden layer is its bias
            ops.append(self._add(rows * D, D))
        else:
            hidden = rows * H * a
            gelu = self.unit(rows * H, self.params.gelu_lanes, 1, [hidden, hidden])
            ops += [self._linear(rows, D, H), gelu, self._linear(rows, H, D), self._add(rows * D)]
        return ops

    def _embed(self, key: dict) -> list[Op]:
        B, D, T, p, a = key["batch"], key["embed_dim"], key["tokens"], key["patch_size"], self.params.element_bytes
        P = patch_count(key)
        conv = self._linear(B * P, 3 * p * p, D, input_in_ddr=True)  # the images arrive in DDR
        position = self.unit(B * T * D, self.params.vector_lanes, 1, [B * T * D * a] * 2, extra=T * D * a)
        return [conv, position]

    def _head(self, key: dict) -> list[Op]:
        B, N, D, C = key["batch"], key["tokens"], key["embed_dim"], key["num_classes"]
        logits = self._linear(B, D, C)
        return [self._layernorm(B * N * D, D), (logits[0], logits[1] + B * C * ACCUMULATOR)]
