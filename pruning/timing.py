"""An honest latency timer for models on a shared, noisy machine.

Every call is timed on its own. The headline number is the minimum over rounds of each round's
median: a round hit by a stall from another process gets a high median and is ignored, while the
median inside a round ignores single outliers. The spread (p90 - p10) is reported so that a noisy
measurement can be recognised as such instead of being trusted.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LatencyStats", "measure_latency", "paired_latency", "time_callable", "torch_threads"]


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds; `ms` (min over rounds of round medians) is the headline."""

    ms: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    spread_ms: float
    rounds: int
    iters_per_round: int
    threads: int
    batch_size: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with `n` intra-op threads (None: leave as is) and restore the previous count."""
    previous = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _timed_rounds(fn: Callable[[], object], rounds: int, iters: int) -> list[list[float]]:
    """Seconds per call, grouped by round, with the garbage collector off so it cannot add pauses."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        timings: list[list[float]] = []
        for _ in range(rounds):
            round_times = []
            for _ in range(iters):
                start = time.perf_counter()
                fn()
                round_times.append(time.perf_counter() - start)
            timings.append(round_times)
        return timings
    finally:
        if gc_was_enabled:
            gc.enable()


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    rounds: int = 5,
    iters: int = 10,
    threads: int | None = None,
    batch_size: int | None = None,
) -> LatencyStats:
    """Time `fn()` after `warmup` untimed calls; `batch_size` is only recorded in the result."""
    if rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, iters >= 1, warmup >= 0; got {rounds}, {iters}, {warmup}")
    with torch_threads(threads) as used_threads:
        for _ in range(warmup):
            fn()
        timings = _timed_rounds(fn, rounds, iters)
    all_ms = np.array([t for round_times in timings for t in round_times]) * 1000.0
    p10, median, p90 = np.percentile(all_ms, [10, 50, 90])
    headline = min(statistics.median(round_times) for round_times in timings) * 1000.0
    return LatencyStats(
        ms=float(headline),
        median_ms=float(median),
        p10_ms=float(p10),
        p90_ms=float(p90),
        spread_ms=float(p90 - p10),
        rounds=rounds,
        iters_per_round=iters,
        threads=used_threads,
        batch_size=batch_size,
    )


def measure_latency(
    model: torch.nn.Module,
    *,
    batch_size: int = 1,
    input_size: tuple[int, ...] = (3, 224, 224),
    threads: int | None = None,
    warmup: int = 3,
    rounds: int = 5,
    iters: int = 10,
    inputs: torch.Tensor | None = None,
) -> LatencyStats:
    """Per-forward latency of `model` in eval mode under inference_mode.

    Uses a random normal batch of `batch_size` unless `inputs` is given (then its first dimension is
    the batch size). On CUDA every call waits for the GPU, so the time is the forward's, not its launch.
    The model's previous train/eval mode is restored.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if inputs is None:
        inputs = torch.randn(batch_size, *input_size)
    inputs = inputs.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def forward() -> None:
        model(inputs)
        if sync is not None:
            sync(device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return time_callable(
                forward,
                warmup=warmup,
                rounds=rounds,
                iters=iters,
                threads=threads,
                batch_size=int(inputs.shape[0]),
            )
    finally:
        model.train(was_training)


def paired_latency(
    models: dict[str, torch.nn.Module],
    *,
    batch_size: int,
    threads: int | None = None,
    rounds: int = 7,
    iters: int = 2,
) -> dict[str, float]:
    """Median milliseconds per forward of each model over `rounds` interleaved rounds (each model
    timed once per round, `iters` calls after one warm-up call): the shared machine's speed drifts
    over tens of seconds, and interleaving makes a drift hit every model alike, so ratios between
    the models hold where separate measurements would not."""
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            stats = measure_latency(model, batch_size=batch_size, threads=threads, warmup=1, rounds=1, iters=iters)
            times[name].append(stats.ms)
    return {name: statistics.median(values) for name, values in times.items()}
