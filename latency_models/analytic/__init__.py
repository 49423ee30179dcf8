"""Analytic device models: latency tables computed from a device's specification, not measured.

An analytic table has the same schema and the same grid of entries as a measured one
(`latency_models.profiling.plan`), so the predictor and the search use it unchanged. Two models:

- `mobile_cpu`: a roofline per op of the fp32 runtime on a phone CPU (`MobileCpuParams`);
- `fpga`: a tiled GEMM array with nonlinear units on an FPGA, in fixed point (`FpgaParams`).

`PRESETS` holds parameters for real devices, each number cited in the preset's `sources` or marked
there as a modelling assumption. An analytic model ranks configurations by where their time goes;
only a measured table predicts milliseconds on a real device.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone

from latency_models.analytic.fpga import FpgaParams, fpga_ms
from latency_models.analytic.mobile_cpu import CoreGroup, MobileCpuParams, mobile_cpu_ms
from latency_models.analytic.presets import PRESETS
from latency_models.profiling import SCHEMA, SCHEMA_VERSION, Shape, entry_id, plan
from latency_models.schema import LatencyTable

__all__ = [
    "PRESETS",
    "CoreGroup",
    "FpgaParams",
    "MobileCpuParams",
    "analytic_ms",
    "analytic_table",
    "fpga_ms",
    "mobile_cpu_ms",
]

NOTES = (
    "Analytic model from public specifications and stated assumptions: it ranks pruned configurations by "
    "their cost on this kind of device; only a table measured on the device predicts its milliseconds."
)


def analytic_ms(params: MobileCpuParams | FpgaParams, key: dict) -> float:
    """Milliseconds of table entry `key` under the model that `params` belongs to."""
    if isinstance(params, MobileCpuParams):
        return mobile_cpu_ms(params, key)
    if isinstance(params, FpgaParams):
        return fpga_ms(params, key)
    raise TypeError(f"no analytic model for {type(params).__name__}")


def analytic_table(params: MobileCpuParams | FpgaParams, shapes: list[Shape], batches: list[int]) -> LatencyTable:
    """A latency table with every entry of `plan(shape, batches)` for each shape, priced by the model."""
    if not shapes or not batches:
        raise ValueError("analytic_table needs at least one shape and one batch size")
    keys: dict[str, dict] = {}
    for shape in shapes:
        for key in plan(shape, batches):
            keys.setdefault(entry_id(key), key)
    entries = [{**key, "median_ms": analytic_ms(params, key), "spread_ms": 0.0} for key in keys.values()]
    cpu = isinstance(params, MobileCpuParams)
    device = {
        "name": params.name,
        "kind": "analytic",
        "runtime": "analytic mobile-cpu model v1" if cpu else "analytic fpga model v1",
        "hardware": params.hardware,
        "threads": params.threads if cpu else None,
        "dtype": "float32" if cpu else f"int{params.bits}",
        "batch_sizes": sorted(set(batches)),
        "created": datetime.now(timezone.utc),
        "tool_version": importlib.metadata.version("vitprune"),
        "parameters": params.model_dump(mode="json", exclude={"name", "sources"}),
        "sources": params.sources,
        "notes": NOTES,
    }
    return LatencyTable.model_validate(
        {"schema": SCHEMA, "version": SCHEMA_VERSION, "device": device, "entries": entries}
    )
