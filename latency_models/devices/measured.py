"""Devices of this machine that torch runs on: timed on first use for each model shape and batch size,
and cached in the profiles directory under `measured/`.

The cache file is keyed by the machine (CPU model, core count, architecture, torch version, the
allocator when it is not the system's, the GPU's name for `cuda`) and, for the CPU, the thread count,
so a table is only ever reused where it was measured. A cached table lacking entries that the grid now
plans gets just those timed and added (`complete_table`).

A new runtime of this machine (another accelerator torch can drive) is one `MeasuredDevice` subclass
here, added to `MEASURED`.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from latency_models.calibration.model import calibration_for
from latency_models.calibration.run import calibratable, calibrate, dense_vit
from latency_models.devices.base import DeviceProfile, DeviceSettings, UnknownDeviceError, coverage, float_only
from latency_models.devices.completion import complete_table, to_time
from latency_models.devices.host_int8 import NAME as HOST_INT8
from latency_models.predictor import shape_of
from latency_models.profiling import Execution, allocator, plan
from latency_models.profiling.run import hardware_name
from latency_models.schema import LatencyTable
from pruning.quantisation.precisions import FLOAT, PRECISIONS
from pruning.spec import ModelSpec

__all__ = ["MEASURED", "Cuda", "CudaEagerFp32", "HostCpu", "MeasuredDevice", "MeasuredKind", "measured_device"]


class MeasuredDevice:
    """A device of this machine, measured with torch into a cached table that grows as it is used."""

    execution = Execution()
    """Where and how the profiler runs its kernels and the calibration its models."""

    def __init__(self, name: str, settings: DeviceSettings) -> None:
        self.name = name
        self.settings = settings

    @property
    def threads(self) -> int | None:
        """The CPU threads it is timed with, part of its cache name (None: not the CPU's to set)."""
        return None

    def available(self) -> bool:
        return True

    def description(self) -> str:
        return f"this machine's {self.name}"

    def gpu(self) -> str:
        """The accelerator's name, part of the machine its cache is keyed by ('' for none)."""
        return ""

    @property
    def path(self) -> Path:
        """The cache file: one per machine, runtime and thread count."""
        machine = f"{hardware_name()}|{self.gpu()}|{os.cpu_count()}|{platform.machine()}|torch {torch.__version__}"
        if (malloc := allocator()) != "system":  # tables from before allocators were told apart keep their names
            machine += f"|{malloc}"
        digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
        suffix = f"-t{self.threads}" if self.threads else ""
        return self.settings.root / "measured" / f"{self.name}-{digest}{suffix}.json"

    def unavailable(self) -> UnknownDeviceError:
        return UnknownDeviceError(f"device {self.name!r}: not available on this machine")

    # -- DeviceBackend ----------------------------------------------------------------------------

    def profile(self) -> DeviceProfile:
        available = self.available()
        path = self.path if available else None
        if path and path.exists():
            table = LatencyTable.load(path)
            return DeviceProfile(self.name, "measured", self.description(), available, coverage(table), basis(table))
        basis_text = "measured here on first use, then calibrated end to end" if self.calibrates else "measured here"
        return DeviceProfile(self.name, "measured", self.description(), available, "measured on first use", basis_text)

    @property
    def calibrates(self) -> bool:
        """Whether its tables are calibrated end to end (with a calibration plan)."""
        return self.settings.calibration is not None

    def _uncalibrated(self, table: LatencyTable, spec: ModelSpec, batches: list[int]) -> list[int]:
        if not self.calibrates or not calibratable(spec):
            return []
        return [b for b in sorted(set(batches)) if calibration_for(table, spec, b) is None]

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        if not self.available():
            return True  # `table` answers at once: with the reason it cannot measure here
        path = self.path
        if not path.exists():
            return False
        table = LatencyTable.load(path)
        return not to_time(table.keys(), plan(shape_of(spec), sorted(set(batches)))) and not self._uncalibrated(
            table, spec, batches
        )

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        if not self.available():
            raise self.unavailable()
        table = complete_table(
            self.path,
            plan(shape_of(spec), sorted(set(batches))),
            name=self.name,
            execution=self.execution,
            threads=self.threads,
            timing=self.settings.timing,
            progress=progress,
        )
        missing = self._uncalibrated(table, spec, batches)
        if missing:
            dense = dense_vit(spec)
            for batch in missing:
                table = calibrate(
                    table, dense, batch=batch, plan=self.settings.calibration, threads=self.threads,
                    progress=_progress(f"calibrating {spec.name} at batch {batch}") if progress else None,
                )  # fmt: skip
                table.save(self.path)
        return table

    def priced_as(self, precision: str) -> str | None:
        return float_only(self.name, precision)

    def fully_integer(self, precision: str) -> int | None:
        return None  # quantised models on this CPU run as onnxruntime runs them (`host_int8`)

    def details(self) -> dict[str, Any]:
        return {}


class HostCpu(MeasuredDevice):
    """This machine's CPU, at the registry's thread count (a table per thread count)."""

    @property
    def threads(self) -> int:
        return self.settings.threads

    def description(self) -> str:
        return f"this machine's CPU, {self.threads} threads"

    def priced_as(self, precision: str) -> str | None:
        """Itself for float models; for quantised ones the CPU's onnxruntime int8 device (`host_int8`)."""
        return self.name if precision == FLOAT else HOST_INT8 if precision in PRECISIONS else None


class Cuda(MeasuredDevice):
    """This machine's GPU, when torch sees one, as models are deployed on it: bf16, each forward one
    replayed CUDA graph (launch costs gone; eagerly, a small ViT is bound by kernel launches)."""

    execution = Execution("cuda", "bfloat16", "cuda_graphs")

    def available(self) -> bool:
        return torch.cuda.is_available()

    def description(self) -> str:
        return f"this machine's GPU ({self.execution.dtype}, {self.execution.mode.replace('_', ' ')})"

    def gpu(self) -> str:
        return torch.cuda.get_device_name()

    def unavailable(self) -> UnknownDeviceError:
        return UnknownDeviceError(f"device {self.name!r}: torch sees no CUDA GPU on this machine")


class CudaEagerFp32(Cuda):
    """This machine's GPU running float32 eagerly, as a model runs before it is optimised for deployment."""

    execution = Execution("cuda", "float32", "eager")


MEASURED: dict[str, type[MeasuredDevice]] = {"host-cpu": HostCpu, "cuda": Cuda, "cuda-fp32": CudaEagerFp32}
"""The measured devices by name, in the order they are listed."""


def measured_device(name: str, settings: DeviceSettings) -> MeasuredDevice:
    """The measured device `name` (any other name: the plain cache naming, with no threads or GPU)."""
    return MEASURED.get(name, MeasuredDevice)(name, settings)


class MeasuredKind:
    """The devices of this machine: `host-cpu`, and `cuda` (listed, and available when torch sees a GPU)."""

    aliases: Mapping[str, str] = MappingProxyType({})

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings

    def claims(self, name: str) -> bool:
        return name in MEASURED

    def listed(self) -> list[MeasuredDevice]:
        return [device(name, self.settings) for name, device in MEASURED.items()]

    def backend(self, name: str) -> MeasuredDevice:
        return MEASURED[name](name, self.settings)


def basis(table: LatencyTable) -> str:
    """What a measured table's milliseconds rest on, with its calibrations' checked errors."""
    checked = [c for c in table.calibrations if c.check is not None]
    if not checked:
        return "measured here, not calibrated end to end"
    parts = [
        f"batch {c.batch}, {c.tokens} tokens x {c.embed_dim}: {100 * c.check.within_10pct:.0f}% of "
        f"{c.check.configs} fresh configs within +-10%, bias {100 * c.check.bias:+.1f}%"
        for c in checked
    ]
    return "measured here, calibrated end to end (" + "; ".join(parts) + ")"


def _progress(title: str):
    """A progress callback for a calibration's two stages (fit, check), on stderr."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def tick(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{title}: {stage}", unit="model", leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return tick
