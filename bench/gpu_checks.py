"""Every GPU check in one run of a few minutes: tables, token-op speedups, scoring speed and bf16's effect.

For one GPU (or, as a smoke run of the same code, this machine's CPU with `--device cpu`):

1. **Tables.** For each model and batch size, the measured table in the deployed execution (bf16,
   each forward one replayed CUDA graph) and eager float32 beside it: profiled, calibrated end to
   end on real pruned models, then checked on a fresh draw of configs (`--seed`) timed the same way:
   share within +-10%, bias, worst, Spearman, per token-op kind.
2. **Speedups.** Dense against ToMe r=10 at every block, the 0/20/22 merge schedule, and top-k keep
   0.7 and 0.5 at blocks 3/6/9, each timed in both executions in interleaved rounds.
3. **Scoring.** Trials per minute of the search's evaluator on the compute device with the sample
   images as calibration set (`--data`), at several set sizes, in float32 and under bf16 autocast,
   where a trial's time goes (building the pruned model vs. the forward passes), and what bf16 does
   to accuracy: top-1 and agreement of the same configs scored both ways.

Writes `gpu_checks.json` and `gpu_checks.md` under `--out`. It needs vitprune's dependencies (pydantic,
optuna is not needed): on a machine without them, install the carried wheels first (docs/gpu.md).

    python bench/gpu_checks.py --data $VITPRUNE_DATA_DIR --out $OUT [--models deit_tiny_patch16_224]
    python bench/gpu_checks.py --device cpu --quick --data $VITPRUNE_DATA_DIR --out /tmp/gpu-smoke  # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from latency_models.calibration.run import CalibrationPlan, calibrate
from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.profiling import Execution, Timing, plan, summarise, time_round
from latency_models.registry import complete_table
from latency_models.validate import VALIDATION_TIMING, validate, validation_configs
from pruning import PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from search.evaluator import TrialEvaluator

BATCHES = (1, 64, 256)


def executions(device: str) -> dict[str, Execution]:
    if device.startswith("cuda"):
        return {"bf16-graphs": Execution(device, "bfloat16", "cuda_graphs"), "fp32-eager": Execution(device)}
    return {"fp32-eager": Execution(device)}  # the CPU twin: what runs here


def check_table(name, model, batch, execution, work: Path, args) -> dict:
    """Profile, calibrate and check one table; the figures of its fresh draw."""
    spec = describe(model, name)
    path = work / f"{name}_b{batch}_{execution.dtype}_{execution.mode}.json"
    timing = Timing(passes=args.passes, warmup=2, min_round_s=0.005)
    start = time.monotonic()
    table = complete_table(
        path, plan(shape_of(spec), [batch]), name="gpu", execution=execution, timing=timing, progress=False
    )
    profile_s = time.monotonic() - start
    check_timing = Timing(
        passes=args.passes, warmup=VALIDATION_TIMING.warmup, min_round_s=VALIDATION_TIMING.min_round_s
    )
    if not table.calibrations:
        calibration_plan = CalibrationPlan(configs=args.calib_configs, check=args.check_configs, timing=check_timing)
        table = calibrate(table, model, batch=batch, plan=calibration_plan)
        table.save(path)
    calibrate_s = time.monotonic() - start - profile_s
    report = validate(
        LatencyPredictor(table),
        model,
        configs=args.configs,
        batch=batch,
        seed=args.seed,
        timing=check_timing,
        name=name,
    )
    report.save(work / f"report_{path.stem}", plot=False)
    return report.summary() | {"profile_s": round(profile_s), "calibrate_s": round(calibrate_s)}


def speedups(name, model, batch, runs: dict[str, Execution], args) -> dict:
    """ms of each reference config in each execution, rounds interleaved, and its ratio to dense."""
    spec = describe(model, name)
    depth = len(spec.blocks)
    configs = {
        "dense": PruneConfig.dense(spec),
        "tome r=10": PruneConfig.uniform(spec, r=10, at=tuple(range(depth))),
        "merge 0/20/22": _stage_merge(spec, (0, 20, 22, 22)),
        "top-k 0.7 @3,6,9": PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9), package_token=True),
        "top-k 0.5 @3,6,9": PruneConfig.uniform(spec, keep_ratio=0.5, at=(3, 6, 9), package_token=True),
    }
    timing = Timing(passes=1, warmup=3, min_round_s=0.05)
    images = torch.randn(batch, 3, *spec.image_size)
    out = {}
    for run_name, execution in runs.items():
        models = {k: execution.place(prune_model(model, c, name=name)) for k, c in configs.items()}
        x = execution.inputs(images)
        rounds = {k: [] for k in models}
        for _ in range(args.passes):
            for k, m in models.items():
                rounds[k].append(time_round(lambda m=m, x=x: m(x), execution, timing))
        ms = {k: summarise(r)[0] for k, r in rounds.items()}
        out[run_name] = {k: {"ms": round(v, 4), "x_dense": round(v / ms["dense"], 3)} for k, v in ms.items()}
    return out


def _stage_merge(spec, counts: tuple[int, ...]) -> PruneConfig:
    """Merge counts per stage of three blocks (DeiT's twelve blocks as four stages)."""
    blocks = []
    for index, block in enumerate(PruneConfig.dense(spec).blocks):
        r = counts[min(index // 3, len(counts) - 1)]
        blocks.append(PruneConfig.uniform(spec, r=r, at=(index,)).blocks[index] if r else block)
    return PruneConfig(blocks=tuple(blocks))


def scoring(name, model, device: torch.device, args) -> dict:
    """Trials per minute of the evaluator, by set size and dtype; where the time goes; bf16 against fp32."""
    spec = describe(model, name)
    data = Path(args.data)
    images = load_image_folder(
        data / "imagenet-sample", eval_data_config(model, spec.image_size), class_map=data / "imagenet_wnids.txt"
    )
    configs = validation_configs(spec, args.trials + 1, random.Random(args.seed))[1:]
    out: dict = {"images": len(images), "rates": [], "bf16_vs_fp32": None}
    scored = {}
    for size in args.sizes:
        subset = images.subset(range(min(size, len(images))))
        for dtype in ("float32", "bfloat16"):
            start = time.perf_counter()
            evaluator = TrialEvaluator(model, spec, subset, batch_size=args.score_batch, device=device, dtype=dtype)
            setup_s = time.perf_counter() - start
            evaluator.evaluate(configs[0])  # warm-up: kernels, the prefix cache's first boundaries
            results = [evaluator.evaluate(c) for c in configs]
            seconds = [r.seconds for r in results]
            build = [r.build_seconds for r in results]
            out["rates"].append(
                {
                    "images": len(subset),
                    "dtype": dtype,
                    "trials_per_min": round(60 * len(seconds) / sum(seconds), 1),
                    "median_trial_s": round(statistics.median(seconds), 4),
                    "median_build_s": round(statistics.median(build), 4),
                    "setup_s": round(setup_s, 2),
                }
            )
            print(json.dumps(out["rates"][-1]), file=sys.stderr, flush=True)
            if len(subset) == max(args.sizes) or size == args.sizes[-1]:
                scored[dtype] = results
    if len(scored) == 2:
        fp32, bf16 = scored["float32"], scored["bfloat16"]
        diffs = [b.metrics.top1 - f.metrics.top1 for f, b in zip(fp32, bf16, strict=True)]
        same = [
            float((f.logits.argmax(1) == b.logits.argmax(1)).double().mean() * 100)
            for f, b in zip(fp32, bf16, strict=True)
        ]
        out["bf16_vs_fp32"] = {
            "configs": len(diffs),
            "top1_diff_median": round(statistics.median(diffs), 3),
            "top1_diff_max_abs": round(max(abs(d) for d in diffs), 3),
            "top1_argmax_same_pct_median": round(statistics.median(same), 2),
            "top1_argmax_same_pct_min": round(min(same), 2),
            "top1_se_median": round(statistics.median(f.metrics.top1_se for f in fp32), 3),
        }
    return out


def markdown(result: dict) -> str:
    lines = [f"# GPU checks: {result['hardware']}", "", f"torch {result['torch']}, seed {result['seed']}.", ""]
    lines += [
        "## Tables (fresh draw)",
        "",
        "| model | batch | execution | configs | within +-10% | bias | worst | Spearman |",
    ]
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in result["tables"]:
        s = row["summary"]
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['execution']} | {s.get('configs')} | "
            f"{100 * s['within_10pct']:.0f}% | {100 * s['bias']:+.1f}% | {100 * s['worst_error']:+.1f}% | "
            f"{s['spearman']:.3f} |"
        )
    lines += ["", "## Speedups (x dense; below 1 is faster)", ""]
    for row in result["speedups"]:
        for run_name, figures in row["runs"].items():
            cells = ", ".join(f"{k} {v['x_dense']:.2f}x ({v['ms']:.2f} ms)" for k, v in figures.items() if k != "dense")
            lines.append(
                f"- {row['model']} batch {row['batch']}, {run_name}: dense {figures['dense']['ms']:.2f} ms; {cells}"
            )
    if result.get("scoring"):
        lines += [
            "",
            "## Scoring",
            "",
            "| images | dtype | trials/min | median trial s | of it building s |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in result["scoring"]["rates"]:
            lines.append(
                f"| {r['images']} | {r['dtype']} | {r['trials_per_min']} | {r['median_trial_s']} | "
                f"{r['median_build_s']} |"
            )
        if result["scoring"]["bf16_vs_fp32"]:
            lines += ["", f"bf16 against fp32: {json.dumps(result['scoring']['bf16_vs_fp32'])}"]
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", help="the data directory (imagenet-sample, imagenet_wnids.txt) for the scoring check")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    parser.add_argument("--models", default="deit_tiny_patch16_224")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--configs", type=int, default=50, help="configs of the fresh draw per table")
    parser.add_argument("--calib-configs", type=int, default=32)
    parser.add_argument("--check-configs", type=int, default=24)
    parser.add_argument("--trials", type=int, default=30, help="configs scored per set size and dtype")
    parser.add_argument("--sizes", default="250,500,1000", help="calibration set sizes for trials per minute")
    parser.add_argument("--score-batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip", default="", help="comma-separated: tables, speedups, scoring")
    parser.add_argument("--quick", action="store_true", help="a smoke run: batch 1, few configs, one pass")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.passes, args.configs, args.calib_configs, args.check_configs = "1", 1, 4, 8, 4
        args.trials, args.sizes, args.score_batch = 3, "32", 16
    args.sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    runs = executions(args.device)
    for execution in runs.values():
        execution.check()
    device = torch.device(args.device)
    result = {
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "seed": args.seed,
        "command": " ".join(sys.argv),
        "tables": [],
        "speedups": [],
        "scoring": None,
    }

    def save() -> None:  # after every step: a run cut short keeps what it measured
        (args.out / "gpu_checks.json").write_text(json.dumps(result, indent=1))
        (args.out / "gpu_checks.md").write_text(markdown(result))

    for name in args.models.split(","):
        model = create_model(name)
        for batch in (int(b) for b in args.batches.split(",")):
            if "speedups" not in skip:
                result["speedups"].append(
                    {"model": name, "batch": batch, "runs": speedups(name, model, batch, runs, args)}
                )
                save()
            if "tables" not in skip:
                for run_name, execution in runs.items():
                    summary = check_table(name, model, batch, execution, args.out / "tables", args)
                    result["tables"].append({"model": name, "batch": batch, "execution": run_name, "summary": summary})
                    save()
    if "scoring" not in skip and args.data:
        name = args.models.split(",")[0]
        weights = Path(args.data) / name / "model.safetensors"
        model = create_model(name, weights=weights if weights.exists() else None)
        result["scoring"] = scoring(name, model, device, args)
        save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
