"""Device profiles by name: where a search gets the latency table of its target device.

- `host-cpu`: this machine's CPU, measured on first use for each model shape and batch size and
  cached, keyed by the machine (CPU model, core count, torch version) and the thread count. A cached
  table lacking entries that the grid now plans (the merge entries, for a table made before token
  merging was priced) gets just those timed, at the table's machine speed, and added on its next use
  (`complete_table`; composites compared with their parts only come with them, see `to_time`).
- `cuda`: this machine's GPU, the same way, when torch sees one.
- `mobile-cpu:*`, `fpga:*`: the analytic presets (`latency_models.analytic`); they rank configs.
- any other name: a table imported with `vitprune lut import` (e.g. measured on a user's device
  with `python -m latency_models.profiling`).

Tables live in the profiles directory: `$VITPRUNE_PROFILES_DIR`, else `~/.cache/vitprune/profiles`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from latency_models.analytic import PRESETS, analytic_table
from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.profiling import Timing, allocator, composite_parts, entry_id, plan, profile, runtime_name
from latency_models.profiling.run import hardware_name
from latency_models.schema import LatencyTable
from pruning.spec import ModelSpec

__all__ = ["DeviceProfile", "Registry", "UnknownDeviceError", "complete_table", "to_time"]

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MEASURED = ("host-cpu", "cuda")
KIND_DEFAULTS = {"mobile-cpu": "mobile-cpu:snapdragon-8-gen-2", "fpga": "fpga:zcu102"}
"""A bare analytic kind names its default preset."""


class UnknownDeviceError(ValueError):
    """A device name that is neither built in nor imported."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str
    description: str
    available: bool
    coverage: str
    """What the table holds now, e.g. 'embed 192 at batch 1, 32' or 'measured on first use'."""


