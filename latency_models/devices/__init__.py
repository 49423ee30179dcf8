"""Target devices behind one protocol: what a device is, whether its table is ready, and the table.

Every device is a `DeviceBackend` (`base.py`): its `profile()` (name, kind, description, whether it
is available here, what its table covers), `ready(spec, batches)` and `table(spec, batches)`. Devices
come in kinds, each a `DeviceKind` in one module here that claims its names and gives their backends:

- `measured.py`: this machine, timed with torch on first use and cached: `host-cpu`, `cuda`
  (growing a cached table: `completion.py`);
- `host_int8.py`: this machine's CPU running int8 models in onnxruntime, `host-cpu+int8`: the CPU
  as an analytic device fitted on first use to onnxruntime timings, and cached;
- `analytic.py`: the analytic presets of `latency_models.analytic` (`mobile-cpu:*`, `fpga:*`, and
  the bare model names for their defaults);
- `fitted.py`: analytic presets fitted to a few timings measured on a device, under a user's name
  (`latency_models.fitting`);
- `imported.py`: tables measured elsewhere and imported under a name; asked last, it takes every
  name no other kind claims.

`latency_models.registry.Registry` asks the kinds of `KINDS` in order, then the imported tables.

**A new device kind** (a fitted model, a remote board, ...) is one module here with a `DeviceKind`
class (built from `DeviceSettings`) and its `DeviceBackend`, plus one entry in `KINDS`. Its names
are then listed by `vitprune devices` and the service, found by every search, and refused as names
for imported tables.
"""

from __future__ import annotations

from latency_models.devices.analytic import AnalyticKind
from latency_models.devices.base import (
    DeviceBackend,
    DeviceKind,
    DeviceProfile,
    DeviceSettings,
    UnknownDeviceError,
    coverage,
)
from latency_models.devices.fitted import FittedKind
from latency_models.devices.host_int8 import HostInt8Kind
from latency_models.devices.imported import ImportedKind
from latency_models.devices.measured import MeasuredKind

__all__ = [
    "KINDS",
    "DeviceBackend",
    "DeviceKind",
    "DeviceProfile",
    "DeviceSettings",
    "ImportedKind",
    "UnknownDeviceError",
    "coverage",
]

KINDS: tuple[type, ...] = (MeasuredKind, HostInt8Kind, AnalyticKind, FittedKind)
"""The kinds with built-in names, in the order they are asked and listed (imported tables come last)."""
