"""From a preset and a timings file to the one device configuration a fit describes.

A fitted device is one configuration of its preset: one core configuration (a phone's one big
core, one cluster, all cores, or a thread count) and one dtype, because a latency table prices one
(a search runs the model one way) and because what a fit moves differs between configurations: the
share of peak that threads reach together (shared caches and DRAM), a thread pool's per-op cost,
int8 kernels against float ones. So a file with timings of several configurations is fitted one
configuration at a time: the configuration is picked with `@<cores>` in the base name and
`dtype` (`MobileCpuParams.on_cores`, `with_dtype`), and a file that mixes configurations without a
pick is refused, naming them.
"""

from __future__ import annotations

from collections import Counter

from latency_models.analytic import FpgaParams, MobileCpuParams, analytic_model
from latency_models.fitting.fit import fit
from latency_models.fitting.record import FittedRecord, record_of
from latency_models.fitting.timings import TimingRow, TimingsError, parse_cores

__all__ = ["configured", "fit_device", "select", "split_base"]


def split_base(base: str) -> tuple[str, str | None]:
    """`mobile-cpu:<soc>@<cores>` -> (`mobile-cpu:<soc>`, cores); no `@`: (base, None)."""
    name, at, cores = base.partition("@")
    if not at:
        return base, None
    if not name:
        raise ValueError(f"base {base!r}: give the preset before '@', e.g. mobile-cpu:snapdragon-8-gen-2@one")
    return name, parse_cores(cores)


def configured(params: MobileCpuParams | FpgaParams, cores: str | None, dtype: str | None):
    """`params` on core configuration `cores` in `dtype` (None: as the preset is)."""
    if isinstance(params, FpgaParams):  # timings in another word size are of the design built for it
        return params if dtype is None else params.with_dtype(dtype)
    if cores is not None:
        params = params.on_cores(int(cores) if cores.isdigit() else cores)
    if dtype is not None and dtype != _dtype(params):
        params = params.with_dtype(dtype)
    return params


def _dtype(params: MobileCpuParams | FpgaParams) -> str:
    return analytic_model(params).device()["dtype"]


def select(
    rows: list[TimingRow], cores: str | None, dtype: str | None, *, use_cores: bool = True
) -> tuple[str | None, str | None, list[TimingRow]]:
    """The configuration to fit (cores, dtype; None = the preset's) and its rows. A configuration not
    picked is the file's one; a file of several configurations needs a pick. A row without cores or
    dtype is of whatever configuration is fitted. `use_cores` False: the cores column is ignored (FPGA)."""
    picks = {"cores": cores if use_cores else None, "dtype": dtype}
    for column in ("cores", "dtype") if use_cores else ("dtype",):
        found = Counter(getattr(row, column) for row in rows if getattr(row, column) is not None)
        if picks[column] is None and len(found) > 1:
            listed = ", ".join(f"{value} ({n} rows)" for value, n in sorted(found.items()))
            how = "@<cores> in --base, e.g. mobile-cpu:snapdragon-8-gen-2@one" if column == "cores" else "--dtype"
            raise TimingsError(
                f"the timings are of several {column} settings: {listed}; a fitted device is one configuration "
                f"(one core configuration, one dtype): fit one device per {column} setting, picking it with {how}"
            )
        if picks[column] is None and found:
            picks[column] = next(iter(found))
    kept = [
        row
        for row in rows
        if (not use_cores or row.cores in (None, picks["cores"])) and row.dtype in (None, picks["dtype"])
    ]
    if not kept:
        wanted = " and ".join(f"{c} {picks[c]}" for c in ("cores", "dtype") if picks[c] is not None)
        have = sorted({f"cores {row.cores}, dtype {row.dtype}" for row in rows})
        raise TimingsError(f"no timing is of {wanted}; the file has {'; '.join(have)}")
    return picks["cores"], picks["dtype"], kept


def fit_device(
    name: str,
    base: str,
    preset: MobileCpuParams | FpgaParams,
    rows: list[TimingRow],
    *,
    cores: str | None = None,
    dtype: str | None = None,
) -> tuple[FittedRecord, int]:
    """Fit preset `preset` (named `base`) on `cores` in `dtype` to the matching `rows`: the record of
    device `name`, and how many rows were of other configurations (left out)."""
    fpga = isinstance(preset, FpgaParams)
    configured(preset, cores, dtype)  # a configuration the preset cannot take is refused first
    cores, dtype, kept = select(rows, None if fpga else cores, dtype, use_cores=not fpga)
    params = configured(preset, cores, dtype)
    if cores is None and isinstance(params, MobileCpuParams):
        cores = str(params.cores)  # the preset's own configuration, said out loud in the device's basis
    result = fit(params, kept)
    return record_of(name, base, cores, dtype or _dtype(params), result), len(rows) - len(kept)
