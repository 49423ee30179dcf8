"""`host-cpu+int8`: this machine's CPU running quantised models as they are deployed here, with
onnxruntime's int8 kernels on the exported QDQ file.

The host's own table (`host-cpu`) is timed op by op in torch, which has no int8 kernels for these
models. So the int8 device is this CPU described as an analytic mobile-CPU device in int8
(`latency_models.analytic.host`), fitted on first use to onnxruntime timings of a few dense ViTs
(`FIT_MODELS`, random weights, quantised W8A8 and exported as the product exports them) at each
batch size asked for and at the registry's thread count, like a device a user fits to timings of
theirs (`latency_models.fitting`). The fit is cached under `measured/` beside the host's tables,
keyed by the machine, the onnxruntime version and the thread count, and grows by the batches a
search asks for. It prices any ViT shape; `bench/device_fit.py --precision int8` measured how
well on pruned configs it never saw (docs/quantisation.md).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from latency_models.analytic.host import NAME as HOST_BASE
from latency_models.analytic.host import cpu_info, host_params
from latency_models.devices.analytic import DTYPE_MARK
from latency_models.devices.base import DeviceProfile, DeviceSettings
from latency_models.devices.fitted import FittedDevice
from latency_models.fitting import FittedRecord, TimingRow, fit, record_of, resolve_model
from latency_models.profiling import Execution, summarise, time_round
from latency_models.profiling.run import hardware_name
from latency_models.schema import LatencyTable
from pruning.quantisation.precisions import PRECISIONS
from pruning.spec import ModelSpec

__all__ = ["FIT_MODELS", "NAME", "HostInt8", "HostInt8Kind", "time_int8"]

QUANTISED_DTYPE = "int8"
"""What onnxruntime runs every quantised model's layers in here."""
NAME = f"host-cpu{DTYPE_MARK}{QUANTISED_DTYPE}"
FIT_MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "vit_tiny_patch16_384")
"""The dense models timed for the fit: widths 192 and 384, 197 and 577 tokens. Measured on this host,
three such models (one at 384 px) priced pruned configs within 3% (median), where three 224-px
models alone mispriced the other resolution by 20% or more."""


class HostInt8:
    """The fitted int8 device of this CPU at the registry's thread count (see the module docstring)."""

    def __init__(self, settings: DeviceSettings, tables: dict[tuple, LatencyTable]) -> None:
        self.name = NAME
        self.settings = settings
        self._tables = tables

    @property
    def path(self) -> Path:
        import onnxruntime

        machine = f"{hardware_name()}|{os.cpu_count()}|{platform.machine()}|onnxruntime {onnxruntime.__version__}"
        digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
        return self.settings.root / "measured" / f"{NAME}-{digest}-t{self.settings.threads}.json"

    def _record(self) -> FittedRecord | None:
        return FittedRecord.load(self.path) if self.path.exists() else None

    def profile(self) -> DeviceProfile:
        description = f"this machine's CPU running int8 models in onnxruntime, {self.settings.threads} threads"
        record = self._record()
        if record is None:
            return DeviceProfile(NAME, "measured", description, True, "fitted on first use", _BASIS)
        batches = ", ".join(str(b) for b in _batches(record))
        return DeviceProfile(NAME, "measured", description, True, f"any ViT, fitted at batch {batches}", record.basis())

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        record = self._record()
        return record is not None and set(batches) <= set(_batches(record))

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        record = self._record()
        have = _batches(record) if record is not None else []
        if missing := sorted(set(batches) - set(have)):
            rows = [_row(r) for r in record.rows] if record is not None else []
            for batch in missing:
                rows += time_int8(FIT_MODELS, batch, self.settings.threads, self.settings, progress)
            params = host_params(cpu_info(), QUANTISED_DTYPE, self.settings.threads)
            record = record_of(NAME, HOST_BASE, str(params.cores), QUANTISED_DTYPE, fit(params, rows))
            record.save(self.path)
        return FittedDevice(NAME, self.path, self._tables).table(spec, batches, progress)

    def priced_as(self, precision: str) -> str | None:
        """Itself for every quantised precision: a W4A8 file holds its 4-bit codes as int8 and runs the same
        int8 kernels (onnxruntime has no 4-bit-weight, 8-bit-activation kernel), so it takes the same time."""
        return NAME if precision in PRECISIONS else None

    def fully_integer(self, precision: str) -> int | None:
        return None  # the exported QDQ file: onnxruntime keeps the attention products and residual adds float

    def details(self) -> dict[str, Any]:
        record = self._record()
        return FittedDevice(NAME, self.path, self._tables).details() if record is not None else {}


_BASIS = "fitted on first use to onnxruntime int8 timings of dense ViTs measured here"


def _batches(record: FittedRecord) -> list[int]:
    return sorted({row.batch for row in record.rows})


def _row(fitted) -> TimingRow:
    """A stored row back as the timing it was fitted to."""
    shape, depth = resolve_model(fitted.model, fitted.image_size)
    return TimingRow(0, fitted.model, shape, depth, fitted.batch, fitted.ms, fitted.cores, fitted.dtype)


def time_int8(
    models: tuple[str, ...], batch: int, threads: int, settings: DeviceSettings, progress: bool = True
) -> list[TimingRow]:
    """Each dense timm model of `models` (random weights: latency does not depend on them) quantised
    W8A8, exported as QDQ and timed by onnxruntime at `batch` on `threads` threads, the profiler's way:
    passes over all models, one round each, the median over passes of each round's median."""
    import timm

    from pruning.config import PruneConfig
    from pruning.model import describe, prune_model
    from pruning.onnx_session import quantised_onnx_run

    timing, cpu = settings.timing, Execution()
    calls, rows = {}, []
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(models):
            dense = timm.create_model(name, pretrained=False).eval()
            size = dense.pretrained_cfg["input_size"][-1]
            images = torch.randn(batch, 3, size, size, generator=generator)
            pruned = prune_model(dense, PruneConfig.dense(describe(dense, name)), name=name)
            calls[name] = quantised_onnx_run(pruned, images, "int8", Path(folder) / f"{index}.onnx", threads)
            if progress:
                print(f"{NAME}: exported {name} at batch {batch}, timing", file=sys.stderr, flush=True)
        rounds: dict[str, list[list[float]]] = {name: [] for name in calls}
        for _ in range(timing.passes):
            for name, call in calls.items():
                rounds[name].append(time_round(call, cpu, timing))
    cores = "one" if threads == 1 else str(threads)
    for name in models:
        shape, depth = resolve_model(name)
        rows.append(TimingRow(0, name, shape, depth, batch, summarise(rounds[name])[0], cores, QUANTISED_DTYPE))
    return rows


class HostInt8Kind:
    """The one device `host-cpu+int8`."""

    aliases: Mapping[str, str] = MappingProxyType({})

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self._tables: dict[tuple, LatencyTable] = {}

    def claims(self, name: str) -> bool:
        return name == NAME

    def listed(self) -> list[HostInt8]:
        return [HostInt8(self.settings, self._tables)]

    def backend(self, name: str) -> HostInt8:
        return HostInt8(self.settings, self._tables)
