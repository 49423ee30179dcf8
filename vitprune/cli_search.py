"""`vitprune search`: the command-line face of the `search` package.

vitprune search   run (or resume) a pruning search to its Pareto front, written under --out
(`vitprune worker`, in `vitprune.cli_server`, joins the searches in a shared database.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# The job schema imports neither torch nor Optuna, so `vitprune submit` stays light.
from search.job import SAMPLERS, TOKEN_MODES, FineTuneJob, JobSpec, SearchSpace
from search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from vitprune.arguments import ints, strings

DB_ENV = "VITPRUNE_DB_URL"
"""The database shared with the service and other workers; default: a SQLite file in --out."""


def job_from_args(args: argparse.Namespace) -> JobSpec:
    """A JobSpec from --job FILE, or from the command-line options."""
    if args.job:
        return JobSpec.model_validate_json(args.job.read_text())
    needed = (("--model", args.model), ("--calib", args.calib))
    missing = [flag for flag, value in needed if not value]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (or a --job file)")
    device, table = args.device, None
    if device.endswith(".json"):
        table = Path(device)
        if not table.is_file():
            raise ValueError(f"--device {device}: no such latency table file")
        device = table.stem
    # Without --tokens the job searches the token op measured best on its device (search.job.default_tokens).
    tokens = {"tokens": args.tokens} if args.tokens else {}
    space = SearchSpace(
        **tokens,
        token_blocks=args.token_blocks,
        keep_min=args.keep_min,
        threshold_max=args.threshold_max,
        merge_group=args.merge_group,
        merge_max=args.merge_max,
        heads=args.heads,
        mlp=args.mlp,
        group=args.group,
        score=args.score,
        package_token=args.package_token,
        round_to=args.round_to,
        precisions=args.precisions,
        keep_float=args.keep_float,
    )
    return JobSpec(
        model=args.model,
        weights=args.weights,
        pretrained=args.pretrained,
        device=device,
        table=table,
        batch=args.batch,
        budget_ms=args.budget_ms,
        budget_ratio=args.budget_ratio,
        budget_margin=args.budget_margin,
        calib=args.calib,
        val=args.val,
        holdout=args.holdout,
        class_map=args.class_map,
        calib_images=args.calib_images,
        val_images=args.val_images,
        trials=args.trials,
        sampler=args.sampler,
        objective=args.objective,
        space=space,
        recover=not args.no_recover,
        fine_tune=FineTuneJob(models=args.fine_tune, steps=args.fine_tune_steps) if args.fine_tune else None,
        train=args.train,
        onnx=args.onnx,
        compute=args.compute,
        score_dtype=args.score_dtype,
        seed=args.seed,
        cheap_first=args.cheap_first,
    )


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all


def cmd_search(args: argparse.Namespace) -> int:
    import torch

    from search.run import run_search

    job = job_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    _quiet_optuna()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "job.json").write_text(job.model_dump_json(indent=2))
    url = args.db or os.environ.get(DB_ENV) or f"sqlite:///{args.out / 'search.db'}"
    result = run_search(job, url, args.out, show_progress=not args.json)
    print(json.dumps(result.to_dict()) if args.json else format_result(result.to_dict(), args.out))
    return 0


def format_result(result: dict, out: Path) -> str:
    """The front in words: every accuracy says which images it was measured on, validation first."""
    lines = [f"study {result['study']}: {result['trials']['complete']} trials, budget {result['budget_ms']:.2f} ms"]
    images = _images(result["models"])
    if images:
        lines.append(images)
    lines.append(f"dense: {_accuracy(result['dense']['val'])}  predicted {result['dense']['predicted_ms']:.2f} ms")
    for model in result["models"]:
        accuracy = _accuracy(model["val"])
        if model.get("calib_accuracy") is not None:
            accuracy += f", calibration top-1 {model['calib_accuracy']:.1f}%"
        if model.get("objective", "top1") != "top1" and model.get("calib_score") is not None:
            accuracy += f", calibration {OBJECTIVES[model['objective']].short} {model['calib_score']:.1f}%"
        if before := model.get("before_fine_tune"):
            accuracy += f" (fine-tuned; before: {_accuracy(before['val']).removeprefix('validation ')})"
        measured = f"  measured {model['measured_ms']:.2f} ms" if "measured_ms" in model else ""
        flag = "  (measured and predicted differ by >10%)" if model.get("latency_mismatch") else ""
        lines.append(f"{model['bundle']}: {accuracy}  predicted {model['predicted_ms']:.2f} ms{measured}{flag}")
    lines.append(f"front: {out / 'pareto.json'}, plot: {out / 'pareto.html'}")
    return "\n".join(lines)


def _accuracy(metrics: dict) -> str:
    """Validation top-1, or agreement with the dense model for unlabelled images."""
    if metrics["top1"] is not None:
        return f"validation top-1 {metrics['top1']:.1f}%"
    return f"validation agreement with the dense model {metrics['agreement']:.1f}%"


def _images(models: list[dict]) -> str | None:
    """The line naming the image sets, e.g. "images: validation NAME (N images), calibration NAME (N images)"."""
    datasets = next((m["datasets"] for m in models if m.get("datasets")), None)
    if not datasets:
        return None
    parts = [
        f"{role} {datasets[key]['name']} ({datasets[key]['images']} images)"
        for key, role in (("val", "validation"), ("calib", "calibration"))
        if key in datasets
    ]
    return "images: " + ", ".join(parts)


def add_job_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options `job_from_args` reads (shared with `vitprune submit`); returns the "run" group for more."""
    parser.add_argument("--job", type=Path, help="a JobSpec JSON file (instead of the options below)")
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="timm model name, e.g. deit_tiny_patch16_224")
    group.add_argument("--weights", type=Path, help="local .safetensors or .pth file of the dense model")
    group.add_argument("--pretrained", action="store_true", help="download timm's pretrained weights")
    group.add_argument(
        "--device", default="host-cpu", help="host-cpu, cuda, mobile-cpu, fpga, a preset, an import or TABLE.json"
    )
    group.add_argument("--batch", type=int, default=1, help="batch size the latency budget is for")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=float, help="latency budget in milliseconds per batch")
    budget.add_argument("--budget-ratio", type=float, help="latency budget as a share of the dense model's")
    group.add_argument(
        "--budget-margin",
        type=margin,
        help="search under budget / (1 + margin): a share (0.05) or 'auto' (the table's checked error)",
    )
    data = parser.add_argument_group("images")
    data.add_argument("--calib", type=Path, help="calibration images (ImageFolder): the search scores trials here")
    data.add_argument("--val", type=Path, help="validation images for the Pareto models, disjoint from --calib")
    data.add_argument(
        "--holdout", type=float, default=0.5, help="without --val: share of --calib held out for validation"
    )
    data.add_argument("--class-map", type=Path, help="one class name per line (line number = class index)")
    data.add_argument(
        "--train",
        type=Path,
        help="with --fine-tune: training images, apart from the validation ones (default: --calib)",
    )
    data.add_argument("--calib-images", type=int, help="use at most this many calibration images")
    data.add_argument("--val-images", type=int, help="use at most this many validation images")
    space = parser.add_argument_group("search space")
    space.add_argument(
        "--tokens",
        choices=TOKEN_MODES,
        help="token reduction to search: topk, threshold, merge (ToMe), topk+merge (top-k at --token-blocks, "
        "merging elsewhere) or none; default: the op measured best on the device (merge on mobile-cpu, "
        "topk elsewhere)",
    )
    space.add_argument(
        "--token-blocks", type=ints, default=(3, 6, 9), help="blocks that search a top-k keep ratio or a threshold"
    )
    space.add_argument("--keep-min", type=float, default=0.4, help="smallest top-k keep ratio")
    space.add_argument("--threshold-max", type=float, default=1.5, help="largest threshold (x mean score)")
    space.add_argument(
        "--merge-group",
        type=int,
        default=3,
        help="blocks sharing one merge count (1: every block, 3: four stages of DeiT, 12: one uniform count)",
    )
    space.add_argument("--merge-max", type=int, default=24, help="largest merge count r per block (even)")
    space.add_argument("--heads", action="store_true", help="search attention head counts")
    space.add_argument("--mlp", action="store_true", help="search MLP widths")
    space.add_argument("--group", type=int, default=3, help="blocks sharing one head / MLP choice")
    space.add_argument("--score", type=strings, default=("cls_attn",), help="token scores: cls_attn,head_weighted")
    space.add_argument("--package-token", choices=["off", "on", "search"], default="search")
    space.add_argument("--round-to", type=int, default=8, help="MLP widths are multiples of this")
    space.add_argument(
        "--precisions",
        type=strings,
        default=("fp32",),
        help="precisions to search with the structure, e.g. fp32,int8 (int8: W8A8 quantised after pruning, priced "
        "in int8; int8-pow2: power-of-two scales; w4a8: 4-bit weights); needs a device with a price in that dtype "
        "(host-cpu, mobile-cpu, fpga)",
    )
    space.add_argument(
        "--keep-float",
        type=int,
        default=0,
        metavar="N",
        help="with quantised precisions: a quantised trial may keep up to N of its most sensitive blocks in fp32 "
        "(per-block precision, each block priced in the dtype that runs it)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--trials", type=int, default=100)
    run.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    run.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=DEFAULT_OBJECTIVE,
        help="what trials are ranked by on the calibration images: kl (fidelity to the dense model, "
        "the default: it picks the best held-out models), agreement, or top1 (noisiest)",
    )
    run.add_argument("--cheap-first", type=int, help="score trials on this many images first")
    run.add_argument(
        "--compute",
        default="auto",
        help="where trials are scored: cpu, cuda, cuda:N or auto (the GPU when torch sees one); not the target device",
    )
    run.add_argument(
        "--score-dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="score trials in float32 or under bf16 / fp16 autocast (faster on a GPU)",
    )
    run.add_argument("--no-recover", action="store_true", help="no least-squares refit of the Pareto models")
    run.add_argument(
        "--fine-tune",
        type=int,
        default=0,
        metavar="N",
        help="after the search, fine-tune the N Pareto models with the best calibration score (distillation from "
        "the dense model; each becomes one more model of the job); 0: none",
    )
    run.add_argument(
        "--fine-tune-steps",
        type=int,
        default=FineTuneJob.model_fields["steps"].default,
        help="training steps of each fine-tuned model (docs/training.md; a --job file sets the whole recipe)",
    )
    run.add_argument("--onnx", action="store_true", help="add model.onnx to every Pareto bundle")
    run.add_argument("--seed", type=int, default=0)
    return run


def add_commands(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="search pruned models under a latency budget")
    run = add_job_options(search)
    run.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    run.add_argument("--db", help=f"storage URL shared with workers (default: ${DB_ENV}, else OUT/search.db)")
    run.add_argument("--out", type=Path, required=True, help="directory for pareto.json, pareto.html and bundles")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object, no progress bar")
    search.set_defaults(run=cmd_search)


def margin(text: str) -> float | str:
    """--budget-margin: 'auto' or a share in [0, 1]."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share such as 0.05, or 'auto'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a margin is a share in [0, 1], e.g. 0.05")
    return value
