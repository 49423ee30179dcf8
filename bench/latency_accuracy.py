"""How well a measured, end-to-end calibrated latency table predicts real pruned models on this machine.

For DeiT-Tiny and DeiT-Small at batch 1 and batch 32: measure the table (`latency_models.profiling`),
calibrate it end to end as a `host-cpu` table is (`latency_models.calibration`: 32 pruned models
fitted, 24 more checked, seeds 1000 and 1001), then time >= 50 random pruned configs of a fresh draw
(`--seed`; top-k, threshold and merging token reductions, head and MLP pruning) as real physically
pruned models and compare with the calibrated predictor, and with the same table uncalibrated on the
same measurements. Also times the predictor itself.

    python bench/latency_accuracy.py --out bench/results/defaults --work runs/latency_bench --seed 7

Run it as users run vitprune (default threads and allocator), or with `--threads 1`; with a caching
allocator preloaded (`LD_PRELOAD=libtcmalloc_minimal.so.4`) the rows record it in their runtime.
Each table records its allocator and is never completed under another.

Tables already in `--work` are reused (delete them to re-measure); entries they lack are timed and
added where they can be (`latency_models.registry.to_time`). Writes
`<out>/latency_accuracy.{json,md}` and one report per model and batch (the interactive
scatter plots `*.html` go to `--work` with the tables, which are large and machine-specific).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from latency_models.calibration.run import CalibrationPlan, calibrate
from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.profiling import Timing, plan
from latency_models.registry import complete_table
from latency_models.schema import LatencyTable
from latency_models.validate import VALIDATION_TIMING, kept_counts, random_config, validate, validation_configs
from pruning import describe, prune_model
from pruning.loading import create_model

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")


def predictions_per_second(predictor: LatencyPredictor, model: torch.nn.Module, name: str, batch: int) -> float:
    spec = describe(model, name)
    rng = random.Random(1)
    configs = [random_config(spec, rng, leave_out={"threshold"}) for _ in range(200)]
    predictor.predict(configs[0], spec, batch)  # builds the lookup arrays once, as a search does
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0:
        for config in configs:
            predictor.predict(config, spec, batch)
        count += len(configs)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/latency_bench"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--configs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0, help="draws the random configs (another seed: other configs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    summary = args.out / "latency_accuracy.json"
    # Rows of earlier runs (other models or batch sizes) are kept, so the benchmark can run in parts.
    results = json.loads(summary.read_text()) if summary.exists() else []
    for name in args.models.split(","):
        model = create_model(name)
        spec = describe(model, name)
        for batch in (int(b) for b in args.batches.split(",")):
            # Big batches take long to time; fewer passes there keep the run under an hour.
            passes = 5 if batch == 1 else 3
            table_path = args.work / f"{name}_b{batch}.json"
            start = time.monotonic()
            keys = plan(shape_of(spec), [batch])
            # A table from an earlier run is reused (delete it to re-measure); entries it lacks, such as
            # the merge entries of a table made before merging was priced, are timed and added.
            complete_table(table_path, keys, name="host-cpu", threads=args.threads, timing=Timing(passes=passes))
            profile_s = time.monotonic() - start
            timing = Timing(passes=passes, warmup=VALIDATION_TIMING.warmup, min_round_s=VALIDATION_TIMING.min_round_s)
            table = LatencyTable.load(table_path)
            start = time.monotonic()
            if not table.calibrations:
                table = calibrate(table, model, batch=batch, plan=CalibrationPlan(timing=timing), threads=args.threads)
                table.save(table_path)
            calibrate_s = time.monotonic() - start
            predictor = LatencyPredictor(table)
            start = time.monotonic()
            report = validate(
                predictor,
                model,
                configs=args.configs,
                batch=batch,
                seed=args.seed,
                threads=args.threads,
                timing=timing,
                name=name,
            )
            validate_s = time.monotonic() - start
            uncalibrated = _uncalibrated(table, model, spec, report, batch, args.seed)
            stem = f"latency_accuracy_{name}_b{batch}"
            report.save(args.out / stem, plot=False)
            report.scatter_plot(args.work / f"{stem}.html")
            row = report.summary() | {
                "runtime": predictor.table.device.runtime,
                "seed": args.seed,
                "grid_entries": len(keys),
                "profile_s": round(profile_s, 1),
                "calibrate_s": round(calibrate_s, 1),
                "validate_s": round(validate_s, 1),
                "calibration": table.calibrations[0].model_dump(mode="json"),
                "uncalibrated": uncalibrated,
                "predictions_per_s": round(predictions_per_second(predictor, model, name, batch)),
            }
            results = [r for r in results if (r["model"], r["batch"]) != (name, batch)] + [row]
            print(json.dumps(row), file=sys.stderr, flush=True)
            summary.write_text(json.dumps(results, indent=1))
            (args.out / "latency_accuracy.md").write_text(_markdown(results))
    print(_markdown(results))
    return 0  # nothing else may run on the machine meanwhile: it would be timed too


def _uncalibrated(table: LatencyTable, model, spec, report, batch: int, seed: int) -> dict:
    """The same measurements priced by the table without its calibration: within +-10%, bias, MAPE."""
    import numpy as np

    raw = LatencyPredictor(table.model_copy(update={"calibrations": ()}))
    images = torch.randn(batch, 3, *spec.image_size, generator=torch.Generator().manual_seed(seed))
    configs = validation_configs(spec, len(report.rows), random.Random(seed), raw.unpriced(spec, batch))
    errors = []
    for config, row in zip(configs, report.rows, strict=True):
        kept = kept_counts(prune_model(model, config, name=spec.name).eval(), images) if config.per_image else None
        errors.append(raw.predict(config, spec, batch, kept_tokens=kept).ms / row.normalised_ms - 1.0)
    errors = np.array(errors)
    return {
        "within_10pct": round(float(np.mean(np.abs(errors) <= 0.10)), 4),
        "bias": round(float(np.median(errors)), 4),
        "mape": round(float(np.mean(np.abs(errors))), 4),
    }


def _markdown(results: list[dict]) -> str:
    lines = [
        "| model | batch | threads | configs | within +-10% | bias | MAPE | worst | Spearman | drift | "
        "within +-10% raw | uncalibrated: within +-10% (bias) | table's own check | profile s | calibrate s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        check = (r.get("calibration") or {}).get("check") or {}
        un = r.get("uncalibrated") or {}
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['threads']} | {r['configs']} | {100 * r['within_10pct']:.0f}% | "
            f"{100 * r.get('bias', 0):+.1f}% | {100 * r['mape']:.1f}% | {100 * r['worst_error']:+.1f}% | "
            f"{r['spearman']:.3f} | x{r['drift']:.3f} | {100 * r['raw_within_10pct']:.0f}% | "
            f"{100 * un.get('within_10pct', 0):.0f}% ({100 * un.get('bias', 0):+.1f}%) | "
            f"{100 * check.get('within_10pct', 0):.0f}% of {check.get('configs', 0)} | {r['profile_s']:.0f} | "
            f"{r.get('calibrate_s', 0):.0f} |"
        )
    runtimes = sorted({r.get("runtime", "not recorded") for r in results})
    return "\n".join(lines) + f"\n\nRuntime: {'; '.join(runtimes)}.\n"


if __name__ == "__main__":
    sys.exit(main())
