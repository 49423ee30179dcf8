"""Which calibration score picks the model that is best on images it never saw: top-1, or fidelity?

A search keeps the trial with the best calibration score under the budget. Top-1 on a few hundred
images is noisy (one image is 0.2 points at 500), so the maximum over many trials partly picks
noise. Fidelity to the dense model (top-1 agreement, KL divergence of the logits) needs no labels
and varies far less between images. This benchmark measures the choice directly:

1. The 1,000 sample images are split by a seeded shuffle into a calibration half and a held-out half.
2. `--configs` random pruned DeiT-Tiny structures of every kind a search visits (top-k, threshold,
   merging, heads, MLP widths; `latency_models.validate.random_config`) are built, each priced on the
   target device (`--device`, `--batch`) and kept when within `--budget` of the dense latency.
3. Each is scored on both halves: calibration top-1, agreement and KL; held-out top-1.
4. Searches are simulated by drawing `--pool` of the kept configs (`--rounds` times): each objective
   picks its best config of the draw, and the held-out top-1 of its pick is recorded.

Reports, per objective: the mean held-out top-1 of its picks (with its standard error over rounds),
the mean regret against the draw's truly best config, how often it picks that config, and the rank
correlation of the calibration score with held-out top-1 over all configs. Writes
`objective_choice.{json,md}`.

    python bench/objective_choice.py --data $VITPRUNE_DATA_DIR [--out bench/results] [--configs 80]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from latency_models.registry import Registry
from latency_models.validate import random_config
from pruning import PruneConfig, describe
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from search.evaluator import TrialEvaluator
from search.objectives import OBJECTIVES

SCORES = {name: objective.score for name, objective in OBJECTIVES.items()}
"""The calibration score of each objective the search offers (`search.objectives`), higher is better."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--device", default="mobile-cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget", type=float, default=0.7, help="share of the dense model's predicted latency")
    parser.add_argument("--configs", type=int, default=80, help="random configs drawn (those over budget are dropped)")
    parser.add_argument("--pool", type=int, default=30, help="configs a simulated search sees")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    data = Path(args.data)
    model = create_model(args.model, weights=data / args.model / "model.safetensors")
    spec = describe(model, args.model)
    images = load_image_folder(
        data / "imagenet-sample", eval_data_config(model, spec.image_size), class_map=data / "imagenet_wnids.txt"
    )
    calib, held = images.split(0.5, seed=args.seed)
    predictor = Registry().predictor(args.device, spec, [args.batch])
    dense_ms = predictor.predict(PruneConfig.dense(spec), spec, args.batch).ms
    rng = random.Random(args.seed)
    drawn = [random_config(spec, rng) for _ in range(args.configs * 4)]
    kept = [
        c for c in drawn if not c.per_image and predictor.predict(c, spec, args.batch).ms <= args.budget * dense_ms
    ][: args.configs]
    print(f"{len(kept)} configs within {args.budget}x of dense on {args.device}", file=sys.stderr)
    start = time.monotonic()
    on_calib = TrialEvaluator(model, spec, calib, seed=args.seed)
    on_held = TrialEvaluator(model, spec, held, seed=args.seed)
    rows = []
    for index, config in enumerate(kept):
        c, h = on_calib.evaluate(config).metrics, on_held.evaluate(config).metrics
        rows.append({"config": config, "calib": c, "held_top1": h.top1, "held_agreement": h.agreement})
        print(f"{index + 1}/{len(kept)}: calib top-1 {c.top1:.1f}, held {h.top1:.1f}", file=sys.stderr, flush=True)
    score_s = time.monotonic() - start
    held_images, held = len(held), np.array([r["held_top1"] for r in rows])
    draw = np.random.default_rng(args.seed)
    picks: dict[str, list[float]] = {name: [] for name in SCORES}
    regret: dict[str, list[float]] = {name: [] for name in SCORES}
    best_hits = dict.fromkeys(SCORES, 0)
    for _ in range(args.rounds):
        sample = draw.choice(len(rows), size=min(args.pool, len(rows)), replace=False)
        best = held[sample].max()
        for name, score in SCORES.items():
            pick = max(sample, key=lambda i, score=score: score(rows[i]["calib"]))
            picks[name].append(held[pick])
            regret[name].append(best - held[pick])
            best_hits[name] += held[pick] == best
    result = {
        "model": args.model,
        "device": args.device,
        "batch": args.batch,
        "budget": args.budget,
        "calib_images": len(calib),
        "held_images": held_images,
        "configs": len(rows),
        "pool": args.pool,
        "rounds": args.rounds,
        "seed": args.seed,
        "score_s": round(score_s),
        "held_top1_of_configs": [round(float(v), 2) for v in held],
        "objectives": {
            name: {
                "held_top1_of_pick": round(statistics.mean(picks[name]), 3),
                "held_top1_of_pick_sd": round(statistics.pstdev(picks[name]), 3),
                "regret": round(statistics.mean(regret[name]), 3),
                "picks_the_best": round(best_hits[name] / args.rounds, 3),
                "spearman_with_held_top1": round(float(spearmanr([score(r["calib"]) for r in rows], held)[0]), 4),
            }
            for name, score in SCORES.items()
        },
        "command": "python bench/objective_choice.py "
        + " ".join(sys.argv[1:]).replace(str(data), "$VITPRUNE_DATA_DIR"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "objective_choice.json").write_text(json.dumps(result, indent=1))
    (args.out / "objective_choice.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [
        f"# Which calibration score picks the best model: {r['model']} on {r['device']}, batch {r['batch']}, "
        f"{r['budget']}x budget",
        "",
        f"{r['configs']} random configs within budget, each scored on {r['calib_images']} calibration images and "
        f"{r['held_images']} held-out images (the other half of the sample); {r['rounds']} simulated searches of "
        f"{r['pool']} configs each; seed {r['seed']}.",
        "",
        "| objective | held-out top-1 of its pick | regret vs the draw's best | picks the best | Spearman, held-out |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, o in r["objectives"].items():
        lines.append(
            f"| {name} | {o['held_top1_of_pick']:.2f} (sd {o['held_top1_of_pick_sd']:.2f}) | {o['regret']:.2f} | "
            f"{100 * o['picks_the_best']:.0f}% | {o['spearman_with_held_top1']:.3f} |"
        )
    lines += ["", f"Command: `{r['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
