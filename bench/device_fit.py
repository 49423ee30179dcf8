"""How many timings a fitted device needs: this host's CPU as a stand-in for a device we cannot profile.

Run by hand (never from the tests), with nothing else heavy running:

    python bench/device_fit.py --out bench/results [--passes 5] [--configs 16] [--seed 7]

1. Describes this CPU as an analytic mobile-CPU device on one thread (`host_params`): its model and
   SIMD flags from /proc/cpuinfo, the fp32 FLOP/cycle derived from them, its clock; the efficiencies
   and overhead start at the default phone preset's assumptions (the "unfitted preset").
2. Times, at one torch thread, batch 1, fp32, the dense timm models (random weights: latency does not
   depend on them) of several shapes: DeiT-Tiny/Small/Base and ViT-B/32 at 224 px, ViT-Tiny/Small at
   384 px; and `--configs` random pruned DeiT-Small configs (`latency_models.validate.random_config`,
   physically pruned with `pruning.model.prune_model`; thresholds left out, their token counts depend
   on images). Rounds are interleaved over all models, each model's figure the median over passes of
   its round medians (the profiler's method).
3. For k = 1 .. N dense models, fits the device on every subset of k models (`latency_models.fitting`)
   and predicts the other dense models and the pruned configs (with the fitted device's table, as a
   search would); reports per k the median over subsets of the held-out median |error|, the worst
   held-out |error| over all subsets, and Spearman's rank correlation on the pruned configs; k = 0 is
   the unfitted preset. The sweep is made over all dense models, and again without ViT-B/32 (`OUTLIER`).

With `--precision int8` every model (dense and pruned) is instead quantised W8A8 (`pruning.quantisation`,
calibrated on its random input), exported as ONNX QDQ and timed with onnxruntime's int8 kernels on one
thread, the runtime users deploy int8 with (`pruning.onnx_session.quantised_onnx_run`); the base is the same
CPU in int8 (VNNI's VPDPBUSD counted as a dot-product instruction) and the fits are int8 fits. It
writes `device_fit_int8.{json,md}`.

Writes `<out>/device_fit.json` and `<out>/device_fit.md`. About a minute on 2 cores (int8: about five).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from latency_models.analytic import analytic_table
from latency_models.analytic.host import cpu_info, host_params
from latency_models.fitting import TimingRow, fit, predict, resolve_model
from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.profiling import Execution, Timing, summarise, time_round
from latency_models.validate import random_config, summarise_config
from pruning import PruneConfig, describe
from pruning.model import prune_model
from pruning.onnx_session import quantised_onnx_run
from pruning.quantisation.precisions import FLOAT
from pruning.timing import torch_threads

DENSE = (
    ("deit_tiny_patch16_224", "deit_tiny_patch16_224", 224),
    ("deit_small_patch16_224", "deit_small_patch16_224", 224),
    ("deit_base_patch16_224", "deit_base_patch16_224", 224),
    ("vit_base_patch32_224", "vit_base_patch32_224", 224),
    ("vit_tiny_patch16_384", "vit_tiny_patch16_384", 384),
    ("vit_small_patch16_384", "vit_small_patch16_384", 384),
)
"""(name in the timings, timm model built, image size)."""
PRUNED_BASE = "deit_small_patch16_224"
OUTLIER = "vit_base_patch32_224"
OUTLIER_WHY = """50 tokens and 88M weights (350 MB in fp32): its GEMMs stream their weights from DRAM for few rows
each, which the analytic model's one bandwidth for weights and activations alike cannot price."""


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def measure(
    models: dict[str, tuple[torch.nn.Module, torch.Tensor]], timing: Timing, precision: str = FLOAT
) -> dict[str, float]:
    """ms of each model's forward pass at one thread: median over passes of each round's median. At
    another `precision` each model is quantised and run by onnxruntime (`quantised_onnx_run`)."""
    rounds: dict[str, list[list[float]]] = {name: [] for name in models}
    cpu = Execution()
    with torch_threads(1), tempfile.TemporaryDirectory() as folder:
        if precision == FLOAT:
            calls = {name: (lambda m=model, x=x: m(x)) for name, (model, x) in models.items()}
        else:
            calls = {}
            for i, (name, (model, x)) in enumerate(models.items()):
                pruned = model if hasattr(model, "config") else prune_model(model, PruneConfig.dense(describe(model)))
                calls[name] = quantised_onnx_run(pruned, x, precision, Path(folder) / f"model-{i}.onnx", threads=1)
                print(f"exported {name} in {precision}", file=sys.stderr, flush=True)
        for n in range(timing.passes):
            for name, call in calls.items():
                rounds[name].append(time_round(call, cpu, timing))
            print(f"pass {n + 1}/{timing.passes} done", file=sys.stderr, flush=True)
    return {name: summarise(r)[0] for name, r in rounds.items()}


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(v)).astype(float) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def evaluate(params, dense_rows: dict[str, TimingRow], held_out: list[str], pruned: list[dict], spec) -> dict:
    """Errors of `params` on the held-out dense models and the pruned configs, and Spearman on the latter."""
    rows = [dense_rows[name] for name in held_out]
    dense_errors = [p / r.ms - 1 for p, r in zip(predict(params, rows), rows, strict=True)] if rows else []
    predictor = LatencyPredictor(analytic_table(params, [shape_of(spec)], [1]))
    predicted = [predictor.predict(item["config"], spec).ms for item in pruned]
    measured = [item["ms"] for item in pruned]
    pruned_errors = [p / m - 1 for p, m in zip(predicted, measured, strict=True)]
    return {"dense_errors": dense_errors, "pruned_errors": pruned_errors, "spearman": spearman(predicted, measured)}


