"""Search quality on the real DeiT-Tiny: the best Pareto model against dense and the EViT-style baseline.

Calibration = one half of the ImageNet sample, validation = the other half (seeded split, never
seen by the search). Device = this machine's measured table at batch 32. For each budget (a share
of the dense model's predicted latency) a full search runs (token op --tokens: merging by default,
per-block merge counts; or top-k keep ratios, or both); its best Pareto model (the one with
the best calibration top-1, as a user would pick it; its validation top-1 is reported) is
compared with the uniform top-k baseline at blocks 3/6/9 whose keep ratio gives the same
predicted latency. Dense, best and baseline are then timed paired (interleaved rounds), so their
latencies are measured in the same conditions. With --samplers, each sampler also runs a shorter
search at the first budget (hypervolume and best calibration accuracy under budget).

With --token-ops (e.g. topk,merge,topk+merge) the token ops are compared: one search per op, with
the same trials, sampler, seed and calibration / validation split, at the largest budget only.
Its Pareto front spans every latency under that budget, so each smaller budget's figure is the
best Pareto model under that budget (by calibration top-1 again): one search per op instead of one
per op and budget, at the price of a front that the sampler tuned for the largest budget (a search
aimed at the smaller budget could only do as well or better there). The search of the main rows'
token op (--tokens) at the largest budget is the main row's own study, reused. Against them
stands ToMe's own schedule: the same merge count r at every block, with the r whose predicted
latency is closest to the budget without going over, scored on the validation half. Dense,
every op's best and ToMe are timed paired per budget.

    python bench/search_quality.py --table runs/latency_bench/deit_tiny_patch16_224_b32_merge.json
    python bench/search_quality.py --table ... --token-ops topk,merge,topk+merge

Writes `<out>/search_quality.{json,md}`; studies and Pareto bundles go to `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import optuna
import torch

from latency_models.predictor import LatencyPredictor
from latency_models.registry import Registry
from latency_models.schema import LatencyTable
from pruning import PruneConfig, describe, prune_model
from pruning.bundle import load_bundle
from pruning.loading import create_model
from pruning.metrics import evaluate
from pruning.timing import paired_latency
from search import JobSpec, SearchSpace, run_search, run_trials, submit
from search.context import JobContext
from search.study import open_storage

MODEL = "deit_tiny_patch16_224"
BASELINE_BLOCKS = (3, 6, 9)


def split_sample(data: Path, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two disjoint folders of symlinks: a seeded half of the sample each."""
    files = sorted((data / "imagenet-sample").glob("*/*.JPEG"))
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    half = len(files) // 2
    for name, indices in (("calib", order[:half]), ("val", order[half:])):
        for i in indices:
            link = work / name / files[i].parent.name / files[i].name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(files[i].resolve())
    return work / "calib", work / "val"


def baseline_config(predictor: LatencyPredictor, spec, target_ms: float, batch: int) -> PruneConfig:
    """Uniform top-k at blocks 3/6/9 with the largest keep ratio (0.01 steps) predicted within target_ms."""
    for keep in [k / 100 for k in range(100, 9, -1)]:
        config = PruneConfig.uniform(spec, keep_ratio=keep, at=BASELINE_BLOCKS)
        if predictor.predict(config, spec, batch).ms <= target_ms:
            return config
    raise RuntimeError(f"no uniform keep ratio reaches {target_ms:.1f} ms")


def hypervolume(front: list[tuple[float, float]], budget: float, floor: float) -> float:
    """Area (ms x points) dominated by (latency, accuracy) points within budget, above `floor` accuracy."""
    area, best = 0.0, floor
    points = sorted(p for p in front if p[0] <= budget)
    for (ms, acc), nxt in zip(points, [*points[1:], (budget, None)], strict=True):
        best = max(best, acc)
        area += (nxt[0] - ms) * (best - floor)
    return area


