"""Latency-table commands of the `vitprune` command line.

vitprune profile        measure this machine's latency table for a model shape (cached as host-cpu / cuda)
vitprune devices        list the device profiles a search can target, and what each one's figures rest on
vitprune devices fit    fit an analytic preset to a few timings measured on a device, stored as a named device
vitprune lut validate   random pruned configs, measured here vs predicted by a table
vitprune lut import     store a table measured elsewhere (python -m latency_models.profiling) as a device
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pruning.quantisation.precisions import FLOAT, PRECISIONS
from vitprune.arguments import batch_sizes

# Each command imports torch and the latency models when it runs, so building the parser stays light.
if TYPE_CHECKING:
    import torch


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """The dense model: with --weights if given; latency does not depend on weight values."""
    from pruning.loading import create_model

    return create_model(args.model, weights=getattr(args, "weights", None))


def cmd_profile(args: argparse.Namespace) -> int:
    from latency_models.devices.measured import MEASURED
    from latency_models.predictor import shape_of
    from latency_models.profiling import Timing, plan, profile
    from latency_models.registry import Registry
    from latency_models.schema import LatencyTable
    from pruning.model import describe

    spec = describe(_model(args), args.model)
    shape = shape_of(spec)
    keys = plan(shape, args.batch)
    print(f"grid for {args.model} at batch {args.batch}: {len(keys)} entries x {args.passes} passes", file=sys.stderr)
    # What to pass as --shape to the torch-only profiler on another device.
    print(f"shape: {json.dumps(dataclasses.asdict(shape))}", file=sys.stderr)
    if args.dry_run:
        return 0
    timing = Timing(passes=args.passes)
    device = "host-cpu" if args.device == "cpu" else args.device
    if args.out:
        execution = MEASURED[device].execution
        table = profile(
            keys, name=args.name or device, out=args.out, execution=execution, threads=args.threads, timing=timing
        )
        LatencyTable.parse(table, str(args.out))
        print(f"wrote {args.out} ({execution.describe()})")
        return 0
    registry = Registry(threads=args.threads, timing=timing)
    registry.table(device, spec, args.batch)
    print(f"{device}: table cached at {registry.measured_path(device)}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from latency_models.registry import Registry

    devices = Registry(threads=args.threads).devices()
    if args.json:
        print(json.dumps([d.__dict__ for d in devices]))
        return 0
    width = max(len(d.name) for d in devices)
    for d in devices:
        state = "" if d.available else " [not available here]"
        print(f"{d.name:<{width}}  {d.kind:<8}  {d.description}{state}; {d.coverage}")
        if d.basis:
            print(f"{'':<{width}}  {'':<8}  rests on: {d.basis}")
    return 0


def cmd_devices_fit(args: argparse.Namespace) -> int:
    from latency_models.devices.fitted import FittedKind
    from latency_models.fitting import read_timings
    from latency_models.registry import Registry

    rows = read_timings(args.timings)
    fitted = FittedKind(Registry().settings)
    record, left_out = fitted.fit(args.name, args.base, rows, dtype=args.dtype)
    path = fitted.path(args.name)
    if args.json:
        print(
            record.model_dump_json(by_alias=True, include={"name", "base", "cores", "dtype", "free", "rows", "summary"})
        )
    else:
        print(_fit_report(record, left_out))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _fit_report(record, left_out: int) -> str:
    """The fit in words: each timing with its errors, the parameters moved, the summary."""
    s = record.summary

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f}%"

    lines = [
        f"{record.name}: {record.configuration} ({record.dtype}) fitted on {s['timings']} timings of "
        f"{s['models']} models"
        + (f" ({left_out} timing{'s' * (left_out > 1)} of other configurations left out)" if left_out else ""),
        "",
        "| model | image | batch | measured ms | preset ms | fitted ms | fit error | left-out error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record.rows:
        lines.append(
            f"| {row.model} | {row.image_size} | {row.batch} | {row.ms:.3g} | {row.preset_ms:.3g} | "
            f"{row.fitted_ms:.3g} | {pct(row.error())} | {pct(row.error('lomo'))} |"
        )
    lines += ["", "| parameter | preset | fitted | range |", "|---|---:|---:|---|"]
    for name, value in record.free.items():
        lines.append(f"| {name} | {value.preset:.4g} | {value.fitted:.4g} | {value.lower:g} .. {value.upper:g} |")
    lines += ["", f"basis: {record.basis()}"]
    base = f"median error {100 * s['base_median_error']:.1f}%, worst {100 * s['base_worst_error']:.1f}%"
    lines.append(f"the preset unfitted: {base}")
    if s["at_bound"]:
        lines.append(
            "warning: the fit stopped at a physical bound ("
            + "; ".join(s["at_bound"])
            + "): the timings ask for more than the base allows there; check that they are of the device, "
            "core configuration and dtype the base describes"
        )
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    from timm.data import resolve_data_config

    from latency_models.devices.base import INT8_PRICED
    from latency_models.predictor import LatencyPredictor
    from latency_models.profiling import Execution, Timing, runtime_name
    from latency_models.registry import Registry
    from latency_models.schema import LatencyTable
    from latency_models.validate import VALIDATION_TIMING, validate
    from pruning.data import load_image_folder
    from pruning.model import describe

    dense = _model(args)
    spec = describe(dense, args.model)
    if args.table:
        predictor = LatencyPredictor(LatencyTable.load(args.table))
        if args.precision != FLOAT and predictor.table.device.dtype != PRECISIONS[args.precision].dtype:
            raise ValueError(
                f"--table {args.table} prices {predictor.table.device.dtype} models, not --precision {args.precision}"
            )
    else:
        registry = Registry(threads=args.threads)
        name = registry.priced_as(args.device, args.precision)
        if name is None:
            raise ValueError(
                f"--device {args.device} has no {args.precision} price (devices with one: {INT8_PRICED}); "
                "validate it at --precision fp32"
            )
        predictor = registry.predictor(name, spec, [args.batch])
    info = predictor.table.device
    here = runtime_name(Execution.of(info.model_dump()).torch_device)  # models are timed on the table's device
    if args.precision == FLOAT and info.kind == "measured" and info.runtime != here:
        print(
            f"warning: the table was timed with {info.runtime} and this process runs {here}; "
            "measurements here may not match it (preload the table's allocator, or re-profile)",
            file=sys.stderr,
        )
    images = None
    if args.data:
        found = load_image_folder(args.data, resolve_data_config({}, model=dense), max_images=args.batch)
        images = next(found.batches(args.batch))[0]

    def progress(done: int, total: int) -> None:
        print(f"\rtimed {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    passes = VALIDATION_TIMING.passes if args.passes is None else args.passes
    timing = Timing(passes=passes, warmup=VALIDATION_TIMING.warmup, min_round_s=VALIDATION_TIMING.min_round_s)
    report = validate(
        predictor,
        dense,
        configs=args.configs,
        batch=args.batch,
        seed=args.seed,
        threads=args.threads,
        images=images,
        timing=timing,
        name=args.model,
        progress=progress,
        precision=args.precision,
    )
    written = report.save(args.out) if args.out else []
    print(json.dumps(report.summary()) if args.json else report.to_markdown())
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from latency_models.registry import Registry

    registry = Registry()
    table = registry.import_table(args.table, args.name)
    print(f"imported {len(table.entries)} entries as device '{args.name}' ({registry.imported_path(args.name)})")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    prof = commands.add_parser("profile", help="measure this machine's latency table for a model shape")
    prof.add_argument("--model", required=True, help="timm model name, e.g. deit_tiny_patch16_224 (no weights needed)")
    prof.add_argument("--batch", type=batch_sizes, default=[1], help="batch sizes, e.g. 1,32")
    prof.add_argument(
        "--device",
        choices=["cpu", "cuda", "cuda-fp32"],
        default="cpu",
        help="cpu; cuda: the GPU in bf16 with CUDA graphs (as deployed); cuda-fp32: the GPU in float32, eagerly",
    )
    prof.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    prof.add_argument("--passes", type=int, default=5, help="timed rounds per entry, one per pass over the grid")
    prof.add_argument("--out", type=Path, help="write a standalone table file instead of the host-cpu/cuda cache")
    prof.add_argument("--name", help="device name stored in a --out table")
    prof.add_argument("--dry-run", action="store_true", help="print the grid size and exit")
    prof.set_defaults(run=cmd_profile)

    devices = commands.add_parser("devices", help="list the device profiles (measured, analytic, fitted, imported)")
    devices.add_argument("--threads", type=int, help="thread count of the host-cpu profile (default: torch's)")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(run=cmd_devices)
    actions = devices.add_subparsers(dest="action", metavar="{fit}", help="(none: list the devices)")
    fit = actions.add_parser(
        "fit",
        help="fit an analytic preset to timings measured on a device (see docs/fitting.md)",
        description="Fit an analytic preset's free parameters to end-to-end timings of dense ViTs measured on "
        "a device, and store it as a device that searches can target by name.",
    )
    fit.add_argument("--name", required=True, help="device name, e.g. my-phone (lowercase letters, digits, . _ -)")
    fit.add_argument(
        "--base",
        required=True,
        help="the preset to fit: mobile-cpu[:<soc>][@one|cluster|all|<threads>] or fpga[:<board>]",
    )
    fit.add_argument("--timings", type=Path, required=True, help="CSV: model, ms [, image_size, batch, cores, dtype]")
    fit.add_argument(
        "--dtype", choices=["float32", "int8", "int16", "w4a8"], help="fit the rows of this dtype (default: the file's)"
    )
    fit.add_argument("--json", action="store_true", help="print the fit as JSON")
    fit.set_defaults(run=cmd_devices_fit)

    lut = commands.add_parser("lut", help="latency tables: validate, import").add_subparsers(dest="lut", required=True)
    check = lut.add_parser("validate", help="random pruned configs measured here vs the table's predictions")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--device", default="host-cpu", help="device profile (see `vitprune devices`)")
    source.add_argument("--table", type=Path, help="a latency table file")
    check.add_argument("--model", required=True, help="timm model name, e.g. deit_tiny_patch16_224")
    check.add_argument("--weights", type=Path, help="dense weights (only threshold configs' token counts use them)")
    check.add_argument("--data", type=Path, help="images for threshold configs (default: random inputs)")
    check.add_argument("--batch", type=int, default=1)
    check.add_argument("--configs", type=int, default=50, help="random configs, the dense model included")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    check.add_argument("--passes", type=int, help="timed passes over the configs (default: the validation protocol's)")
    check.add_argument(
        "--precision", choices=[FLOAT, *PRECISIONS], default=FLOAT, help="fp32: models run as the table was "
        "timed; int8, int8-pow2: quantised, exported as ONNX QDQ and run by onnxruntime here, against the "
        "device's price for that precision (threshold configs left out)",
    )  # fmt: skip
    check.add_argument("--out", type=Path, help="write <out>.json, <out>.md and the scatter plot <out>.html")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(run=cmd_validate)

    imp = lut.add_parser("import", help="store a table file (e.g. measured on a user's device) as a named device")
    imp.add_argument("table", type=Path)
    imp.add_argument("--name", required=True, help="device name, e.g. pixel-8 (lowercase letters, digits, . _ -)")
    imp.set_defaults(run=cmd_import)
