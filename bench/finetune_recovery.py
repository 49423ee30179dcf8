"""How much accuracy recovery training gives back, on images it never saw, and what it costs on this CPU.

DeiT-Tiny pruned to three budgets, each trained by `pruning.training.fine_tune` (distillation from
the dense model, function matching; the default recipe unless options say otherwise):

- `host-b32-0.7` and `host-b32-0.6`: uniform ToMe (the same merge count r at every block), the r whose
  *measured* batch-32 latency on this machine (at `--timing-threads`, 1 by default) is closest under
  0.7x / 0.6x of the dense model's, every r and the dense model timed in one paired run (interleaved
  rounds);
- `mobile-b1-0.7`: uniform ToMe, the token op a `mobile-cpu` job searches by default, with the
  smallest r the `mobile-cpu` table prices at or under 0.7x of dense at batch 1.

The 1,000 sample images are split by a seeded shuffle: training takes one half (`--train-images` of
it, a share held out inside it for early stopping), and every figure is measured on the other half,
which nothing here tunes on. Per model: top-1, top-1 agreement and KL with the dense model, each
with its standard error, before and after training; steps and wall time. With `--curve`, the first
target is trained again on fewer images; with three sizes or more, a least-squares line through its
agreement and KL against log2 of the count says what a doubling of the images gives and, extrapolated,
about how many images 95% agreement would take with this recipe. Writes `finetune_recovery.{json,md}` under `--out`.

    python bench/finetune_recovery.py --data $VITPRUNE_DATA_DIR --out bench/results [--curve 125,250]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from latency_models.registry import Registry
from latency_models.validate import summarise_config
from pruning import PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.metrics import classification_metrics, paired_top1_loss, predict
from pruning.timing import paired_latency
from pruning.training import FineTuneConfig, fine_tune

TARGETS = ("host-b32-0.7", "host-b32-0.6", "mobile-b1-0.7")
HOST_MERGES = range(6, 17)
"""Merge counts timed for the host targets: about 0.8x to 0.5x of dense at batch 32 here."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--train-images", type=int, default=500, help="of the training half")
    parser.add_argument("--curve", default="", help="also train the first target on these fewer images, e.g. 125,250")
    parser.add_argument("--steps", type=int, default=FineTuneConfig().steps)
    parser.add_argument("--batch-size", type=int, default=FineTuneConfig().batch_size)
    parser.add_argument("--lr", type=float, default=FineTuneConfig().lr)
    parser.add_argument("--feature-weight", type=float, default=FineTuneConfig().feature_weight)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--timing-threads",
        type=int,
        default=1,
        help="threads that time the host budgets: 1, as latency tables are profiled (at 2 on this shared 2-core "
        "machine the same merge count timed 0.58x of dense in one run and 0.67x in another)",
    )
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
    recipe = FineTuneConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, feature_weight=args.feature_weight, seed=args.seed
    )
    rows = []
    targets = args.targets.split(",")
    runs = [(t, args.train_images) for t in targets]
    runs += [(targets[0], int(n)) for n in args.curve.split(",") if n]
    chosen: dict[str, tuple[PruneConfig, dict]] = {}
    for target, count in runs:
        if target not in chosen:
            chosen[target] = _config(target, dense, spec, args.timing_threads)
        config, choice = chosen[target]
        print(f"{target}: {summarise_config(config, spec)} ({choice}); training on {count} images", file=sys.stderr)
        student = prune_model(dense, config, name=args.model)
        before, loss_before = _score(student, report_half, reference)
        count = min(count, len(train_half))  # spread over the half: every part of the folder (class) in it
        train = train_half.subset([i * len(train_half) // count for i in range(count)])
        start = time.perf_counter()
        result = fine_tune(student, dense, train, recipe)
        seconds = time.perf_counter() - start
        after, loss_after = _score(student, report_half, reference)
        rows.append(
            {
                "target": target,
                "config": summarise_config(config, spec),
                "choice": choice,
                "train_images": count,
                "report_images": len(report_half),
                "before": before.to_dict(),
                "after": after.to_dict(),
                # Top-1 points lost against dense on the same images, with the paired standard error.
                "loss_vs_dense": {"before": loss_before, "after": loss_after},
                "steps": result.steps,
                "best_step": result.best_step,
                "stopped_early": result.stopped_early,
                "holdout_kl": [result.holdout_kl_before, result.holdout_kl],
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {
        "model": args.model,
        "dense": dense_metrics.to_dict(),
        "recipe": recipe.model_dump(mode="json"),
        "threads": args.threads,
        "timing_threads": args.timing_threads,
        "seed": args.seed,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_recovery.json").write_text(json.dumps(summary, indent=2))
    (args.out / "finetune_recovery.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _score(model: torch.nn.Module, images, reference: torch.Tensor):
    """The model's metrics on `images` against the dense `reference` logits, and the top-1 points it loses
    against dense there with their paired standard error."""
    logits = predict(model, images)
    return classification_metrics(logits, images.labels, reference), paired_top1_loss(logits, reference, images.labels)


def _config(target: str, dense: torch.nn.Module, spec, threads: int) -> tuple[PruneConfig, dict]:
    place, batch_text, ratio_text = target.split("-")
    batch, ratio = int(batch_text.removeprefix("b")), float(ratio_text)
    every = tuple(range(len(spec.blocks)))
    if place == "host":
        ratios = _host_ratios(dense, spec, batch, threads)
        for r, measured in ratios.items():  # the smallest r under the budget: the most accurate uniform schedule
            if measured["ratio"] <= ratio:
                every_r = {str(k): v["ratio"] for k, v in ratios.items()}
                return PruneConfig.uniform(spec, r=r, at=every), measured | {"threads": threads, "ratios": every_r}
        raise SystemExit(f"no uniform merge count up to {max(ratios)} reaches {ratio}x of dense at batch {batch}")
    # The phone: uniform ToMe, the token op a mobile-cpu job searches by default (bench/default_space.py).
    predictor = Registry().predictor("mobile-cpu", spec, [batch])
    dense_ms = predictor.predict(PruneConfig.dense(spec), spec, batch).ms
    for r in range(1, spec.blocks[0].tokens_in // 2 + 1):
        config = PruneConfig.uniform(spec, r=r, at=every)
        ms = predictor.predict(config, spec, batch).ms
        if ms <= ratio * dense_ms:
            return config, {
                "predicted_ms": round(ms, 2),
                "dense_ms": round(dense_ms, 2),
                "ratio": round(ms / dense_ms, 3),
            }
    raise SystemExit(f"no uniform merge count reaches {ratio}x of dense on mobile-cpu")


@functools.cache
def _host_ratios(dense: torch.nn.Module, spec, batch: int, threads: int) -> dict[int, dict]:
    """Uniform ToMe's latency against dense for every r in HOST_MERGES, timed on this machine at `batch`
    in one paired run: timed apart, minutes apart, a drift of the shared machine put r=14 (about 0.55x
    paired) at 0.67x."""
    every = tuple(range(len(spec.blocks)))
    models = {r: prune_model(dense, PruneConfig.uniform(spec, r=r, at=every)) for r in HOST_MERGES}
    ms = paired_latency({"dense": dense, **models}, batch_size=batch, threads=threads, iters=1)
    return {
        r: {"measured_ms": round(ms[r], 1), "dense_ms": round(ms["dense"], 1), "ratio": round(ms[r] / ms["dense"], 3)}
        for r in HOST_MERGES
    }


def _markdown(summary: dict) -> str:
    dense = summary["dense"]
    lines = [
        f"# Recovery training: {summary['model']}, {summary['threads']} thread(s)",
        "",
        f"Figures on {summary['rows'][0]['report_images'] if summary['rows'] else 0} sample images never trained on "
        f"(seed {summary['seed']}); dense top-1 {dense['top1']:.1f}% (SE {dense['top1_se']:.1f}). Recipe: "
        f"{summary['recipe']['steps']} steps of {summary['recipe']['batch_size']}, lr {summary['recipe']['lr']}, "
        f"feature weight {summary['recipe'].get('feature_weight', 0.0)}. Host budgets: every merge count and the "
        f"dense model timed in one paired run at {summary['timing_threads']} thread(s); "
        "the phone's: the `mobile-cpu` table.",
        "",
        "| target | model | latency / dense | train images | top-1 before -> after (SE)"
        " | points lost vs dense, before -> after (SE)"
        " | agreement before -> after | KL before -> after | steps (best) | minutes |",
        "|---|---|--:|--:|---|---|---|---|--:|--:|",
    ]
    for row in summary["rows"]:
        b, a = row["before"], row["after"]
        lines.append(
            f"| {row['target']} | {row['config']} | {row['choice']['ratio']:.3f} | {row['train_images']}"
            f" | {b['top1']:.1f} -> {a['top1']:.1f} ({a['top1_se']:.1f})"
            f" | {_loss(row, 'before')} -> {_loss(row, 'after')} | {b['agreement']:.1f} -> {a['agreement']:.1f}"
            f" | {b['kl']:.3f} -> {a['kl']:.3f} | {row['steps']} ({row['best_step']}) | {row['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines + _curve_lines(summary)) + "\n"


def _loss(row: dict, when: str) -> str:
    """Top-1 points lost against dense on the same images, with the standard error of that difference."""
    points, se = row["loss_vs_dense"][when]
    return f"{points:+.1f} ({se:.1f})"


def _curve_lines(summary: dict, target_agreement: float = 95.0) -> list[str]:
    """A least-squares line through the first target's agreement and KL against log2(training images).

    An extrapolation, and said to be one: it tells a user roughly how many images the recipe wants,
    not a figure measured here.
    """
    first = summary["rows"][0]["target"] if summary["rows"] else None
    points = sorted(
        (math.log2(row["train_images"]), row["after"]["agreement"], row["after"]["kl"])
        for row in summary["rows"]
        if row["target"] == first
    )
    if len({x for x, _, _ in points}) < 3:
        return []
    xs = [x for x, _, _ in points]
    agreement_slope, agreement_at = statistics.linear_regression(xs, [a for _, a, _ in points])
    kl_slope, _ = statistics.linear_regression(xs, [k for _, _, k in points])
    lines = [
        "",
        f"Curve ({first}, {len(points)} training-set sizes): per doubling of the training images, agreement "
        f"{agreement_slope:+.2f} points, KL {kl_slope:+.4f} (least squares against log2 of the count).",
    ]
    if agreement_slope > 0:
        needed = 2 ** ((target_agreement - agreement_at) / agreement_slope)
        lines.append(
            f"Extrapolated along that line, {target_agreement:.0f}% agreement would take about {needed:,.0f} images "
            "with this recipe: a trend of few points, not a measurement."
        )
    else:
        lines.append("Agreement does not rise with the training images over this range: no extrapolation.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
