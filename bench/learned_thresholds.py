"""Budget-aware learned thresholds on DeiT-Tiny: accuracy on images never trained on, at a mobile-cpu budget.

DeiT-Tiny with thresholds at blocks 3, 6 and 9, learned with the weights (`pruning.training.thresholds`:
soft masks, distillation from the dense model plus the differentiable latency term, then hard
thresholds calibrated to the budget on the training images) for `--device` at `--batch`, budget
`--ratio` x the dense model's predicted latency. Beside it, the same structure without training: one
common threshold calibrated to the budget on the same training images (what the training starts from).

The 1,000 sample images are split as `bench/finetune_recovery.py` splits them (`ImageSet.split(0.5,
seed)`): training takes one half (a share held out inside it for the held-out KL), and every figure is
measured on the other half, which nothing here tunes on. Reported: top-1 (with its standard error), top-1
agreement and KL with the dense model, the latency the device's table predicts from the token counts
realised on the report half (batch 1: their mean; above: the padded widths), whether it meets the budget,
and the wall time. Writes `learned_thresholds.{json,md}` under `--out`.

    python bench/learned_thresholds.py --data $VITPRUNE_DATA_DIR --out bench/results --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latency_models.registry import Registry
from pruning import PruneConfig, describe, prune_model
from pruning.data import ImageSet, load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.metrics import classification_metrics, predict
from pruning.model import PrunedViT
from pruning.tokens import padded_widths
from pruning.training import FineTuneConfig, ThresholdConfig, learn_thresholds
from pruning.training.thresholds import calibrate_thresholds, threshold_config

BASELINE = "bench/results/finetune_recovery.json"
"""The searched-config + fine-tune figures this bench is compared with (its `mobile-b1-0.7` row)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--device", default="mobile-cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.7, help="budget, as a share of the dense model's latency")
    parser.add_argument("--steps", type=int, default=FineTuneConfig().steps)
    parser.add_argument("--batch-size", type=int, default=FineTuneConfig().batch_size)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0, help="the split of the sample into training and report halves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    dense = create_model(args.model, weights=data / args.model / "model.safetensors")
    spec = describe(dense, args.model)
    images = load_image_folder(
        data / "imagenet-sample", eval_data_config(dense, spec.image_size), class_map=data / "imagenet_wnids.txt"
    )
    train_half, report_half = images.split(0.5, seed=args.seed)
    reference = predict(dense, report_half)
    dense_metrics = classification_metrics(reference, report_half.labels, reference)
    predictor = Registry(threads=args.threads).predictor(args.device, spec, [args.batch], progress=False)
    dense_ms = predictor.predict(PruneConfig.dense(spec), spec, args.batch).ms
    budget_ms = args.ratio * dense_ms
    config = ThresholdConfig(recipe=FineTuneConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed))
    priced = threshold_config(PruneConfig.dense(spec), config.blocks, [1.0] * len(config.blocks))

    def price(kept: list[float]) -> float:
        return predictor.predict(priced, spec, args.batch, kept_tokens=kept).ms

    def report(model: PrunedViT) -> dict:
        logits, counts = [], []
        with torch.inference_mode():
            for x, _ in report_half.batches(50):
                logits.append(model(x))
                counts.append(torch.stack(model.last_token_counts, 1))
        widths = padded_widths(torch.cat(counts), args.batch)
        ms = price(widths)
        metrics = classification_metrics(torch.cat(logits), report_half.labels, reference)
        thresholds = [model.config.blocks[b].tokens.threshold for b in config.blocks]
        return {
            **metrics.to_dict(),
            "thresholds": [round(t, 4) for t in thresholds],
            "kept_tokens": [round(w, 1) for w in widths],
            "predicted_ms": round(ms, 3),
            "meets_budget": ms <= budget_ms,
        }

    # The same structure untrained: one common threshold at the budget, calibrated as the training calibrates.
    start = time.perf_counter()
    uniform = prune_model(dense, priced, name=args.model)
    _, training_part = _training_part(train_half, config)
    calibrate_thresholds(
        uniform,
        [1.0] * len(config.blocks),
        config.blocks,
        _spread(training_part, config.calibration_images),
        price,
        budget_ms,
        device_batch=args.batch,
        steps=config.calibration_steps,
    )
    rows = [{"model": "common threshold, calibrated, no training", **report(uniform)}]
    rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(rows[-1]), file=sys.stderr)

    start = time.perf_counter()
    student = prune_model(dense, PruneConfig.dense(spec), name=args.model)
    result = learn_thresholds(
        student, dense, train_half, config, price, budget_ms, device_batch=args.batch, progress=True
    )
    rows.append({"model": "learned thresholds (+ weights)", **report(student)})
    rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(rows[-1]), file=sys.stderr)

    summary = {
        "model": args.model,
        "device": args.device,
        "batch": args.batch,
        "dense_ms": round(dense_ms, 3),
        "budget_ms": round(budget_ms, 3),
        "ratio": args.ratio,
        "threads": args.threads,
        "seed": args.seed,
        "train_images": len(train_half),
        "report_images": len(report_half),
        "dense": dense_metrics.to_dict(),
        "rows": rows,
        "learned": result.to_dict(),
        "compared_with": _baseline(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learned_thresholds.json").write_text(json.dumps(summary, indent=2))
    (args.out / "learned_thresholds.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _training_part(images: ImageSet, config: ThresholdConfig) -> tuple[ImageSet, ImageSet]:
    """(held-out, training) part of the training half, as `learn_thresholds` splits it."""
    return images.split(config.recipe.holdout, seed=config.recipe.seed)


def _spread(images: ImageSet, limit: int) -> ImageSet:
    if len(images) <= limit:
        return images
    return images.subset([i * len(images) // limit for i in range(limit)])


def _baseline() -> dict | None:
    """The fine-tuned searched-config row of bench/finetune_recovery at the same device and batch."""
    path = Path(BASELINE)
    if not path.exists():
        return None
    found = json.loads(path.read_text())
    row = next((r for r in found["rows"] if r["target"] == "mobile-b1-0.7" and r["train_images"] == 500), None)
    if row is None:
        return None
    return {key: row[key] for key in ("target", "config", "choice", "before", "after", "seconds", "steps")}


def _markdown(summary: dict) -> str:
    dense = summary["dense"]
    lines = [
        f"# Learned thresholds: {summary['model']}, {summary['device']} batch {summary['batch']},"
        f" {summary['threads']} thread(s)",
        "",
        f"Budget {summary['ratio']}x of the dense model's predicted {summary['dense_ms']:.2f} ms ="
        f" {summary['budget_ms']:.2f} ms. Trained on {summary['train_images']} sample images; every figure is on"
        f" the other {summary['report_images']} (seed {summary['seed']}, the split of finetune_recovery), never"
        f" trained or tuned on; dense top-1 {dense['top1']:.1f}% (SE {dense['top1_se']:.1f}).",
        "",
        "| model | thresholds @3,6,9 | kept tokens | predicted ms (budget met) | top-1 (SE) |"
        " agreement | KL | minutes |",
        "|---|---|---|--:|---|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        met = "yes" if row["meets_budget"] else "NO"
        lines.append(
            f"| {row['model']} | {', '.join(f'{t:g}' for t in row['thresholds'])} |"
            f" {', '.join(f'{k:g}' for k in row['kept_tokens'])} | {row['predicted_ms']:.2f} ({met}) |"
            f" {row['top1']:.1f} ({row['top1_se']:.1f}) | {row['agreement']:.1f} | {row['kl']:.3f} |"
            f" {row['seconds'] / 60:.1f} |"
        )
    base = summary.get("compared_with")
    if base:
        before, after = base["before"], base["after"]
        lines.append(
            f"| searched top-k + fine-tune (finetune_recovery, {base['choice']['ratio']}x) | {base['config']} | - |"
            f" {base['choice']['predicted_ms']:.2f} (yes) | {before['top1']:.1f} -> {after['top1']:.1f}"
            f" ({after['top1_se']:.1f}) | {before['agreement']:.1f} -> {after['agreement']:.1f} |"
            f" {before['kl']:.3f} -> {after['kl']:.3f} | {base['seconds'] / 60:.1f} |"
        )
    run = summary["learned"]
    lines += [
        "",
        f"Training: {run['steps']} steps of {run['config']['recipe']['batch_size']} on {run['train_images']} images"
        f" ({run['holdout_images']} held out); thresholds {run['initial']} -> learned {run['learned']}, calibrated"
        f" by x{run['scale']:g} on {run['calibration_images']} training images to {run['predicted_ms']:.2f} ms;"
        f" held-out KL {run['holdout_kl_before']:.4f} -> {run['holdout_kl']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