def _stats(errors: list[float]) -> dict:
    e = np.abs(errors)
    return {"median": float(np.median(e)), "worst": float(e.max())} if len(e) else {"median": None, "worst": None}


def sweep(base, names: list[str], dense_rows: dict, pruned: list[dict], spec) -> tuple[list[dict], list[dict]]:
    """Per k = 0 (the unfitted base) .. len(names): fits on every subset of k of `names`, errors on the
    other dense models of `names` and on the pruned configs; and each subset's detail."""
    unfitted = evaluate(base, dense_rows, names, pruned, spec)
    by_k = [
        {
            "k": 0,
            "subsets": 1,
            "dense": _stats(unfitted["dense_errors"]),
            "pruned": _stats(unfitted["pruned_errors"]),
            "spearman": {"median": unfitted["spearman"], "worst": unfitted["spearman"]},
            "pruned_bias": float(np.median(unfitted["pruned_errors"])),
        }
    ]
    subsets_out = []
    for k in range(1, len(names) + 1):
        dense_medians, dense_all, pruned_medians, pruned_all, rhos, biases = [], [], [], [], [], []
        subsets = list(itertools.combinations(names, k))
        for subset in subsets:
            result = fit(base, [dense_rows[n] for n in subset], lomo=False)
            held_out = [n for n in names if n not in subset]
            e = evaluate(result.params, dense_rows, held_out, pruned, spec)
            if e["dense_errors"]:
                dense_medians.append(float(np.median(np.abs(e["dense_errors"]))))
                dense_all += e["dense_errors"]
            pruned_medians.append(float(np.median(np.abs(e["pruned_errors"]))))
            pruned_all += e["pruned_errors"]
            rhos.append(e["spearman"])
            biases.append(float(np.median(e["pruned_errors"])))
            subsets_out.append(
                {
                    "fitted_on": list(subset),
                    "dense_errors": dict(zip(held_out, e["dense_errors"], strict=True)),
                    "pruned_median_error": pruned_medians[-1],
                    "pruned_worst_error": float(np.abs(e["pruned_errors"]).max()),
                    "spearman": e["spearman"],
                    "parameters": {f.name: getattr(result.params, f.name) for f in result.free},
                    "at_bound": result.at_bound(),
                }
            )
        by_k.append(
            {
                "k": k,
                "subsets": len(subsets),
                "dense": {
                    "median": statistics.median(dense_medians) if dense_medians else None,
                    "worst": float(np.abs(dense_all).max()) if dense_all else None,
                },
                "pruned": {"median": statistics.median(pruned_medians), "worst": float(np.abs(pruned_all).max())},
                "spearman": {"median": statistics.median(rhos), "worst": min(rhos)},
                "pruned_bias": statistics.median(biases),
            }
        )
    return by_k, subsets_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--configs", type=int, default=16, help="random pruned DeiT-Small configs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--precision", choices=[FLOAT, "int8"], default=FLOAT, help="int8: quantised models run by onnxruntime"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a device_fit.json whose timings to fit again instead of timing now (same --seed and --configs): "
        "for when other benchmarks hold the machine",
    )
    args = parser.parse_args()
    started, load_before = time.time(), uptime()
    torch.manual_seed(0)
    info = cpu_info()
    dtype = "float32" if args.precision == FLOAT else "int8"
    base = host_params(info, dtype)

    models: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    for name, timm_name, size in DENSE:
        model = timm.create_model(timm_name, pretrained=False).eval()
        models[name] = (model, torch.randn(1, 3, size, size))
    dense_small = models[PRUNED_BASE][0]
    spec = describe(dense_small, PRUNED_BASE)
    rng = random.Random(args.seed)
    configs = [random_config(spec, rng, leave_out=("threshold",)) for _ in range(args.configs)]
    timed = {"uptime_before": load_before}
    if args.reuse:
        previous = json.loads(args.reuse.read_text())
        if [p["config"] for p in previous["pruned"]] != [c.key() for c in configs]:
            raise SystemExit(f"{args.reuse}: its pruned configs are not the ones --seed {args.seed} draws now")
        ms = dict(previous["dense_ms"]) | {f"pruned {i}": p["ms"] for i, p in enumerate(previous["pruned"])}
        timed = (
            previous["timed"]
            if "timed" in previous
            else {k: previous["machine"][k] for k in ("uptime_before", "uptime_after")}
        )
        timed = {"reused_from": previous["command"], **timed}  # the run that timed them, through any reuse
    else:
        x = torch.randn(1, 3, 224, 224)
        for i, config in enumerate(configs):
            models[f"pruned {i}"] = (prune_model(dense_small, config, name=PRUNED_BASE).eval(), x)
        ms = measure(models, Timing(passes=args.passes, warmup=1, min_round_s=0.05), args.precision)
        timed["uptime_after"] = uptime()

    dense_rows = {}
    for name, _, size in DENSE:
        shape, depth = resolve_model(name, size)
        dense_rows[name] = TimingRow(0, name, shape, depth, 1, ms[name], "one", dtype)
    pruned = [
        {"config": c, "summary": summarise_config(c, spec), "ms": ms[f"pruned {i}"]} for i, c in enumerate(configs)
    ]
    names = [name for name, _, _ in DENSE]

    sets = {}
    for label, chosen in (("all", names), (f"without {OUTLIER}", [n for n in names if n != OUTLIER])):
        by_k, subsets = sweep(base, chosen, dense_rows, pruned, spec)
        full = fit(base, [dense_rows[n] for n in chosen])
        sets[label] = {
            "models": chosen,
            "by_k": by_k,
            "all_models_fit": full.summary(),
            "all_models_parameters": {f.name: getattr(full.params, f.name) for f in full.free},
            "subsets": subsets,
        }
    load_after = uptime()
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {
            "cpu": info["model"],
            "simd_flags": sorted(f for f in info["flags"] if f.startswith(("avx", "fma"))),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": 1,
            "precision": args.precision,
            "runtime": "torch" if args.precision == FLOAT else f"onnxruntime {ort_version()} (QDQ)",
        },
        "timed": timed,
        "fitted": {"uptime_before": load_before, "uptime_after": load_after},
        "seconds": round(time.time() - started, 1),
        "base": {
            "hardware": base.hardware,
            "fp32_flops_per_cycle": base.clusters[0].fp32_flops_per_cycle,
            **({"int8_macs_per_cycle": base.clusters[0].int8_macs_per_cycle} if dtype == "int8" else {}),
            "clock_ghz": base.clusters[0].clock_ghz,
            "parameters": base.model_dump(mode="json"),
        },
        "dense_ms": {n: ms[n] for n in names},
        "pruned": [{"summary": p["summary"], "config": p["config"].key(), "ms": p["ms"]} for p in pruned],
        "sets": sets,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "device_fit" if args.precision == FLOAT else f"device_fit_{args.precision}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = [
        "# Fitting a device to a few timings: this host's CPU as a stand-in",
        "",
        f"{m['cpu']} ({', '.join(m['simd_flags'])}), one thread, batch 1, "
        + (
            f"fp32, torch {m['torch']}. "
            if m.get("precision", FLOAT) == FLOAT
            else f"{m['precision']} W8A8 run by {m['runtime']}. "
        )
        + f"Timed with the load at `{r['timed']['uptime_before']}` before, `{r['timed']['uptime_after']}` after"
        + (f" (timings reused from `{r['timed']['reused_from']}`)" if "reused_from" in r["timed"] else "")
        + f"; fitted in {r['seconds']:.0f} s.",
        "",
        f"Base device (the unfitted preset): {r['base']['hardware']}; "
        f"{r['base']['fp32_flops_per_cycle']:g} fp32 FLOP/cycle"
        + (f" ({r['base']['int8_macs_per_cycle']:g} int8 MAC/cycle)" if "int8_macs_per_cycle" in r["base"] else "")
        + " at "
        f"{r['base']['clock_ghz']:.2f} GHz (derived from the CPU flags; see the JSON's sources), "
        "the default phone preset's efficiencies and overhead.",
        "",
        "Dense models timed (median over passes of each round's median):",
        "",
        "| model | ms |",
        "|---|---:|",
        *(f"| {name} | {ms:.1f} |" for name, ms in r["dense_ms"].items()),
        "",
        f"Pruned DeiT-Small configs: {len(r['pruned'])}, from "
        f"{min(p['ms'] for p in r['pruned']):.1f} to {max(p['ms'] for p in r['pruned']):.1f} ms.",
        "",
        "Fitted on every subset of k dense models; 'held-out dense' are the other dense models (median over "
        "subsets of each subset's median |error|; worst over all subsets), 'pruned' the DeiT-Small configs "
        "priced with the fitted device's table, 'bias' the median over subsets of their median signed error. "
        "k = 0 is the unfitted base.",
        "",
        f"The sweep is made again without {OUTLIER}: " + " ".join(OUTLIER_WHY.split()),
    ]
    for label, sweep_result in r["sets"].items():
        lines += [
            "",
            f"### Dense models: {label} ({len(sweep_result['models'])})",
            "",
            "| k | subsets | held-out dense median | held-out dense worst | pruned median | pruned worst | "
            "pruned bias | Spearman (median) | Spearman (worst) |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in sweep_result["by_k"]:
            lines.append(
                f"| {row['k']} | {row['subsets']} | {pct(row['dense']['median'])} | {pct(row['dense']['worst'])} | "
                f"{pct(row['pruned']['median'])} | {pct(row['pruned']['worst'])} | "
                f"{100 * row['pruned_bias']:+.1f}% | {row['spearman']['median']:.3f} | "
                f"{row['spearman']['worst']:.3f} |"
            )
        s = sweep_result["all_models_fit"]
        lines += [
            "",
            f"Fitted on all {s['models']}: median error {pct(s['fit_median_error'])}, worst "
            f"{pct(s['fit_worst_error'])}; leave-one-model-out median {pct(s['lomo_median_error'])}, worst "
            f"{pct(s['lomo_worst_error'])}. Parameters: "
            + ", ".join(f"{k} {v:.3g}" for k, v in sweep_result["all_models_parameters"].items())
            + ".",
        ]
    lines += [
        "",
        f"Command: `{r['command']}`",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
