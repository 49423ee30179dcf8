"""`vitprune finetune`: recovery training of a pruned bundle by distillation from its dense model.

The new bundle's figures are re-measured on validation images the training never saw (`--val`, or a
seeded `--val-share` of `--data` held out from training); the figures of the bundle it came from
(its validation and calibration figures) move under `before_fine_tune`, and its card says how the
model was trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.compute import COMPUTE_HELP

if TYPE_CHECKING:
    from torch import nn

    from pruning.data import ImageSet

__all__ = ["add_commands"]

STALE_AFTER_TRAINING = (
    "val",
    "dataset",
    "n_images",
    "top1",
    "top5",
    "agreement",
    "kl",
    "top1_se",
    "agreement_se",
    "kl_se",
    "calib_accuracy",
    "calib_accuracy_se",
    "calib_score",
    "objective",
)
"""metrics.json figures of the model before training: moved under `before_fine_tune`."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    from pruning.training.config import FineTuneConfig

    defaults = FineTuneConfig()
    parser = commands.add_parser("finetune", help="train a pruned bundle back towards its dense model (distillation)")
    parser.add_argument("bundle", type=Path, help="the pruned bundle (directory or .zip)")
    parser.add_argument("--data", type=Path, required=True, help="training images (ImageFolder; labels optional)")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--val", type=Path, help="validation images for the new bundle's figures (apart from --data)")
    held.add_argument(
        "--val-share", type=float, help="without --val: hold out this share of --data (seeded) for validation"
    )
    parser.add_argument("--class-map", type=Path, help="file with one class name per line (line number = index)")
    parser.add_argument("--max-images", type=int, help="use at most this many training images")
    parser.add_argument("--weights", type=Path, help="the dense model's weights, the teacher (those pruned from)")
    parser.add_argument("--pretrained", action="store_true", help="timm's pretrained weights as teacher (internet)")
    parser.add_argument("--out", type=Path, required=True, help="the new bundle: a directory or a path ending in .zip")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx into the new bundle")
    recipe = parser.add_argument_group("recipe (pruning.training.FineTuneConfig)")
    for kind, names in (
        (int, ("steps", "batch_size", "eval_every", "patience", "seed")),
        (
            float,
            (
                "lr",
                "weight_decay",
                "warmup",
                "temperature",
                "label_weight",
                "feature_weight",
                "mixup",
                "cutmix",
                "holdout",
            ),
        ),
    ):
        for name in names:
            described = FineTuneConfig.model_fields[name].description
            recipe.add_argument(
                f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), help=described
            )
    recipe.add_argument("--ema", type=float, default=defaults.ema, help="EMA decay of the weights (0: none)")
    recipe.add_argument("--randaugment", default=defaults.randaugment, help="timm RandAugment string ('' for none)")
    run = parser.add_argument_group("run")
    run.add_argument("--compute", default="auto", help=COMPUTE_HELP.replace("trials are scored", "to train"))
    run.add_argument("--checkpoint", type=Path, help="directory for checkpoints: the same command again resumes")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    run.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    parser.set_defaults(run=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from pruning.bundle import load_bundle, read_bundle_json
    from pruning.compute import compute_device
    from pruning.data import load_image_folder
    from pruning.image_files import shared_images
    from pruning.image_sets import describe_images, eval_data_config, image_set_name
    from pruning.metrics import classification_metrics, predict
    from pruning.stages import ModelRecord, StageInputs, run_stages

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(args)
    device, rank = _processes(compute_device(args.compute))
    student = load_bundle(args.bundle)
    config, metrics = read_bundle_json(args.bundle)
    teacher = _teacher(args, config)
    data_config = eval_data_config(teacher, student.spec.image_size)
    if args.val is not None and shared_images(args.data, args.val):
        raise ValueError(f"--data ({args.data}) and --val ({args.val}) share images: validation must be held out")
    train = load_image_folder(args.data, data_config, class_map=args.class_map)
    val: ImageSet | None = None
    if args.val is not None:
        val = load_image_folder(args.val, data_config, class_map=args.class_map)
    elif args.val_share:
        val, train = train.split(args.val_share, seed=recipe.seed)
    if args.max_images and args.max_images < len(train):
        train = train.subset([i * len(train) // args.max_images for i in range(args.max_images)])  # every class
    reference = predict(teacher, val) if val is not None else None
    before = classification_metrics(predict(student, val), val.labels, reference) if val is not None else None
    names = {"train": image_set_name(args.data), "val": image_set_name(args.val or args.data)}

    def report(record: ModelRecord) -> dict[str, Any]:
        new = {k: v for k, v in metrics.items() if k not in STALE_AFTER_TRAINING}
        new["before_fine_tune"] = {k: metrics[k] for k in STALE_AFTER_TRAINING if k in metrics}
        if before is not None:
            new["before_fine_tune"]["val"] = before.to_dict()
            new["val"] = record.evaluation.to_dict()
            dense = dict(new.get("dense") or {})
            new["dense"] = dense | {"val": classification_metrics(reference, val.labels, reference).to_dict()}
        elif isinstance(new.get("dense"), dict):
            new["dense"].pop("val", None)  # measured on images this command did not score
        if student.config.per_image:  # token counts change with the weights: the old price no longer holds
            for key in ("predicted_ms", "measured_ms", "latency_mismatch", "over_budget"):
                new.pop(key, None)
        datasets = {"train": describe_images(names["train"], train, data_config)}
        if val is not None:
            datasets["val"] = describe_images(names["val"], val, data_config)
        return new | {"params": record.params, "fine_tune": record.fine_tuned, "datasets": datasets}

    inputs = StageInputs(
        dense=teacher,
        name=config["base_model"],
        fine_tune=recipe,
        train=train,
        compute=device,
        checkpoint=args.checkpoint,
        progress=not args.json,
        val=val,
        reference=reference,
        out=args.out,
        report=report,
        weights=args.weights,
        model_kwargs=config.get("model_kwargs"),
        onnx=args.onnx,
        overwrite=args.overwrite,
    )
    recorded = config.get("provenance") or {}
    provenance = dict(recorded.get("extra") or {}) | {"fine_tuned_from": Path(args.bundle).name}
    if args.weights is None and recorded.get("weights_sha256"):
        provenance["weights_sha256"] = recorded["weights_sha256"]
    # Under torchrun every process trains; rank 0 alone scores and saves the result.
    stages = ("fine-tune", "evaluate", "save") if rank == 0 else ("fine-tune",)
    _, record = run_stages(stages, ModelRecord(student.config, inputs, provenance), student)
    if rank != 0:
        return 0
    summary = {"bundle": str(record.bundle), "val": record.metrics.get("val"), "fine_tune": record.fine_tuned}
    if before is not None:
        summary["before"] = before.to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        print(_in_words(summary))
    return 0


def _processes(device):
    """(this process's device, its rank): under torchrun (WORLD_SIZE > 1) joins the process group, on
    NCCL with a GPU per process (LOCAL_RANK) or on gloo for CPUs."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device, dist.get_rank()


def _recipe(args: argparse.Namespace):
    from pruning.training.config import FineTuneConfig

    fields = {name: getattr(args, name) for name in FineTuneConfig.model_fields if hasattr(args, name)}
    fields["ema"] = args.ema or None
    fields["randaugment"] = args.randaugment or None
    return FineTuneConfig(**fields)


def _teacher(args: argparse.Namespace, config: dict[str, Any]) -> nn.Module:
    """The dense model the bundle was pruned from; refused when the weights are not those it records."""
    from pruning.bundle import file_sha256
    from pruning.loading import WeightsError, create_model

    if not args.weights and not args.pretrained:
        raise WeightsError("the teacher is the dense model: pass --weights path/to/model.safetensors, or --pretrained")
    recorded = (config.get("provenance") or {}).get("weights_sha256")
    if args.weights and recorded and file_sha256(args.weights) != recorded:
        raise WeightsError(
            f"{args.weights} is not the dense model this bundle was pruned from (its sha256 differs from the"
            " bundle's weights_sha256): distil from the weights it was pruned from"
        )
    kwargs = config.get("model_kwargs") or {}
    return create_model(config["base_model"], weights=args.weights, pretrained=args.pretrained, **kwargs)


def _in_words(summary: dict[str, Any]) -> str:
    run = summary["fine_tune"]
    lines = [f"fine-tuned {run['steps']} steps in {run['seconds']:.0f} s on {run['device']}: {summary['bundle']}"]
    if run.get("holdout_kl") is not None:
        lines.append(f"held-out KL to the dense model: {run['holdout_kl_before']:.4f} -> {run['holdout_kl']:.4f}")
    before, after = summary.get("before"), summary.get("val")
    if before and after:
        for key, name in (("top1", "validation top-1"), ("agreement", "agreement with dense"), ("kl", "KL")):
            if before.get(key) is not None:
                unit = "" if key == "kl" else "%"
                lines.append(f"{name}: {before[key]:.2f}{unit} -> {after[key]:.2f}{unit} on {after['n_images']} images")
    return "\n".join(lines)