def tome_config(predictor: LatencyPredictor, spec, target_ms: float, batch: int) -> PruneConfig:
    """ToMe's schedule: the same r at every block, with the latency closest to target_ms without going over."""
    every = tuple(range(len(spec.blocks)))
    priced = []
    for r in range(1, spec.blocks[0].tokens_in // 2 + 1):  # more than half the tokens never merge at once
        config = PruneConfig.uniform(spec, r=r, at=every)
        ms = predictor.predict(config, spec, batch).ms
        if ms <= target_ms:
            priced.append((ms, -r, config))  # at equal latency the gentler merge
    if not priced:
        raise RuntimeError(f"no uniform merge count reaches {target_ms:.1f} ms")
    return max(priced, key=lambda p: p[:2])[2]


def make_job(
    args,
    ratio: float,
    calib: Path,
    val: Path,
    sampler: str,
    trials: int,
    tokens: str,
    cheap_first: int | None = None,
    seed: int = 0,
) -> JobSpec:
    return JobSpec(
        model=MODEL,
        weights=args.data / MODEL / "model.safetensors",
        device="host-cpu",
        table=args.table,
        batch=args.batch,
        budget_ratio=ratio,
        calib=calib,
        val=val,
        class_map=args.data / "imagenet_wnids.txt",
        trials=trials,
        sampler=sampler,
        space=SearchSpace(
            tokens=tokens,
            token_blocks=tuple(int(b) for b in args.token_blocks.split(",")),
            score=("cls_attn", "head_weighted"),
            merge_group=args.merge_group,  # not part of a top-k job's identity: the main rows' study is reused
        ),
        seed=seed,
        cheap_first=cheap_first,
        calib_images=args.max_images,
        val_images=args.max_images,
    )


def run_budget(args, ratio: float, calib: Path, val: Path, tokens: str) -> tuple[JobSpec, dict]:
    job = make_job(args, ratio, calib, val, args.sampler, args.trials, tokens, seed=args.seed)
    out = args.work / f"{job.sampler}-{tokens.replace('+', '-')}-budget-{ratio}-seed{job.seed}"
    result = run_search(job, f"sqlite:///{args.work / 'search.db'}", out, show_progress=True)
    return job, result.to_dict() | {"out": str(out)}


def compare_token_ops(args, calib: Path, val_dir: Path, dense, spec, predictor: LatencyPredictor) -> list[dict]:
    """One search per token op at the largest budget; per budget, each op's best Pareto model and ToMe."""
    ratios = sorted((float(r) for r in (args.token_ops_budgets or args.budgets).split(",")), reverse=True)
    storage = f"sqlite:///{args.work / 'search.db'}"
    searches, context = {}, None
    for op in args.token_ops.split(","):
        job, result = run_budget(args, ratios[0], calib, val_dir, tokens=op)
        searches[op] = result
        context = context or JobContext.from_study(optuna.load_study(study_name=job.study_name(), storage=storage))
    val = context.images("val")  # the same held-out half for every op: same folders, same seed
    dense_ms = context.dense_ms
    rows = []
    for ratio in ratios:
        budget_ms = ratio * dense_ms
        models: dict[str, torch.nn.Module] = {"dense": dense}
        ops: dict[str, dict | None] = {}
        for op, result in searches.items():
            under = [m for m in result["models"] if m["predicted_ms"] <= budget_ms + 1e-9]
            if not under:  # the op's front never got this fast
                ops[op] = None
                continue
            best = max(under, key=lambda m: (m["calib_accuracy"], -m["predicted_ms"]))
            models[op] = load_bundle(Path(result["out"]) / best["bundle"])
            ops[op] = {
                "top1": best["val"]["top1"],
                "calib_accuracy": best["calib_accuracy"],
                "predicted_ms": best["predicted_ms"],
                "config": best["config"],
            }
        tome_cfg = tome_config(predictor, spec, budget_ms, args.batch)
        models["tome"] = prune_model(dense, tome_cfg, name=MODEL)
        tome_metrics, _ = evaluate(models["tome"], val)
        measured = paired_latency(models, batch_size=args.batch, threads=predictor.table.device.threads)
        for op, row in ops.items():
            if row is not None:
                row["measured_ms"] = measured[op]
        rows.append(
            {
                "budget_ratio": ratio,
                "budget_ms": budget_ms,
                "searched_at_ratio": ratios[0],
                "dense": {
                    "top1": searches[next(iter(searches))]["dense"]["val"]["top1"],
                    "measured_ms": measured["dense"],
                },
                "ops": ops,
                "tome": {
                    "r": tome_cfg.blocks[0].tokens.r,
                    "top1": tome_metrics.top1,
                    "predicted_ms": predictor.predict(tome_cfg, spec, args.batch).ms,
                    "measured_ms": measured["tome"],
                },
                "searches": {
                    op: {"study": r["study"], "search_s": r["search_s"], "pareto_models": len(r["models"])}
                    for op, r in searches.items()
                },
            }
        )
        print(json.dumps(rows[-1], indent=1))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("VITPRUNE_DATA_DIR"))
    parser.add_argument("--table", type=Path, help="this machine's measured table (default: measure it now)")
    parser.add_argument("--budgets", default="0.7,0.6")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--samplers", default="", help="also compare these samplers, e.g. tpe,nsga2,gp")
    parser.add_argument("--sampler-trials", type=int, default=80)
    parser.add_argument("--cheap-first", type=int, help="also run --sampler with cheap-first on this many images")
    parser.add_argument(
        "--tokens", default="merge", choices=("topk", "merge", "topk+merge"), help="the main searches' token op"
    )
    parser.add_argument("--token-blocks", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument(
        "--token-ops", default="", help="also compare token ops, one search each, e.g. topk,merge,topk+merge"
    )
    parser.add_argument(
        "--token-ops-budgets", help="budgets the token ops are compared at (default: --budgets), e.g. 0.7,0.6"
    )
    parser.add_argument("--merge-group", type=int, default=3, help="blocks sharing one merge count in merging ops")
    parser.add_argument(
        "--max-images", type=int, help="at most this many calibration and validation images (smoke runs)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/search_quality"))
    args = parser.parse_args()
    if args.data is None:
        parser.error("give --data or set VITPRUNE_DATA_DIR")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    calib, val_dir = split_sample(args.data, args.work)

    dense = create_model(MODEL, weights=args.data / MODEL / "model.safetensors")
    spec = describe(dense, MODEL)
    if args.table is None:
        args.table = args.work / "host-table.json"
        Registry(args.work / "profiles").table("host-cpu", spec, [args.batch]).save(args.table)
    table = LatencyTable.load(args.table)
    predictor = LatencyPredictor(table)
    threads = table.device.threads
    rows = []
    for ratio in [float(r) for r in args.budgets.split(",")]:
        started = time.perf_counter()
        job, result = run_budget(args, ratio, calib, val_dir, args.tokens)
        context = JobContext.from_study(
            optuna.load_study(study_name=job.study_name(), storage=f"sqlite:///{args.work / 'search.db'}")
        )
        val = context.images("val")
        # The model a user would pick without looking at validation: the best on calibration.
        best_row = max(result["models"], key=lambda m: (m["calib_accuracy"], -m["predicted_ms"]))
        best = load_bundle(Path(result["out"]) / best_row["bundle"])
        base_cfg = baseline_config(predictor, spec, best_row["predicted_ms"], args.batch)
        baseline = prune_model(dense, base_cfg, name=MODEL)
        base_metrics, _ = evaluate(baseline, val)
        measured = paired_latency(
            {"dense": dense, "best": best, "baseline": baseline}, batch_size=args.batch, threads=threads
        )
        rows.append(
            {
                "budget_ratio": ratio,
                "budget_ms": result["budget_ms"],
                "dense": {"top1": result["dense"]["val"]["top1"], "measured_ms": measured["dense"]},
                "best": {
                    "top1": best_row["val"]["top1"],
                    "predicted_ms": best_row["predicted_ms"],
                    "measured_ms": measured["best"],
                    "config": best_row["config"],
                },
                "baseline": {
                    "keep": base_cfg.blocks[BASELINE_BLOCKS[0]].tokens.keep_ratio,
                    "top1": base_metrics.top1,
                    "predicted_ms": predictor.predict(base_cfg, spec, args.batch).ms,
                    "measured_ms": measured["baseline"],
                },
                "pareto_models": len(result["models"]),
                "trials": result["trials"],
                "search_s": result["search_s"],
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1], indent=1))
    samplers = []
    variants = [(name, None) for name in args.samplers.split(",") if name]
    if args.cheap_first:
        variants.append((args.sampler, args.cheap_first))
    for name, cheap in variants:
        ratio = float(args.budgets.split(",")[0])
        # Another seed than the main runs: a separate study (the seed is part of a job's identity).
        job = make_job(args, ratio, calib, val_dir, name, args.sampler_trials, args.tokens, cheap, seed=args.seed + 1)
        started = time.perf_counter()
        study, context = submit(job, open_storage(f"sqlite:///{args.work / 'search.db'}"))
        run_trials(study, context)  # the trials only: comparing samplers needs no Pareto bundles
        result = {"budget_ms": context.budget_ms, "search_s": round(time.perf_counter() - started, 1)}
        result["trials"] = {"trials_per_min": round(60 * job.trials / result["search_s"], 2)}
        feasible = [
            (t.values[1], t.values[0])
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("evaluated") and t.values[1] <= result["budget_ms"]
        ]
        samplers.append(
            {
                "sampler": name + (f" + cheap-first {cheap}" if cheap else ""),
                "trials": args.sampler_trials,
                "best_calib_top1": max(acc for _, acc in feasible),
                "hypervolume": round(hypervolume(feasible, result["budget_ms"], floor=50.0), 1),
                "search_s": result["search_s"],
                "trials_per_min": result["trials"]["trials_per_min"],
            }
        )
        print(json.dumps(samplers[-1]))
    token_ops = compare_token_ops(args, calib, val_dir, dense, spec, predictor) if args.token_ops else []
    report = {"model": MODEL, "batch": args.batch, "tokens": args.tokens, "rows": rows}
    report["table"] = table.device.model_dump(mode="json")
    report["samplers"] = samplers
    report["token_ops"] = token_ops
    report["command"] = "python bench/search_quality.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data", "out", "work") and v
    )
    (args.out / "search_quality.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "search_quality.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    lines = [
        f"Main searches: token op {report.get('tokens', 'topk')}, batch {report['batch']}.",
        "",
        "| budget | dense top-1 / ms | best Pareto top-1 / ms (pred.) | loss vs dense | baseline keep | "
        "baseline top-1 / ms | gain vs baseline | trials/min | search min |",
        "|---|---|---|--:|--:|---|--:|--:|--:|",
    ]
    for r in report["rows"]:
        d, b, base = r["dense"], r["best"], r["baseline"]
        lines.append(
            f"| {r['budget_ratio']:.1f}x ({r['budget_ms']:.0f} ms) | {d['top1']:.1f} / {d['measured_ms']:.0f} "
            f"| {b['top1']:.1f} / {b['measured_ms']:.0f} ({b['predicted_ms']:.0f}) | {b['top1'] - d['top1']:+.1f} "
            f"| {base['keep']:.2f} | {base['top1']:.1f} / {base['measured_ms']:.0f} | {b['top1'] - base['top1']:+.1f} "
            f"| {r['trials']['trials_per_min']} | {r['search_s'] / 60:.1f} |"
        )
    if report.get("samplers"):
        lines += [
            "",
            "| sampler | trials | best calib top-1 under budget | hypervolume | search s | trials/min |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for s in report["samplers"]:
            lines.append(
                f"| {s['sampler']} | {s['trials']} | {s['best_calib_top1']:.1f} | {s['hypervolume']} "
                f"| {s['search_s']} | {s['trials_per_min']} |"
            )
    if report.get("token_ops"):
        lines += ["", *token_ops_markdown(report["token_ops"])]
    return "\n".join(lines) + "\n"


def token_ops_markdown(rows: list[dict]) -> list[str]:
    """One line per budget and op (each op's best Pareto model), then ToMe's uniform schedule."""
    lines = [
        f"Token ops: one search per op at {rows[0]['searched_at_ratio']:.1f}x; a smaller budget takes the best "
        "Pareto model under it. ToMe: the same r at every block, closest to the budget.",
        "",
        "| budget | token op | val top-1 | measured ms (pred.) | loss vs dense | gain vs ToMe |",
        "|---|---|--:|---|--:|--:|",
    ]
    for r in rows:
        budget = f"{r['budget_ratio']:.1f}x ({r['budget_ms']:.0f} ms)"
        dense, tome = r["dense"], r["tome"]
        for op, best in r["ops"].items():
            if best is None:
                lines.append(f"| {budget} | {op} | - | no Pareto model under budget | | |")
                continue
            lines.append(
                f"| {budget} | {op} | {best['top1']:.1f} | {best['measured_ms']:.0f} ({best['predicted_ms']:.0f}) "
                f"| {best['top1'] - dense['top1']:+.1f} | {best['top1'] - tome['top1']:+.1f} |"
            )
        lines.append(
            f"| {budget} | ToMe r={tome['r']} | {tome['top1']:.1f} | {tome['measured_ms']:.0f} "
            f"({tome['predicted_ms']:.0f}) | {tome['top1'] - dense['top1']:+.1f} | |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
