"""Growing a measured table: the entries a cached table lacks are timed on this machine and added,
at the speed the table was measured at, so a table made before an op was priced (or for fewer batch
sizes) keeps its values and gains just what the grid now plans."""

from __future__ import annotations

from pathlib import Path

from latency_models.profiling import Execution, Timing, composite_parts, entry_id, profile, runtime_name
from latency_models.schema import LatencyTable

__all__ = ["complete_table", "to_time"]


def complete_table(
    path: Path,
    keys: list[dict],
    *,
    name: str,
    execution: Execution | None = None,
    threads: int | None = None,
    timing: Timing | None = None,
    progress: bool = True,
) -> LatencyTable:
    """The table at `path` with every entry of `keys`: the missing ones (all of them if there is no
    file yet, the merge entries of a table made before merging was priced) are timed on this machine
    now and added; entries already there keep their values. Returns the table, saved back to `path`.
    Refuses to add to a table timed with another runtime (torch version, backend or allocator) or
    execution (dtype, mode).

    A shared machine's speed wanders by several percent between runs, and a prediction sums entries
    of both runs, so the table's probe (its dense MLP half, per batch size) is timed again alongside
    the new entries and they are scaled by its ratio: added at the speed the table was measured at.
    Reducing chains and whole models come only with their parts (`to_time`)."""
    cached = LatencyTable.load(path) if path.exists() else None
    have = cached.keys() if cached else set()
    missing = to_time(have, keys)
    if cached is not None and not missing:
        return cached
    execution = execution or Execution()
    if cached is not None:
        ran, runs = (
            f"{cached.device.runtime} in {cached.device.dtype}, {cached.device.mode}",
            f"{runtime_name(execution.torch_device)} in {execution.dtype}, {execution.mode}",
        )
        if ran != runs:
            raise ValueError(
                f"{path} was measured with {ran} and this process runs {runs}: entries timed now would not "
                "match; run with the table's runtime, or delete the file to re-measure"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".new.json")  # its .partial.jsonl lets an interrupted run resume
    timing = timing or Timing()
    probes = _probes(cached, missing) if cached is not None else {}
    keys = missing + [probe.model_dump(exclude={"median_ms", "spread_ms"}) for probe in probes.values()]
    fresh = profile(
        keys, name=name, out=scratch, execution=execution, threads=threads, timing=timing, progress=progress
    )
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
        if k["op"] not in ("reducing_chain", "model") or not any(entry_id(part) in have for part in composite_parts(k))
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
