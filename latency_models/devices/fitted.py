"""Devices fitted to a few timings measured on them (`latency_models.fitting`): an analytic preset
with its free parameters fitted, stored as `fitted/<name>.json` in the profiles directory under a
name of the user's choosing, and priced like an analytic preset for any ViT shape and batch size.

Fitted and imported devices share one namespace of user names: a name taken by one is refused to
the other (an import asks every built-in kind, this one included, whether it claims the name; a
fit checks the imported tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from latency_models.analytic import PRESETS, analytic_table
from latency_models.devices.analytic import DEFAULTS, runs_in, stream_shifts
from latency_models.devices.base import DeviceProfile, DeviceSettings, UnknownDeviceError
from latency_models.devices.imported import NAME, ImportedKind
from latency_models.fitting import FittedRecord, TimingRow, fit_device, split_base
from latency_models.predictor import shape_of
from latency_models.schema import LatencyTable
from pruning.quantisation.precisions import PRECISIONS
from pruning.spec import ModelSpec

__all__ = ["FittedDevice", "FittedKind"]


class FittedDevice:
    """One fitted device file: its record, and tables priced with its fitted parameters."""

    def __init__(self, name: str, path: Path, tables: dict[tuple, LatencyTable]) -> None:
        self.name = name
        self.path = path
        self._tables = tables  # shared by the kind's devices, keyed by file version, shape and batches

    def record(self) -> FittedRecord:
        return FittedRecord.load(self.path)

    def profile(self) -> DeviceProfile:
        try:
            record = self.record()
        except ValueError as error:
            return DeviceProfile(self.name, "fitted", f"unreadable: {error}", False, "")
        what = f"{record.configuration} ({record.dtype}) fitted to timings: {record.params().hardware}"
        return DeviceProfile(self.name, "fitted", what, True, "any ViT", basis=record.basis())

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        return True

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        batches = sorted(set(batches))
        key = (self.name, self.path.stat().st_mtime_ns, shape_of(spec), tuple(batches))
        if key not in self._tables:
            record = self.record()
            table = analytic_table(record.params(), [shape_of(spec)], batches)
            s = record.summary
            notes = (
                f"{record.basis()}. Analytic model of {record.configuration} with its free parameters "
                f"({', '.join(record.free)}) fitted to end-to-end timings of dense models on the device "
                f"(the preset's own predictions of them: median error {100 * s['base_median_error']:.1f}%); "
                "the timings, fitted values and each timing's error are under parameters.fit."
            )
            device = table.device.model_copy(
                update={
                    "name": self.name,
                    "kind": "fitted",
                    "runtime": f"{table.device.runtime}, fitted",
                    "dtype": record.dtype,
                    "parameters": {**table.device.parameters, "fit": self._fit(record)},
                    "notes": notes,
                }
            )
            self._tables[key] = table.model_copy(update={"device": device})
        return self._tables[key]

    @staticmethod
    def _fit(record: FittedRecord) -> dict[str, Any]:
        return {
            "base": record.base,
            "cores": record.cores,
            "dtype": record.dtype,
            "free": {name: value.model_dump() for name, value in record.free.items()},
            "timings": [row.model_dump() for row in record.rows],
            "summary": record.summary,
        }

    def priced_as(self, precision: str) -> str | None:
        """Itself for the precisions computed in the dtype its timings were taken in; None for the others."""
        try:
            record = self.record()
        except ValueError:
            return None
        return self.name if runs_in(record.params(), precision) == record.dtype else None

    def fully_integer(self, precision: str) -> int | None:
        """As its base preset computes the model (a phone's or an FPGA's int8: fully integer)."""
        if precision not in PRECISIONS or self.priced_as(precision) is None:
            return None
        return stream_shifts(self.record().params())

    def details(self) -> dict[str, Any]:
        record = self.record()
        return {"parameters": record.parameters, "fit": self._fit(record)}


class FittedKind:
    """The devices under `fitted/`, by file name; it claims a name while its file exists."""

    aliases: Mapping[str, str] = MappingProxyType({})

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.root = settings.root / "fitted"
        self._tables: dict[tuple, LatencyTable] = {}

    def claims(self, name: str) -> bool:
        return bool(NAME.match(name)) and (self.root / f"{name}.json").exists()

    def listed(self) -> list[FittedDevice]:
        return [FittedDevice(path.stem, path, self._tables) for path in sorted(self.root.glob("*.json"))]

    def backend(self, name: str) -> FittedDevice | None:
        return FittedDevice(name, self.root / f"{name}.json", self._tables) if self.claims(name) else None

    def path(self, name: str) -> Path:
        """Where device `name` is stored: a bad name, another kind's name or an imported table's is refused."""
        from latency_models.devices import KINDS  # the kinds beside this one, as the registry asks them

        others = [kind(self.settings) for kind in KINDS if kind is not FittedKind]
        if not NAME.match(name) or any(kind.claims(name) for kind in others):
            raise ValueError(
                f"device name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-' (and not a built-in name)"
            )
        if ImportedKind(self.settings, built_in=lambda _: False).path(name).exists():
            raise ValueError(f"device name {name!r} is an imported table's: remove it or choose another name")
        return self.root / f"{name}.json"

    def fit(self, name: str, base: str, rows: list[TimingRow], *, dtype: str | None = None) -> tuple[FittedRecord, int]:
        """Fit preset `base` (`<model>[:<preset>][@<cores>]`) to `rows` and store it as device `name`
        (an existing fitted device of that name is replaced). Returns the record and how many rows
        were of other core configurations or dtypes, left out."""
        target = self.path(name)  # a bad name is refused before anything is fitted
        preset, cores = split_base(base)
        preset = DEFAULTS.get(preset, preset)
        if preset not in PRESETS:
            raise UnknownDeviceError(
                f"unknown base {base!r}; presets: {', '.join(sorted(PRESETS))} (optionally @cores)"
            )
        record, left_out = fit_device(name, preset, PRESETS[preset], rows, cores=cores, dtype=dtype)
        record.save(target)
        return record, left_out