def default_profiles_dir() -> Path:
    configured = os.environ.get("VITPRUNE_PROFILES_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vitprune" / "profiles"


class Registry:
    """Named device profiles over one profiles directory."""

    def __init__(self, root: Path | None = None, threads: int | None = None, timing: Timing | None = None) -> None:
        self.root = Path(root) if root is not None else default_profiles_dir()
        self.threads = threads or torch.get_num_threads()
        self.timing = timing or Timing()
        self._analytic: dict[tuple, LatencyTable] = {}

    # -- naming ---------------------------------------------------------------------------------

    def measured_path(self, device: str) -> Path:
        """The cache file of a measured device: one per machine, runtime and thread count."""
        threads = self.threads if device == "host-cpu" else 0
        gpu = torch.cuda.get_device_name() if device == "cuda" else ""
        machine = f"{hardware_name()}|{gpu}|{os.cpu_count()}|{platform.machine()}|torch {torch.__version__}"
        if (malloc := allocator()) != "system":  # tables from before allocators were told apart keep their names
            machine += f"|{malloc}"
        digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
        suffix = f"-t{threads}" if threads else ""
        return self.root / "measured" / f"{device}-{digest}{suffix}.json"

    def imported_path(self, name: str) -> Path:
        if not NAME.match(name) or name in MEASURED or name in KIND_DEFAULTS or ":" in name:
            raise ValueError(
                f"device name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-' (and not a built-in name)"
            )
        return self.root / "imported" / f"{name}.json"

    # -- listing --------------------------------------------------------------------------------

    def devices(self) -> list[DeviceProfile]:
        found = []
        for device in MEASURED:
            available = device == "host-cpu" or torch.cuda.is_available()
            path = self.measured_path(device) if available else None
            coverage = _coverage(LatencyTable.load(path)) if path and path.exists() else "measured on first use"
            what = f"this machine's CPU, {self.threads} threads" if device == "host-cpu" else "this machine's GPU"
            found.append(DeviceProfile(device, "measured", what, available, coverage))
        for name, params in sorted(PRESETS.items()):
            kind = name.split(":", 1)[0]
            found.append(DeviceProfile(name, "analytic", f"analytic {kind} model, {params.hardware}", True, "any ViT"))
        for path in sorted((self.root / "imported").glob("*.json")):
            try:
                table = LatencyTable.load(path)
                found.append(
                    DeviceProfile(
                        path.stem,
                        "imported",
                        f"{table.device.hardware} ({table.device.runtime})",
                        True,
                        _coverage(table),
                    )
                )
            except ValueError as error:
                found.append(DeviceProfile(path.stem, "imported", f"unreadable: {error}", False, ""))
        return found

    # -- tables ---------------------------------------------------------------------------------

    def table(self, device: str, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        """The table of `device`, covering `spec` at `batches` (measured now if it is a measured device)."""
        if device in MEASURED:
            return self._measured(device, spec, batches, progress)
        if ":" in device or device in KIND_DEFAULTS:
            return self._analytic_table(device, spec, batches)
        path = self.imported_path(device)
        if not path.exists():
            names = ", ".join(d.name for d in self.devices())
            raise UnknownDeviceError(f"unknown device {device!r}; known devices: {names} (see `vitprune devices`)")
        return LatencyTable.load(path)

    def ready(self, device: str, spec: ModelSpec, batches: list[int]) -> bool:
        """Whether `table` would answer at once (False: a measured device must be timed first)."""
        if device not in MEASURED:
            return True
        path = self.measured_path(device)
        if not path.exists():
            return False
        return not to_time(LatencyTable.load(path).keys(), plan(shape_of(spec), sorted(set(batches))))

    def predictor(self, device: str, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyPredictor:
        predictor = LatencyPredictor(self.table(device, spec, batches, progress))
        for batch in batches:
            predictor.lookup(spec, batch)  # fails now, with a clear message, if the table lacks this shape
        return predictor

    def import_table(self, path: Path, name: str) -> LatencyTable:
        """Validate a table file and store it as device `name`."""
        target = self.imported_path(name)  # a bad name is refused before the file is read
        table = LatencyTable.load(path)
        info = table.device
        note = f"imported from a {info.kind} table named {info.name!r}"
        device = info.model_copy(
            update={"name": name, "kind": "imported", "notes": " ".join((info.notes, note)).strip()}
        )
        imported = LatencyTable(device=device, entries=table.entries)
        imported.save(target)
        return imported

    def _measured(self, device: str, spec: ModelSpec, batches: list[int], progress: bool) -> LatencyTable:
        if device == "cuda" and not torch.cuda.is_available():
            raise UnknownDeviceError("device 'cuda': torch sees no CUDA GPU on this machine")
        return complete_table(
            self.measured_path(device),
            plan(shape_of(spec), sorted(set(batches))),
            name=device,
            device="cuda" if device == "cuda" else "cpu",
            threads=None if device == "cuda" else self.threads,
            timing=self.timing,
            progress=progress,
        )

    def _analytic_table(self, device: str, spec: ModelSpec, batches: list[int]) -> LatencyTable:
        device = KIND_DEFAULTS.get(device, device)
        if device not in PRESETS:
            raise UnknownDeviceError(f"unknown analytic device {device!r}; presets: {', '.join(sorted(PRESETS))}")
        key = (device, shape_of(spec), tuple(sorted(set(batches))))
        if key not in self._analytic:
            self._analytic[key] = analytic_table(PRESETS[device], [shape_of(spec)], sorted(set(batches)))
        return self._analytic[key]


def complete_table(
    path: Path,
    keys: list[dict],
    *,
    name: str,
    device: str = "cpu",
    threads: int | None = None,
    timing: Timing | None = None,
    progress: bool = True,
) -> LatencyTable:
    """The table at `path` with every entry of `keys`: the missing ones (all of them if there is no
    file yet, the merge entries of a table made before merging was priced) are timed on this machine
    now and added; entries already there keep their values. Returns the table, saved back to `path`.
    Refuses to add to a table timed with another runtime (torch version, backend or allocator).

    A shared machine's speed wanders by several percent between runs, and a prediction sums entries
    of both runs, so the table's probe (its dense MLP half, per batch size) is timed again alongside
    the new entries and they are scaled by its ratio: added at the speed the table was measured at.
    Reducing chains and whole models come only with their parts (`to_time`)."""
    cached = LatencyTable.load(path) if path.exists() else None
    have = cached.keys() if cached else set()
    missing = to_time(have, keys)
    if cached is not None and not missing:
        return cached
    if cached is not None and cached.device.runtime != (runtime := runtime_name(torch.device(device))):
        raise ValueError(
            f"{path} was measured with {cached.device.runtime} and this process runs {runtime}: "
            "entries timed now would not match; run with the table's runtime, or delete the file to re-measure"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".new.json")  # its .partial.jsonl lets an interrupted run resume
    timing = timing or Timing()
    probes = _probes(cached, missing) if cached is not None else {}
    keys = missing + [probe.model_dump(exclude={"median_ms", "spread_ms"}) for probe in probes.values()]
    fresh = profile(keys, name=name, out=scratch, device=device, threads=threads, timing=timing, progress=progress)
    table = LatencyTable.parse(fresh, name)
    if cached is not None:
        table = cached.merged(_at_speed_of(table, probes))
    table.save(path)
    scratch.unlink(missing_ok=True)
    return table


def to_time(have: set[str], keys: list[dict]) -> list[dict]:
    """The entries of `keys` that a table holding `have` (entry ids) lacks and can gain: all of them,
    except reducing chains and whole models whose parts the table already holds. Those composites are
    compared with their parts, and timed in another run than the parts were, the machine's drift
    between the two runs (a few percent) would swamp the fraction of a millisecond they measure: a
    table gains them only with their parts, when measured anew or for a new shape or batch size."""
    missing = [k for k in keys if entry_id(k) not in have]
    return [
        k
        for k in missing
        if k["op"] not in ("reducing_chain", "model")
        or not any(entry_id(part) in have for part in composite_parts(k))
    ]


def _probes(table: LatencyTable, keys: list[dict]) -> dict[tuple[int, int], object]:
    """Per (batch, embed dim) of `keys`: the table's widest MLP entry at the most tokens, if it has one."""
    probes = {}
    for entry in table.entries:
        group = (entry.batch, entry.embed_dim)
        if entry.op == "mlp" and any((k["batch"], k["embed_dim"]) == group for k in keys):
            best = probes.get(group)
            if best is None or (entry.tokens, entry.mlp_hidden) > (best.tokens, best.mlp_hidden):
                probes[group] = entry
    return probes


def _at_speed_of(fresh: LatencyTable, probes: dict[tuple[int, int], object]) -> LatencyTable:
    """`fresh` without its re-timed probes, each entry scaled by its group's probe: table ms / ms now."""
    ids = {entry_id(p.model_dump()): p for p in probes.values()}
    ratio = {
        (e.batch, e.embed_dim): ids[entry_id(e.model_dump())].median_ms / e.median_ms
        for e in fresh.entries
        if entry_id(e.model_dump()) in ids and e.median_ms > 0
    }
    entries = []
    for e in fresh.entries:
        if entry_id(e.model_dump()) not in ids:
            r = ratio.get((e.batch, e.embed_dim), 1.0)
            entries.append(e.model_copy(update={"median_ms": e.median_ms * r, "spread_ms": e.spread_ms * r}))
    return fresh.model_copy(update={"entries": tuple(entries)})


def _coverage(table: LatencyTable) -> str:
    dims = sorted({e.embed_dim for e in table.entries})
    batches = ", ".join(str(b) for b in table.device.batch_sizes)
    return f"embed dim {', '.join(map(str, dims))} at batch {batches} ({len(table.entries)} entries)"
