"""Analytic device models: latency tables computed from a device's specification, not measured.

An analytic table has the same schema and the same grid of entries as a measured one
(`latency_models.profiling.plan`), so the predictor and the search use it unchanged. Two models,
each one class whose `cost(key)` gives the milliseconds of one table entry:

- `MobileCpu`: a roofline per op of the fp32 or int8 runtime on a phone CPU (`MobileCpuParams`: the
  SoC's clusters, the core configuration a run uses and its dtype, `on_cores` / `with_dtype`);
- `Fpga`: a tiled GEMM array with nonlinear units on an FPGA, in fixed point (`FpgaParams`).

A model counts the block halves and the ends itself; a token op's entries are counted by the op's
pricing module (`latency_models.profiling.ops`) with the primitives the model hands it. Composites
cost the sum of their parts: an analytic model has no interactions between ops.

`PRESETS` holds parameters for real devices (phones in `phones.py`, boards in `presets.py`), each
number cited in the preset's `sources` or marked there as a modelling assumption (docs/devices.md).
An analytic model ranks configurations by where their time goes; only a measured table, or a model
fitted to the device's timings, predicts its milliseconds.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone

from latency_models.analytic.fpga import Fpga, FpgaParams
from latency_models.analytic.mobile_cpu import CORE_WORDS, Cluster, MobileCpu, MobileCpuParams
from latency_models.analytic.presets import PRESETS
from latency_models.profiling import SCHEMA, SCHEMA_VERSION, Shape, entry_id, plan
from latency_models.schema import LatencyTable

__all__ = [
    "CORE_WORDS",
    "MODELS",
    "PRESETS",
    "Cluster",
    "Fpga",
    "FpgaParams",
    "MobileCpu",
    "MobileCpuParams",
    "analytic_model",
    "analytic_table",
]

NOTES = (
    "Analytic model from public specifications and stated assumptions: it ranks pruned configurations by "
    "their cost on this kind of device; only a table measured on the device predicts its milliseconds."
)

MODELS: dict[type, type[MobileCpu | Fpga]] = {MobileCpuParams: MobileCpu, FpgaParams: Fpga}
"""Parameters class -> the analytic model it parametrises. A new model is a class with `cost(key)` (ms
of one table entry) and `device()` (its runtime, threads and dtype), listed here with its parameters."""


def analytic_model(params: MobileCpuParams | FpgaParams) -> MobileCpu | Fpga:
    """The analytic model that `params` parametrise."""
    try:
        return MODELS[type(params)](params)
    except KeyError:
        raise TypeError(f"no analytic model for {type(params).__name__}") from None


def analytic_table(params: MobileCpuParams | FpgaParams, shapes: list[Shape], batches: list[int]) -> LatencyTable:
    """A latency table with every entry of `plan(shape, batches)` for each shape, priced by the model."""
    if not shapes or not batches:
        raise ValueError("analytic_table needs at least one shape and one batch size")
    model = analytic_model(params)
    keys: dict[str, dict] = {}
    for shape in shapes:
        for key in plan(shape, batches):
            keys.setdefault(entry_id(key), key)
    entries = [{**key, "median_ms": model.cost(key), "spread_ms": 0.0} for key in keys.values()]
    device = {
        "name": params.name,
        "kind": "analytic",
        **model.device(),
        "hardware": params.hardware,
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
