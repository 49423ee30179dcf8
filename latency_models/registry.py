"""Device profiles by name: where a search gets the latency table of its target device.

- `host-cpu`: this machine's CPU, measured on first use for each model shape and batch size,
  calibrated end to end on real pruned models (`latency_models.calibration`) and cached, keyed by
  the machine (CPU model, core count, torch version) and the thread count. A cached
  table lacking entries that the grid now plans gets just those timed, at the table's machine speed,
  and added on its next use (`complete_table`; composites compared with their parts only come with
  them, see `to_time`).
- `cuda`: this machine's GPU, the same way, when torch sees one.
- `mobile-cpu:*`, `fpga:*`: the analytic presets (`latency_models.analytic`); they rank configs.
- any other name: a table imported with `vitprune lut import` (e.g. measured on a user's device
  with `python -m latency_models.profiling`).

Each kind of device is a module of `latency_models.devices` behind one protocol (`DeviceBackend`);
a new kind goes there (see its docstring). This registry only asks the kinds which one owns a name.

Tables live in the profiles directory: `$VITPRUNE_PROFILES_DIR`, else `~/.cache/vitprune/profiles`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latency_models.calibration.run import CalibrationPlan
from latency_models.devices import KINDS, DeviceBackend, DeviceProfile, DeviceSettings, ImportedKind, UnknownDeviceError
from latency_models.devices.completion import complete_table, to_time
from latency_models.devices.measured import measured_device
from latency_models.predictor import LatencyPredictor
from latency_models.profiling import Timing
from latency_models.schema import LatencyTable
from pruning.spec import ModelSpec

__all__ = ["DeviceProfile", "Registry", "UnknownDeviceError", "complete_table", "default_profiles_dir", "to_time"]


DEFAULT_PLAN = CalibrationPlan()
"""Measured tables are calibrated end to end on first use for each model shape and batch size."""


def default_profiles_dir() -> Path:
    configured = os.environ.get("VITPRUNE_PROFILES_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vitprune" / "profiles"


class Registry:
    """Named device profiles over one profiles directory."""

    def __init__(
        self,
        root: Path | None = None,
        threads: int | None = None,
        timing: Timing | None = None,
        calibration: CalibrationPlan | None = DEFAULT_PLAN,
    ) -> None:
        self.root = Path(root) if root is not None else default_profiles_dir()
        self.threads = threads or torch.get_num_threads()
        self.timing = timing or Timing()
        self.settings = DeviceSettings(self.root, self.threads, self.timing, calibration)
        built_in = [kind(self.settings) for kind in KINDS]
        self._imported = ImportedKind(self.settings, built_in=lambda name: any(k.claims(name) for k in built_in))
        self.kinds = (*built_in, self._imported)

    # -- naming ---------------------------------------------------------------------------------

    def backend(self, device: str) -> DeviceBackend:
        """The device called `device`: of the first kind that claims the name (imported tables last)."""
        kind = next(k for k in self.kinds if k.claims(device))
        found = kind.backend(device)
        if found is None:
            names = ", ".join(d.name for d in self.devices())
            raise UnknownDeviceError(f"unknown device {device!r}; known devices: {names} (see `vitprune devices`)")
        return found

    def aliases(self) -> dict[str, str]:
        """Bare names that stand for a device, e.g. `fpga` for its default preset."""
        return {alias: name for kind in self.kinds for alias, name in kind.aliases.items()}

    def measured_path(self, device: str) -> Path:
        """The cache file of a measured device: one per machine, runtime and thread count."""
        return measured_device(device, self.settings).path

    def imported_path(self, name: str) -> Path:
        return self._imported.path(name)

    # -- listing --------------------------------------------------------------------------------

    def devices(self) -> list[DeviceProfile]:
        return [backend.profile() for kind in self.kinds for backend in kind.listed()]

    # -- tables ---------------------------------------------------------------------------------

    def table(self, device: str, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        """The table of `device`, covering `spec` at `batches` (measured now if it is a measured device)."""
        return self.backend(device).table(spec, batches, progress)

    def ready(self, device: str, spec: ModelSpec, batches: list[int]) -> bool:
        """Whether `table` would answer at once (False: a measured device must be timed first). An
        unknown or refused name is ready too: `table` answers at once, with the error that says why."""
        try:
            backend = self.backend(device)
        except ValueError:
            return True
        return backend.ready(spec, batches)

    def priced_as(self, device: str, precision: str) -> str | None:
        """The device name that prices `precision` on `device` (`DeviceBackend.priced_as`); None: no price."""
        return self.backend(device).priced_as(precision)

    def fully_integer(self, device: str, precision: str) -> int | None:
        """How `device` computes a `precision` model: None, or fully in integer with its residual stream's
        channels scaled up to 2^k apart (`DeviceBackend.fully_integer`)."""
        return self.backend(device).fully_integer(precision)

    def predictor(self, device: str, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyPredictor:
        predictor = LatencyPredictor(self.table(device, spec, batches, progress))
        for batch in batches:
            predictor.lookup(spec, batch)  # fails now, with a clear message, if the table lacks this shape
        return predictor

    def import_table(self, path: Path, name: str) -> LatencyTable:
        """Validate a table file and store it as device `name`."""
        return self._imported.import_table(path, name)
