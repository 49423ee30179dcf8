"""Devices we cannot time: the analytic presets of `latency_models.analytic`, named `<model>:<preset>`
(e.g. `fpga:zcu102`); a bare model name (`fpga`) stands for its default preset. A phone preset also
runs on a named core configuration, `mobile-cpu:<soc>@<cores>` with cores one | cluster | all | a
thread count (`MobileCpuParams.on_cores`); without `@` it is the preset's default configuration.
A name ending in `+<dtype>` prices the model computed in that dtype: a phone's `+int8` or `+w4a8` (a
model quantised to W8A8 or W4A8, `MobileCpuParams.with_dtype`), e.g. `mobile-cpu+int8` or
`mobile-cpu:snapdragon-855@all+int8`, without it float32; a board's `+int16`, `+int8` or `+w4a8` (the same
DSPs built for those words, `FpgaParams.with_dtype`), without it the preset's own (int8 for `fpga:zcu102`).
A search prices each precision it tries in its dtype (`AnalyticDevice.priced_as`).
Their tables are computed, for any ViT shape, and kept in memory for the registry's lifetime.

A new analytic model and its presets live in `latency_models.analytic` (its `PRESETS` lists them
here); its bare name's default preset goes into `DEFAULTS`.
"""

from __future__ import annotations

from typing import Any

from latency_models.analytic import PRESETS, FpgaParams, MobileCpuParams, analytic_table
from latency_models.devices.base import DeviceProfile, DeviceSettings, UnknownDeviceError
from latency_models.predictor import shape_of
from latency_models.schema import LatencyTable
from pruning.quantisation.precisions import FLOAT, PRECISIONS
from pruning.spec import ModelSpec

__all__ = ["BASIS", "DEFAULTS", "STREAM_SHIFTS", "AnalyticDevice", "AnalyticKind", "runs_in", "stream_shifts"]

DTYPE_MARK = "+"
"""Between a phone's name and the dtype it runs (`+int8`)."""

FLOAT_DTYPES = {MobileCpuParams: "float32", FpgaParams: "int16"}
"""What a device runs a float model in: an FPGA has no float units; 16-bit fixed point stands in."""

DEFAULTS = {"mobile-cpu": "mobile-cpu:snapdragon-8-gen-2", "fpga": "fpga:zcu102"}
"""A bare analytic model name names its default preset."""

BASIS = "specifications only (analytic model, not fitted to timings)"


STREAM_SHIFTS = {MobileCpuParams: 0, FpgaParams: 3}
"""How far a fully integer device scales its residual stream's channels apart (`DeviceBackend.fully_integer`):
a phone's int8 runtime has one scale per tensor; the FPGA up to 2^3, FQ-ViT's Power-of-Two Factor."""


def stream_shifts(params: MobileCpuParams | FpgaParams) -> int:
    return STREAM_SHIFTS[type(params)]


def runs_in(params: MobileCpuParams | FpgaParams, precision: str) -> str | None:
    """The dtype a device of `params` computes a model of `precision` in (None: an unknown precision)."""
    if precision == FLOAT:
        return FLOAT_DTYPES[type(params)]
    return PRECISIONS[precision].dtype if precision in PRECISIONS else None


class AnalyticDevice:
    """One preset (a phone's on one core configuration): a table priced by its analytic model, for any
    ViT shape and batch sizes."""

    def __init__(self, name: str, params: Any, tables: dict[tuple, LatencyTable]) -> None:
        self.name = name
        self.params = params
        self._tables = tables  # shared by the kind's devices, keyed by device name, shape and batches

    def profile(self) -> DeviceProfile:
        model = self.name.split(":", 1)[0]
        description = f"analytic {model} model, {self.params.hardware}"
        if isinstance(self.params, MobileCpuParams) and "@" not in self.name:
            description += f" (default @{self.params.cores}; also @one, @cluster, @all or @<threads>"
            description += "; +int8 for int8, +w4a8 for 4-bit weights)" if DTYPE_MARK not in self.name else ")"
        elif isinstance(self.params, FpgaParams) and DTYPE_MARK not in self.name:
            description += f" ({self.params.dtype}; +int16, +int8 or +w4a8 for a design built for those words)"
        return DeviceProfile(self.name, "analytic", description, True, "any ViT", BASIS)

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        return True

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        key = (self.name, shape_of(spec), tuple(sorted(set(batches))))
        if key not in self._tables:
            self._tables[key] = analytic_table(self.params, [shape_of(spec)], sorted(set(batches)))
        return self._tables[key]

    def details(self) -> dict[str, Any]:
        return {"parameters": self.params.model_dump(mode="json")}

    def priced_as(self, precision: str) -> str | None:
        """The same preset and cores in the dtype that runs `precision`: int8 for a W8A8 model, w4a8 for W4A8;
        for a float one, a phone's float32, an FPGA board's 16-bit fixed point (its float stand-in)."""
        dtype = runs_in(self.params, precision)
        if dtype is None:
            return None
        base = self.name.partition(DTYPE_MARK)[0]
        return base if dtype == PRESETS[base.partition("@")[0]].dtype else base + DTYPE_MARK + dtype

    def fully_integer(self, precision: str) -> int | None:
        """A phone's int8 model is full int8 (XNNPACK's and TFLite's: int8 attention matmuls, quantised
        residual adds, one scale per tensor); an FPGA computes everything on its integer units, its stream
        scaled per channel as FQ-ViT's Power-of-Two Factor does."""
        return stream_shifts(self.params) if precision in PRECISIONS and self.priced_as(precision) else None


class AnalyticKind:
    """Every name with a ':' and every bare model name of `DEFAULTS` (with or without '@<cores>'); the
    presets are listed by name, a phone's at its default core configuration."""

    aliases = DEFAULTS

    def __init__(self, settings: DeviceSettings) -> None:
        self._tables: dict[tuple, LatencyTable] = {}

    def claims(self, name: str) -> bool:
        return ":" in name or name.partition(DTYPE_MARK)[0].partition("@")[0] in self.aliases

    def listed(self) -> list[AnalyticDevice]:
        return [AnalyticDevice(name, params, self._tables) for name, params in sorted(PRESETS.items())]

    def backend(self, name: str) -> AnalyticDevice:
        name, mark, dtype = name.partition(DTYPE_MARK)
        preset, at, cores = name.partition("@")
        preset = self.aliases.get(preset, preset)
        name = preset + at + cores
        if preset not in PRESETS:
            raise UnknownDeviceError(f"unknown analytic device {name!r}; presets: {', '.join(sorted(PRESETS))}")
        params = PRESETS[preset]
        if at and not isinstance(params, MobileCpuParams):
            raise UnknownDeviceError(f"{preset} has no core configurations ('@'): use {preset}")
        try:
            if at:
                params = params.on_cores(cores)
                name = params.name
            if mark:
                params = params.with_dtype(dtype)
        except ValueError as error:
            raise UnknownDeviceError(f"unknown device {name + mark + dtype!r}: {error}") from None
        return AnalyticDevice(name + mark + dtype, params, self._tables)
