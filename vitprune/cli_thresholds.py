"""`vitprune learn-thresholds`: token thresholds learned with the weights under a latency budget.

The dense model (`--model` + `--weights`), or a pruned bundle (`--from`, whose heads and MLP widths it
keeps; its token ops are replaced), is trained by distillation from the dense model with soft
thresholds at `--at` blocks and a differentiable latency term priced on `--device` at `--batch`
(`pruning.training.thresholds`); the result is physically pruned, its thresholds calibrated to the
budget on the training images. The new bundle is scored on validation images the training never saw
(`--val`, or a seeded `--val-share` of `--data`), and priced from the token counts it realises there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pruning.compute import COMPUTE_HELP
from vitprune.arguments import ints

__all__ = ["add_commands"]


def add_commands(commands: argparse._SubParsersAction) -> None:
    from pruning.training.config import FineTuneConfig
    from pruning.training.thresholds_config import ThresholdConfig

    recipe_defaults, defaults = FineTuneConfig(), ThresholdConfig()
    parser = commands.add_parser(
        "learn-thresholds", help="learn token thresholds with the weights under a latency budget (AS-ViT style)"
    )
    source = parser.add_argument_group("model (the dense model is also the teacher)")
    source.add_argument("--model", help="timm model name, e.g. deit_tiny_patch16_224 (without --from)")
    source.add_argument("--weights", type=Path, help="the dense model's weights (.safetensors or .pth)")
    source.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (needs internet)")
    source.add_argument("--from", dest="bundle", type=Path, help="a pruned bundle whose heads and MLP widths to keep")
    target = parser.add_argument_group("target")
    target.add_argument(
        "--device", required=True, help="a device the registry knows, e.g. mobile-cpu (see `vitprune devices`)"
    )
    target.add_argument("--batch", type=int, default=1, help="batch size the device runs (padded batches above 1)")
    budget = target.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ratio", type=float, help="budget as a share of the dense model's predicted latency")
    budget.add_argument("--budget-ms", type=float, help="budget in milliseconds per batch")
    data = parser.add_argument_group("images")
    data.add_argument("--data", type=Path, required=True, help="training images (ImageFolder; labels optional)")
    held = data.add_mutually_exclusive_group(required=True)
    held.add_argument("--val", type=Path, help="validation images for the bundle's figures (apart from --data)")
    held.add_argument("--val-share", type=float, help="hold out this share of --data (seeded) for validation")
    data.add_argument("--class-map", type=Path, help="file with one class name per line (line number = index)")
    data.add_argument("--max-images", type=int, help="use at most this many training images")
    recipe = parser.add_argument_group("recipe (pruning.training.ThresholdConfig and its FineTuneConfig)")
    recipe.add_argument("--at", type=ints, default=defaults.blocks, help="threshold blocks, e.g. 3,6,9")
    for name in ("tau", "latency_weight", "threshold_lr", "init", "calibration_images"):
        field = ThresholdConfig.model_fields[name]
        kind = int if field.annotation in (int, "int") else float
        recipe.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), help=field.description
        )
    for kind, names in (
        (int, ("steps", "batch_size", "eval_every", "seed")),
        (float, ("lr", "weight_decay", "warmup", "temperature", "label_weight", "mixup", "cutmix", "holdout")),
    ):
        for name in names:
            described = FineTuneConfig.model_fields[name].description
            recipe.add_argument(
                f"--{name.replace('_', '-')}", type=kind, default=getattr(recipe_defaults, name), help=described
            )
    recipe.add_argument("--ema", type=float, default=recipe_defaults.ema, help="EMA decay of the weights (0: none)")
    recipe.add_argument("--randaugment", default=recipe_defaults.randaugment, help="timm RandAugment ('' for none)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="the new bundle: a directory or a path ending in .zip")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--compute", default="auto", help=COMPUTE_HELP.replace("trials are scored", "to train"))
    run.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    run.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    parser.set_defaults(run=cmd_learn_thresholds)


def cmd_learn_thresholds(args: argparse.Namespace) -> int:
    import torch

    from latency_models.registry import Registry
    from pruning.compute import compute_device
    from pruning.config import PruneConfig
    from pruning.image_files import shared_images
    from pruning.image_sets import eval_data_config
    from pruning.metrics import predict
    from pruning.training.thresholds import learn_thresholds, threshold_config

    if args.threads:
        torch.set_num_threads(args.threads)
    config = _config(args)
    student, teacher, provenance = _models(args)
    spec = student.spec
    if max(config.blocks) >= len(spec.blocks):
        raise ValueError(f"--at {max(config.blocks)}: {spec.name} has blocks 0 to {len(spec.blocks) - 1}")
    priced = threshold_config(student.config, config.blocks, [1.0] * len(config.blocks))
    priced.check(spec)  # names the block where a threshold cannot go (e.g. one without heads)
    predictor = Registry(threads=args.threads).predictor(args.device, spec, [args.batch], progress=not args.json)
    dense_ms = predictor.predict(PruneConfig.dense(spec), spec, args.batch).ms
    budget_ms = args.budget_ms if args.budget_ms is not None else args.budget_ratio * dense_ms
    if budget_ms <= 0:
        raise ValueError(f"the budget must be positive, got {budget_ms:g} ms")

    def price(kept: list[float]) -> float:
        return predictor.predict(priced, spec, args.batch, kept_tokens=kept).ms

    data_config = eval_data_config(teacher, spec.image_size)
    if args.val is not None and shared_images(args.data, args.val):
        raise ValueError(f"--data ({args.data}) and --val ({args.val}) share images: validation must be held out")
    train, val = _images(args, data_config, config.recipe.seed)
    reference = predict(teacher, val)
    result = learn_thresholds(
        student,
        teacher,
        train,
        config,
        price,
        budget_ms,
        device_batch=args.batch,
        device=compute_device(args.compute),
        progress=not args.json,
    )
    teacher.cpu()
    student.cpu()
    record = _save(args, student, teacher, predictor, spec, train, val, reference, result, dense_ms, provenance)
    summary = {
        "bundle": str(record.bundle),
        "thresholds": result.thresholds,
        "predicted_ms": record.metrics["predicted_ms"],
        "budget_ms": record.metrics["budget_ms"],
        "meets_budget": record.metrics["meets_budget"],
        "val": record.metrics["val"],
        "learned_thresholds": result.to_dict(),
    }
    print(json.dumps(summary) if args.json else _in_words(summary))
    return 0


def _config(args: argparse.Namespace):
    from pruning.training.thresholds_config import ThresholdConfig
    from vitprune.cli_train import _recipe

    return ThresholdConfig(
        blocks=tuple(args.at),
        recipe=_recipe(args),
        tau=args.tau,
        latency_weight=args.latency_weight,
        threshold_lr=args.threshold_lr,
        init=args.init,
        calibration_images=args.calibration_images,
    )


def _models(args: argparse.Namespace):
    """(student, teacher, provenance): the dense model pruned to nothing, or the bundle `--from`."""
    from pruning.bundle import TIMM_PRETRAINED, load_bundle, read_bundle_json
    from pruning.config import PruneConfig
    from pruning.model import describe, prune_model
    from vitprune.cli_train import _teacher

    if args.bundle is not None:
        recorded, _ = read_bundle_json(args.bundle)
        if args.model and args.model != recorded["base_model"]:
            raise ValueError(f"--model {args.model} but the bundle was pruned from {recorded['base_model']}")
        teacher = _teacher(args, recorded)
        provenance = {"learned_from": Path(args.bundle).name}
        sha = (recorded.get("provenance") or {}).get("weights_sha256")
        if args.weights is None and sha:
            provenance["weights_sha256"] = sha
        return load_bundle(args.bundle), teacher, provenance
    if not args.model:
        raise ValueError("give the dense model (--model NAME with --weights FILE) or a pruned bundle (--from BUNDLE)")
    teacher = _teacher(args, {"base_model": args.model})
    student = prune_model(teacher, PruneConfig.dense(describe(teacher, args.model)), name=args.model)
    return student, teacher, {"weights": args.weights.name if args.weights else TIMM_PRETRAINED}


def _images(args: argparse.Namespace, data_config: dict[str, Any], seed: int):
    from pruning.data import load_image_folder

    train = load_image_folder(args.data, data_config, class_map=args.class_map)
    if args.val is not None:
        val = load_image_folder(args.val, data_config, class_map=args.class_map)
    else:
        if not 0 < args.val_share < 1:
            raise ValueError(f"--val-share must be between 0 and 1, got {args.val_share}")
        val, train = train.split(args.val_share, seed=seed)
    if args.max_images and args.max_images < len(train):
        train = train.subset([i * len(train) // args.max_images for i in range(args.max_images)])  # every class
    if len(val) == 0:
        raise ValueError("no validation images: use more images or a larger --val-share")
    return train, val


def _save(args, student, teacher, predictor, spec, train, val, reference, result, dense_ms, provenance):
    """Score the hard model on `val`, price it from the counts it realises there, and write the bundle."""
    from pruning.image_sets import describe_images, eval_data_config, image_set_name
    from pruning.metrics import classification_metrics
    from pruning.stages import ModelRecord, StageInputs, run_stages
    from pruning.tokens import padded_widths

    def price(model, counts) -> float:
        return predictor.predict(model.config, spec, args.batch, kept_tokens=padded_widths(counts, args.batch)).ms

    data_config = eval_data_config(teacher, spec.image_size)
    names = {"train": image_set_name(args.data), "val": image_set_name(args.val or args.data)}

    def report(record: ModelRecord) -> dict[str, Any]:
        kept = padded_widths(record.token_counts, args.batch)
        return {
            "val": record.evaluation.to_dict(),
            "predicted_ms": round(record.predicted_ms, 4),
            "budget_ms": result.budget_ms,
            "meets_budget": record.predicted_ms <= result.budget_ms,
            "kept_tokens": [round(k, 2) for k in kept],
            "device": args.device,
            "latency_batch": args.batch,
            "params": record.params,
            "gflops": round(record.flops / 1e9, 4),
            "gflops_images": record.flops_images,
            "dense": {
                "predicted_ms": round(dense_ms, 4),
                "val": classification_metrics(reference, val.labels, reference).to_dict(),
            },
            "learned_thresholds": result.to_dict(),
            "datasets": {
                "train": describe_images(names["train"], train, data_config),
                "val": describe_images(names["val"], val, data_config),
            },
        }

    inputs = StageInputs(
        dense=teacher,
        name=spec.name,
        val=val,
        reference=reference,
        price=price,
        latency_batch=args.batch,
        out=args.out,
        report=report,
        weights=args.weights,
        onnx=False,
        overwrite=args.overwrite,
    )
    blocks = ",".join(str(b) for b in result.blocks)
    provenance = provenance | {
        "device": args.device,
        "batch": args.batch,
        "thresholds": f"learned at blocks {blocks} with the weights (distillation + latency term), calibrated"
        f" to the budget on {result.calibration_images} training images",
    }
    _, record = run_stages(("evaluate", "time", "save"), ModelRecord(student.config, inputs, provenance), student)
    return record


def _in_words(summary: dict[str, Any]) -> str:
    run, val = summary["learned_thresholds"], summary["val"]
    met = "meets" if summary["meets_budget"] else "MISSES"
    lines = [
        f"learned thresholds {run['thresholds']} at blocks {run['blocks']} in {run['steps']} steps,"
        f" {run['seconds']:.0f} s: {summary['bundle']}",
        f"predicted {summary['predicted_ms']:.2f} ms on the validation images' token counts: {met} the budget"
        f" of {summary['budget_ms']:.2f} ms",
    ]
    if run.get("holdout_kl") is not None:
        lines.append(f"held-out KL to the dense model: {run['holdout_kl_before']:.4f} -> {run['holdout_kl']:.4f}")
    for key, name in (("top1", "validation top-1"), ("agreement", "agreement with dense"), ("kl", "KL")):
        if val.get(key) is not None:
            unit = "" if key == "kl" else "%"
            lines.append(f"{name}: {val[key]:.2f}{unit} on {val['n_images']} images")
    return "\n".join(lines)
