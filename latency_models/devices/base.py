"""The protocol every target device implements, and the record `vitprune devices` lists of it.

A search asks a target device three things: what it is (`DeviceBackend.profile`), whether its table
for a model shape and batch sizes is there already or must be measured first (`ready`), and the table
itself (`table`). A `DeviceKind` is a family of such devices (this machine's measured runtimes, the
analytic presets, the imported tables): it says which names are its own and gives the backend of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from latency_models.profiling import Timing
from latency_models.schema import LatencyTable
from pruning.quantisation.precisions import FLOAT
from pruning.spec import ModelSpec

if TYPE_CHECKING:
    from latency_models.calibration.run import CalibrationPlan

__all__ = [
    "DeviceBackend",
    "DeviceKind",
    "DeviceProfile",
    "DeviceSettings",
    "UnknownDeviceError",
    "coverage",
    "float_only",
]


class UnknownDeviceError(ValueError):
    """A device name that is neither built in nor imported."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str
    description: str
    available: bool
    coverage: str
    """What the table holds now, e.g. 'embed 192 at batch 1, 32' or 'measured on first use'."""
    basis: str = ""
    """What its milliseconds rest on, in a line: measured here and calibrated end to end (with the
    checked error), fitted on N timings (with the fit's error), or specifications only."""


@dataclass(frozen=True)
class DeviceSettings:
    """What every device kind is built with: the profiles directory its tables live under, the
    CPU thread count and timing with which this machine measures its own tables, and how it
    calibrates them end to end (None: not at all)."""

    root: Path
    threads: int
    timing: Timing
    calibration: CalibrationPlan | None = None


class DeviceBackend(Protocol):
    """One target device, by name."""

    name: str

    def profile(self) -> DeviceProfile:
        """What it is: name, kind, description, whether it is available here, what its table covers."""
        ...

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        """Whether `table` answers at once (False: this machine must time entries first)."""
        ...

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        """Its latency table, covering `spec` at `batches`."""
        ...

    def details(self) -> dict[str, Any]:
        """What the service shows of it beyond its profile (an analytic model's parameters, an
        imported table's metadata); empty when there is nothing more."""
        ...

    def priced_as(self, precision: str) -> str | None:
        """The device name whose table prices a model of `precision` (fp32, or one of
        `pruning.quantisation.PRECISIONS`) on this device; None where it has no price for it."""
        ...

    def fully_integer(self, precision: str) -> int | None:
        """How this device computes a quantised model of `precision`, as its int8 price assumes, so that its
        accuracy is simulated so (`pruning.quantisation.quantise(attention=..., stream=...)`): None where
        the attention products and the residual stream stay float (onnxruntime's int8 recipe, and every
        float precision); an int k for a device that computes the model fully in integer: the attention
        products and the patch embedding in int8, GELU's and softmax's inputs on uint8 grids, and the
        residual stream on uint8 grids whose channels scale by up to 2^k (0: one scale per tensor)."""
        ...


class DeviceKind(Protocol):
    """A family of devices, built from the registry's `DeviceSettings`."""

    aliases: Mapping[str, str]
    """Bare names that stand for one of its devices (an analytic model's default preset)."""

    def claims(self, name: str) -> bool:
        """Whether `name` belongs to this kind, existing or not: no other kind (nor an import) may use it."""
        ...

    def listed(self) -> list[DeviceBackend]:
        """Its devices, in the order `vitprune devices` shows them."""
        ...

    def backend(self, name: str) -> DeviceBackend | None:
        """The device `name` (a name it claims); None for the registry's `unknown device` answer,
        or an `UnknownDeviceError` of its own that says what the kind has instead."""
        ...


INT8_PRICED = "host-cpu, mobile-cpu, fpga, their presets and devices fitted to timings in that dtype"
"""The devices with a price for quantised models, for messages that refuse one without."""


def float_only(name: str, precision: str) -> str | None:
    """`priced_as` of a device whose table prices float models only."""
    return name if precision == FLOAT else None


def coverage(table: LatencyTable) -> str:
    """What a table holds, in a line: its embedding widths and batch sizes."""
    dims = sorted({e.embed_dim for e in table.entries})
    batches = ", ".join(str(b) for b in table.device.batch_sizes)
    return f"embed dim {', '.join(map(str, dims))} at batch {batches} ({len(table.entries)} entries)"
