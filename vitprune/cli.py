"""The `vitprune` command line: a thin shell over the library packages.

vitprune prune     build a pruned model from a timm model + weights + config, save a bundle
vitprune evaluate  accuracy, fidelity to the dense model, params, FLOPs, latency (--json)
vitprune export    ONNX file from a bundle, checked against PyTorch with onnxruntime
vitprune latency   measured latency of a bundle or a dense model at several batch sizes
(and the latency-table commands of `vitprune.cli_latency`: profile, devices, lut;
the search command of `vitprune.cli_search`: search;
the training commands of `vitprune.cli_train` and `vitprune.cli_thresholds`: finetune, learn-thresholds;
the quantisation command of `vitprune.cli_quantise`: quantise;
the service commands of `vitprune.cli_server`: serve, worker;
the REST client of `vitprune.cli_client`: submit, jobs, download)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vitprune.allocator import arrange
from vitprune.arguments import ints
from vitprune.cli_client import add_commands as add_client_commands
from vitprune.cli_latency import add_commands as add_latency_commands
from vitprune.cli_quantise import add_commands as add_quantise_commands
from vitprune.cli_search import add_commands as add_search_commands
from vitprune.cli_server import add_commands as add_server_commands
from vitprune.cli_thresholds import add_commands as add_threshold_commands
from vitprune.cli_train import add_commands as add_train_commands

# Building the parser imports nothing heavy: `vitprune --help` and the client commands never load
# torch, timm, Optuna, SQLAlchemy or FastAPI. Each command imports what it needs when it runs.
if TYPE_CHECKING:
    import torch

    from pruning.config import PruneConfig
    from pruning.data import ImageSet
    from pruning.stages import ModelRecord


def _user_errors() -> tuple[type[Exception], ...]:
    """Every error vitprune raises about a user's input is a ValueError (config, weights, data, bundle,
    unsupported model; pydantic's ValidationError too); export failures are ExportError (only a command
    that exported can have raised one, so its module is loaded if it matters)."""
    export = sys.modules.get("pruning.export")
    return (ValueError, OSError) + ((export.ExportError,) if export is not None else ())


def _add_dense_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("dense model")
    group.add_argument("--model", required=required, help="timm model name, e.g. deit_tiny_patch16_224")
    group.add_argument("--weights", type=Path, help="local .safetensors or .pth/.pt file of the dense model")
    group.add_argument("--pretrained", action="store_true", help="download timm's pretrained weights (needs internet)")


def _add_data_options(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    parser.add_argument(flag, type=Path, help=help_text)
    parser.add_argument("--class-map", type=Path, help="file with one class name per line (line number = index)")
    parser.add_argument("--max-images", type=int, help="use at most this many images (spread over classes)")
    parser.add_argument("--batch-size", type=int, default=64)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pruning (a --config file, or the uniform options)")
    group.add_argument("--config", type=Path, help="PruneConfig JSON file")
    group.add_argument("--keep", type=float, help="top-k keep ratio at the --at blocks")
    group.add_argument("--threshold", type=float, help="score threshold (x mean score) at the --at blocks")
    group.add_argument("--at", type=ints, default=(), help="blocks that reduce tokens, e.g. 3,6,9")
    group.add_argument("--package-token", action="store_true", help="fuse dropped tokens into one token")
    group.add_argument("--score", choices=["cls_attn", "head_weighted"], default="cls_attn")
    group.add_argument("--head-ratio", type=float, default=1.0, help="share of heads kept in every block")
    group.add_argument("--mlp-ratio", type=float, default=1.0, help="share of MLP channels kept in every block")
    group.add_argument("--round-to", type=int, default=8, help="MLP widths are multiples of this")


def _dense_model(args: argparse.Namespace) -> torch.nn.Module:
    from pruning.loading import WeightsError, create_model

    if not args.weights and not args.pretrained:
        raise WeightsError(
            f"no weights for {args.model}: pass --weights path/to/model.safetensors (or .pth), or --pretrained"
        )
    return create_model(args.model, weights=args.weights, pretrained=args.pretrained and not args.weights)


def _prune_config(args: argparse.Namespace, dense: torch.nn.Module) -> PruneConfig:
    from pruning.config import PruneConfig
    from pruning.model import describe

    spec = describe(dense, args.model)
    if args.config:
        config = PruneConfig.model_validate_json(args.config.read_text())
    else:
        config = PruneConfig.uniform(
            spec,
            keep_ratio=args.keep,
            threshold=args.threshold,
            at=args.at,
            head_ratio=args.head_ratio,
            mlp_ratio=args.mlp_ratio,
            package_token=args.package_token,
            score=args.score,
            round_to=args.round_to,
        )
    config.check(spec)
    return config


def _images(root: Path, model: torch.nn.Module, args: argparse.Namespace) -> ImageSet:
    from timm.data import resolve_data_config

    from pruning.data import load_image_folder

    data_config = resolve_data_config({}, model=model)
    return load_image_folder(root, data_config, class_map=args.class_map, max_images=args.max_images)


def _measure(
    model: torch.nn.Module, images: ImageSet | None, batches: tuple[int, ...], threads: int | None
) -> dict[str, dict]:
    """Latency per batch size; models whose token counts differ per image are timed on real images."""
    from pruning.model import PrunedViT
    from pruning.timing import measure_latency

    results = {}
    for batch in batches:
        inputs = None
        if images is not None and isinstance(model, PrunedViT) and model.config.per_image:
            inputs = next(images.subset(range(min(batch, len(images)))).batches(batch))[0]
        stats = measure_latency(model, batch_size=batch, threads=threads, inputs=inputs)
        results[str(batch)] = stats.to_dict()
    return results


def cmd_prune(args: argparse.Namespace) -> int:
    """Run the model stages (`pruning.stages.DEFAULT_STAGES`, as the search's Pareto models do) on one config.

    The dense model goes through build and evaluate first, as in the search: its logits are the
    reference for fidelity, and its figures stand beside the pruned model's in metrics.json.
    """
    from pruning.bundle import TIMM_PRETRAINED
    from pruning.config import PruneConfig
    from pruning.image_sets import describe_images, eval_data_config, image_set_name
    from pruning.model import describe
    from pruning.quantisation.precisions import FLOAT
    from pruning.stages import DEFAULT_STAGES, ModelRecord, StageInputs, run_stages

    if args.precision != FLOAT and not args.calib:
        raise ValueError(f"--precision {args.precision} calibrates activation ranges on images: give --calib DIR")
    dense = _dense_model(args)
    config = _prune_config(args, dense)
    calibration, calib = None, None
    if args.calib:
        calib = _images(args.calib, dense, args)
        calibration = [images for images, _ in calib.batches(args.batch_size)]
    val = _images(args.val, dense, args) if args.val else None
    dense_inputs = StageInputs(dense=dense, name=args.model, val=val, eval_batch=args.batch_size)
    _, reference = run_stages(
        ("build", "evaluate"), ModelRecord(PruneConfig.dense(describe(dense, args.model)), dense_inputs)
    )
    data_config = eval_data_config(dense)  # what `_images` decoded with

    def report(record: ModelRecord) -> dict:
        """metrics.json of `vitprune prune`: size, FLOPs, the validation figures and what they were measured on."""
        metrics: dict = {"params": record.params}
        metrics |= _flop_figures(record)
        if record.evaluation is not None:
            metrics |= {"dataset": image_set_name(args.val), **record.evaluation.to_dict()}
        datasets = {}
        if val is not None:
            datasets["val"] = describe_images(image_set_name(args.val), val, data_config)
        if calib is not None:
            datasets["calib"] = describe_images(image_set_name(args.calib), calib, data_config)
        if datasets:
            metrics["datasets"] = datasets
        metrics["precision"] = record.quantisation["precision"] if record.quantisation else FLOAT
        dense_figures = {"params": reference.params, **_flop_figures(reference)}
        if reference.evaluation is not None:
            dense_figures["val"] = reference.evaluation.to_dict()
        return metrics | {"dense": dense_figures}

    inputs = StageInputs(
        dense=dense,
        name=args.model,
        calibration=calibration,
        recover=args.recover,
        precision=args.precision,
        val=val,
        reference=reference.logits,
        eval_batch=args.batch_size,
        out=args.out,
        report=report,
        weights=args.weights,
        onnx=args.onnx,
        overwrite=args.overwrite,
    )
    provenance = {"weights": args.weights.name if args.weights else TIMM_PRETRAINED, "recover": args.recover}
    _, record = run_stages(DEFAULT_STAGES, ModelRecord(config, inputs, provenance))
    print(json.dumps({"bundle": str(record.bundle), "config_key": record.config.key(), **record.metrics}))
    return 0


def _flop_figures(record: ModelRecord) -> dict:
    """GFLOPs per image as the evaluate stage counted them (and over how many images, where they differ per image)."""
    if record.flops is None:
        return {}
    figures: dict = {"gflops": round(record.flops / 1e9, 4)}
    if record.flops_images is not None:
        figures["gflops_images"] = record.flops_images
    return figures


def _model_under_test(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(model to measure, dense reference or None)."""
    from pruning.bundle import load_bundle
    from pruning.model import prune_model

    dense = _dense_model(args) if args.model else None
    if args.bundle:
        return load_bundle(args.bundle), dense
    if dense is None:
        raise ValueError("give --bundle PATH, or --model NAME with --weights/--pretrained")
    if args.config or args.keep or args.threshold or args.head_ratio < 1 or args.mlp_ratio < 1:
        return prune_model(dense, _prune_config(args, dense), name=args.model), dense
    return dense, dense


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pruning.flops import count_flops, count_params
    from pruning.metrics import evaluate, predict

    model, dense = _model_under_test(args)
    images = _images(args.data, dense or model.model, args)
    reference = predict(dense, images, batch_size=args.batch_size) if dense is not None else None
    result, _ = evaluate(model, images, reference_logits=reference, batch_size=args.batch_size)
    report = result.to_dict() | {
        "params": count_params(model),
        "flops": count_flops(model, next(images.batches(8))[0]),
        "skipped_images": len(images.skipped),
    }
    if args.latency_batch:
        report["latency"] = _measure(model, images, args.latency_batch, args.threads)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>15}: {round(value, 4) if isinstance(value, float) else value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pruning.bundle import load_bundle
    from pruning.export import export_onnx

    pruned = load_bundle(args.bundle)
    report = export_onnx(pruned, args.out, batch_size=args.batch, dynamic_batch=not args.static, opset=args.opset)
    print(json.dumps(report.to_dict()))
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from pruning.model import PrunedViT

    model, _ = _model_under_test(args)
    images = _images(args.data, model.model if isinstance(model, PrunedViT) else model, args) if args.data else None
    report = {"latency": _measure(model, images, args.batch, args.threads)}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitprune", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    from pruning.quantisation.precisions import FLOAT, PRECISIONS  # no torch: `vitprune --help` stays fast

    prune = commands.add_parser("prune", help="build a pruned model and save it as a bundle")
    _add_dense_options(prune, required=True)
    _add_config_options(prune)
    _add_data_options(prune, "--calib", "calibration images (ImageFolder): importance and weight recovery")
    prune.add_argument("--val", type=Path, help="validation images for the bundle's metrics (kept apart from --calib)")
    prune.add_argument("--recover", action="store_true", help="refit output projections by least squares")
    prune.add_argument(
        "--precision",
        choices=[FLOAT, *PRECISIONS],
        default=FLOAT,
        help="quantise the pruned model (after recovery), its activation ranges calibrated on --calib",
    )
    prune.add_argument("--onnx", action="store_true", help="also write model.onnx into the bundle")
    prune.add_argument("--out", type=Path, required=True, help="bundle directory, or a path ending in .zip")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    prune.set_defaults(run=cmd_prune)

    for name, run, help_text in (
        ("evaluate", cmd_evaluate, "accuracy, fidelity, params, FLOPs and latency of a model"),
        ("latency", cmd_latency, "measured latency of a model"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--bundle", type=Path, help="a pruned model bundle (directory or .zip)")
        _add_dense_options(sub, required=False)
        _add_config_options(sub)
        _add_data_options(sub, "--data", "images (ImageFolder, or a flat folder without labels)")
        sub.add_argument("--threads", type=int, help="torch threads for latency (default: torch's)")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.set_defaults(run=run)
    commands.choices["evaluate"].add_argument(
        "--latency-batch", type=ints, default=(1,), help="batch sizes to time, e.g. 1,32 ('' to skip)"
    )
    commands.choices["latency"].add_argument("--batch", type=ints, default=(1, 32), help="batch sizes, e.g. 1,32")

    export = commands.add_parser("export", help="export a bundle to ONNX, verified with onnxruntime")
    export.add_argument("bundle", type=Path)
    export.add_argument("--out", type=Path, required=True, help="output .onnx file")
    export.add_argument("--batch", type=int, default=1, help="example batch size")
    export.add_argument("--static", action="store_true", help="fixed batch size instead of a dynamic one")
    export.add_argument("--opset", type=int, default=18)
    export.set_defaults(run=cmd_export)
    add_latency_commands(commands)
    add_search_commands(commands)
    add_train_commands(commands)
    add_threshold_commands(commands)
    add_quantise_commands(commands)
    add_server_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate" and not args.data:
        parser.error("evaluate needs --data DIR")
    if argv is None:  # the program itself, not a call from Python: it may re-execute under tcmalloc
        arrange(args.command, sys.argv[1:])
    try:
        return args.run(args)
    except _user_errors() as err:
        print(f"vitprune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
