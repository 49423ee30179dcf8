"""A profiling run: timed rounds in passes over the grid, progress, resume, the table file."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .execution import Execution
from .grid import SCHEMA, SCHEMA_VERSION, entry_id
from .kernels import kernel


@dataclass(frozen=True)
class Timing:
    passes: int = 5
    """Passes over the whole grid; each entry's figure is the median over passes of its round medians."""
    warmup: int = 2
    min_round_s: float = 0.01
    """Each round repeats the call until it has run at least this long (and at least 3 times)."""


def time_round(fn: Callable[[], object], execution: Execution, timing: Timing) -> list[float]:
    """One round of calls of `fn` after warm-up, run as `execution` runs it: milliseconds per call."""

    def once() -> float:
        start = time.perf_counter()
        call()
        execution.sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        call, _ = execution.prepare(fn)
        first = min(once() for _ in range(max(1, timing.warmup)))
        iters = max(3, min(200, math.ceil(timing.min_round_s / max(first, 1e-6))))
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return [once() * 1e3 for _ in range(iters)]
        finally:
            if gc_was_enabled:
                gc.enable()


def summarise(rounds: list[list[float]]) -> tuple[float, float]:
    """(median over rounds of round medians, p90 - p10 over every call), in milliseconds.

    A machine shared with other work has slow periods. The rounds of one entry are spread over the
    whole run (one per pass), and the median over them ignores a minority of rounds hit by a slow
    period. The median, not the minimum, because a latency table is summed: the minimum of each
    small part's rounds is a luckier draw than the minimum of a whole model's rounds, so sums of
    minima come out optimistic, most of all for models made of many small parts.
    """
    every = sorted(t for r in rounds for t in r)
    p10, p90 = every[int(0.1 * (len(every) - 1))], every[int(0.9 * (len(every) - 1))]
    return statistics.median(statistics.median(r) for r in rounds), p90 - p10


def _progress(total: int, done: int) -> Callable[[], None]:
    """A tick function reporting progress and ETA on stderr (tqdm when installed, plain lines otherwise)."""
    try:
        from tqdm import tqdm
    except ImportError:
        start, state = time.monotonic(), {"i": done}
        step = max(1, total // 100)

        def tick() -> None:
            state["i"] += 1
            i = state["i"]
            if i % step == 0:
                eta = (time.monotonic() - start) / max(i - done, 1) * (total - i)
                print(f"profiled {i}/{total}, about {eta:.0f} s left", file=sys.stderr, flush=True)

        return tick
    bar = tqdm(total=total, initial=done, desc="profiling", unit="entry", smoothing=0.05)
    return lambda: bar.update(1)


def hardware_name() -> str:
    """The CPU's model name as the OS reports it (Linux, Android), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator() -> str:
    """The malloc this process runs with: a preloaded caching allocator, or the C library's ("system").

    It matters at large batches on CPU: glibc's malloc hands big freed buffers back to the OS and
    takes fresh ones, whose first touch page-faults, in a pattern that depends on the history of
    allocations (`bench/allocator_faults.py`: DeiT-Tiny's MLP half at batch 32 took 60.1 ms with
    8,334 faults per call, 44.5 ms with none under tcmalloc, which reuses its memory). A table
    records the allocator it was timed with."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((name for name in ("tcmalloc", "jemalloc", "mimalloc") if f"lib{name}" in maps), "system")


def runtime_name(device: torch.device) -> str:
    """What runs the model: torch, its backend and, when it is not the system's, the allocator."""
    parts = [f"cuda {torch.version.cuda}" if device.type == "cuda" else "cpu"]  # Execution.of reads it back
    if (malloc := allocator()) != "system":
        parts.append(malloc)
    return f"torch {torch.__version__} ({', '.join(parts)})"


def device_info(name: str, execution: Execution, threads: int, batches: list[int]) -> dict:
    device = execution.torch_device
    cuda = device.type == "cuda"
    return {
        "name": name,
        "kind": "measured",
        "runtime": runtime_name(device),
        "hardware": torch.cuda.get_device_name(device) if cuda else hardware_name(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} logical cpus",
        "threads": None if cuda else threads,
        "dtype": execution.dtype,
        "mode": execution.mode,
        "batch_sizes": sorted(set(batches)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": _tool_version(),
    }


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("vitprune")
    except Exception:  # running from a copied file on a device without vitprune installed
        return "profiler-standalone"


def profile(
    keys: list[dict],
    *,
    name: str,
    out: Path,
    execution: Execution | None = None,
    threads: int | None = None,
    timing: Timing = Timing(),
    progress: bool = True,
) -> dict:
    """Time every entry in `keys` as `execution` runs it, resuming from `<out>.partial.jsonl`; write and
    return the table. A partial file holds only rounds of the same execution (its name says which)."""
    execution = execution or Execution()
    execution.check()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _profile(keys, name, out, execution, timing, progress)
    finally:
        torch.set_num_threads(previous)  # a library call leaves the process as it found it


def _profile(keys: list[dict], name: str, out: Path, execution: Execution, timing: Timing, progress: bool) -> dict:
    keys = list({entry_id(k): k for k in keys}.values())
    tag = "" if execution == Execution() else f".{execution.device}-{execution.dtype}-{execution.mode}".replace(":", "")
    partial = out.with_name(out.name + tag + ".partial.jsonl")
    rounds = _read_partial(partial)
    total = len(keys) * timing.passes
    tick = _progress(total, sum(min(len(rounds.get(entry_id(k), [])), timing.passes) for k in keys))
    with partial.open("a") as sink:
        for n in range(timing.passes):
            for key in keys:
                done = rounds.setdefault(entry_id(key), [])
                if len(done) > n:
                    continue
                # A chain entry is the time of one of its blocks, a reducing chain's of one of its pairs.
                per_call = key.get("blocks") or key.get("pairs") or 1
                with execution.building():
                    fn = kernel(key, execution.torch_device)
                done.append([t / per_call for t in time_round(fn, execution, timing)])
                sink.write(json.dumps({"id": entry_id(key), "ms": [round(t, 5) for t in done[-1]]}) + "\n")
                sink.flush()
                if progress:
                    tick()
    entries = []
    for key in keys:
        median, spread = summarise(rounds[entry_id(key)])
        entries.append({**key, "median_ms": round(median, 6), "spread_ms": round(spread, 6)})
    table = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "device": device_info(name, execution, torch.get_num_threads(), [k["batch"] for k in keys]),
        "entries": entries,
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out)
    partial.unlink()
    return table


def _read_partial(path: Path) -> dict[str, list[list[float]]]:
    """Rounds already timed, by entry id; a line cut short by a killed run is skipped."""
    rounds: dict[str, list[list[float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                rounds.setdefault(record["id"], []).append([float(t) for t in record["ms"]])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return rounds
