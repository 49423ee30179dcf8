"""A fitted device on disk: `fitted/<name>.json` in the profiles directory.

It records what the device's milliseconds rest on: the preset it was fitted from, the core
configuration and dtype, every free parameter's preset and fitted value and range, the timings it
was fitted on with each one's error (fitted, unfitted preset, leave-one-model-out), and the full
fitted parameters that price any ViT (`params()`). A validated document (pydantic), never pickled.
"""

from __future__ import annotations

import importlib.metadata
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latency_models.analytic import FpgaParams, MobileCpuParams
from latency_models.fitting.fit import Fit

__all__ = ["FITTED_SCHEMA", "PARAMS", "FittedRecord", "FittedRow", "FreeValue", "record_of"]

FITTED_SCHEMA = "vitprune.fitted-device"
PARAMS: dict[str, type] = {"mobile-cpu": MobileCpuParams, "fpga": FpgaParams}
"""Analytic model name (the part of a preset's name before ':') -> its parameters class."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FreeValue(_Strict):
    preset: float
    fitted: float
    lower: float
    upper: float


class FittedRow(_Strict):
    """One timing the device was fitted on, and how each model predicts it."""

    model: str
    image_size: int
    batch: int
    cores: str | None
    dtype: str | None
    ms: float
    preset_ms: float
    fitted_ms: float
    lomo_ms: float | None
    """Predicted by a fit without this model's timings (None: no other model to fit on)."""

    def error(self, which: str = "fitted") -> float | None:
        predicted = {"fitted": self.fitted_ms, "preset": self.preset_ms, "lomo": self.lomo_ms}[which]
        return None if predicted is None else predicted / self.ms - 1.0


class FittedRecord(_Strict):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["vitprune.fitted-device"] = Field(FITTED_SCHEMA, alias="schema")
    version: Literal[1] = 1
    name: str
    base: str
    """The preset it was fitted from, e.g. mobile-cpu:snapdragon-8-gen-2."""
    cores: str | None
    """Core configuration (one, cluster, all, a thread count); None: the preset's own (or an FPGA)."""
    dtype: str
    parameters: dict[str, Any]
    """Every parameter of the fitted model (`params()`)."""
    free: dict[str, FreeValue]
    rows: tuple[FittedRow, ...] = Field(min_length=1)
    summary: dict[str, Any]
    created: datetime
    tool_version: str

    @property
    def model(self) -> str:
        return self.base.split(":", 1)[0]

    @property
    def configuration(self) -> str:
        """The preset and core configuration it describes, e.g. mobile-cpu:snapdragon-8-gen-2@one."""
        return self.base + (f"@{self.cores}" if self.cores else "")

    def params(self) -> MobileCpuParams | FpgaParams:
        if self.model not in PARAMS:
            raise ValueError(f"fitted device {self.name!r}: no analytic model {self.model!r}")
        return PARAMS[self.model].model_validate(self.parameters)

    def basis(self) -> str:
        """What the device's milliseconds rest on, in a line (`DeviceProfile.basis`)."""
        s = self.summary
        dtype = "" if self.dtype == "float32" or self.model == "fpga" else f" ({self.dtype})"
        text = (
            f"fitted on {s['timings']} timings of {s['models']} models to {self.configuration}{dtype}: "
            f"median error {_pct(s['fit_median_error'])}"
        )
        if s.get("lomo_median_error") is None:
            return text + ", no leave-one-model-out check (timings of one model)"
        return (
            text + f", leave-one-model-out median {_pct(s['lomo_median_error'])} (worst {_pct(s['lomo_worst_error'])})"
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(self.model_dump_json(by_alias=True, indent=1))
        scratch.replace(path)

    @classmethod
    def load(cls, path: Path) -> FittedRecord:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None
        if not isinstance(data, dict) or data.get("schema") != FITTED_SCHEMA:
            raise ValueError(f"{path}: not a vitprune fitted device (no schema {FITTED_SCHEMA!r})")
        try:
            record = cls.model_validate(data)
            record.params()
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{path}: {where}: {first['msg']}") from None
        return record


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def record_of(name: str, base: str, cores: str | None, dtype: str, fit: Fit) -> FittedRecord:
    """The record of a fit: device `name`, fitted from preset `base` on `cores` in `dtype`."""
    rows = [
        FittedRow(**row.to_json(), preset_ms=b, fitted_ms=f, lomo_ms=lomo)
        for row, b, f, lomo in zip(fit.rows, fit.base_ms, fit.fitted_ms, fit.lomo_ms, strict=True)
    ]
    free = {}
    for f in fit.free:
        preset = float(getattr(fit.base, f.name))
        lower, upper = f.bounds(preset)
        free[f.name] = FreeValue(preset=preset, fitted=float(getattr(fit.params, f.name)), lower=lower, upper=upper)
    params = fit.params.model_copy(update={"name": name})
    return FittedRecord(
        name=name,
        base=base,
        cores=cores,
        dtype=dtype,
        parameters=params.model_dump(mode="json"),
        free=free,
        rows=tuple(rows),
        summary=fit.summary(),
        created=datetime.now(timezone.utc),
        tool_version=importlib.metadata.version("vitprune"),
    )
