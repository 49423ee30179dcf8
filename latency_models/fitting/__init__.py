"""Devices fitted to a few measured timings: an analytic preset's free parameters, fitted by robust
least squares within physical bounds to end-to-end timings of dense ViTs on the real device.

For devices that cannot run the profiler (a phone without Python, a board): time a few dense models
there, write them into a CSV file (`timings.py` says its columns), and fit
(`vitprune devices fit --name my-phone --base mobile-cpu:<soc>@<cores> --timings timings.csv`).

- `timings.py`: the CSV file, read and checked row by row;
- `fit.py`: the free parameters of each analytic model and the fit, with its errors (per timing,
  leave-one-model-out, and the unfitted preset's);
- `configure.py`: the one configuration (cores, dtype) a device is fitted for, picked from a file;
- `record.py`: the fitted device as stored (`fitted/<name>.json`), served by
  `latency_models.devices.fitted` like an analytic preset.
"""

from latency_models.fitting.configure import configured, fit_device, select, split_base
from latency_models.fitting.fit import FREE, Fit, Free, fit, free_parameters, predict
from latency_models.fitting.record import FITTED_SCHEMA, FittedRecord, FittedRow, record_of
from latency_models.fitting.timings import COLUMNS, TimingRow, TimingsError, parse_timings, read_timings, resolve_model

__all__ = [
    "COLUMNS",
    "FITTED_SCHEMA",
    "FREE",
    "Fit",
    "FittedRecord",
    "FittedRow",
    "Free",
    "TimingRow",
    "TimingsError",
    "configured",
    "fit",
    "fit_device",
    "free_parameters",
    "parse_timings",
    "predict",
    "read_timings",
    "record_of",
    "resolve_model",
    "select",
    "split_base",
]
