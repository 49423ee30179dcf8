"""Does searching precision with the structure beat pruning alone at the same budget?

For each target (device, batch, budget as a share of the dense fp32 model's predicted latency) two
searches run with the same trials, sampler, seed, images and token space (the job's default for the
device), heads and MLP widths searched, weight recovery and the default objective: one searches fp32
models only (pruning alone), the other also int8 (W8A8, quantised after pruning on calibration
images, priced in int8). Trials are scored on one half of the 1,000 sample images (`holdout` 0.5,
seed 0) and the pick (the Pareto model with the best calibration score within the budget, the
search's own ranking) is reported on the other half, which no search saw: top-1, top-1 agreement and
KL with the dense fp32 model, with standard errors. On an FPGA the fp32 models are priced as the
board's 16-bit fixed-point design (`latency_models.devices.analytic`).

    python bench/joint_search.py --data $VITPRUNE_DATA_DIR --targets fpga:zcu102:1:0.5,mobile-cpu:1:0.5 --trials 40

Writes `<out>/joint_search.{json,md}`; studies and bundles go to `--work`. `--searches "pruning + int8"`
re-runs one kind of search and keeps the other rows of the file there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from default_space import picked, summarise

from search import JobSpec, run_search

MODEL = "deit_tiny_patch16_224"
SEARCHES = {"pruning only": ("fp32",), "pruning + int8": ("fp32", "int8")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("VITPRUNE_DATA_DIR"))
    parser.add_argument("--targets", default="fpga:zcu102:1:0.5,mobile-cpu:1:0.5", help="DEVICE:BATCH:RATIO, ...")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--calib-images", type=int, default=250, help="of the search half (spread over classes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/joint_search"))
    parser.add_argument(
        "--searches", default=",".join(SEARCHES), help="re-run only these; the other rows are kept from --out's file"
    )
    args = parser.parse_args()
    if args.data is None:
        parser.error("give --data or set VITPRUNE_DATA_DIR")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    chosen = args.searches.split(",")
    if unknown := set(chosen) - set(SEARCHES):
        parser.error(f"--searches: unknown {sorted(unknown)}; choose from {', '.join(SEARCHES)}")
    saved = args.out / "joint_search.json"
    kept = json.loads(saved.read_text())["rows"] if saved.exists() and len(chosen) < len(SEARCHES) else []
    rows = []
    for target in args.targets.split(","):
        device, batch, ratio = target.rsplit(":", 2)
        for name, precisions in SEARCHES.items():
            if name not in chosen:
                rows += [r for r in kept if (r["device"], r["batch"], r["ratio"], r["search"]) == (
                    device, int(batch), float(ratio), name)]  # fmt: skip
                continue
            rows.append(run(args, device, int(batch), float(ratio), name, precisions))
            print(json.dumps(rows[-1]))
            summary = {"model": MODEL, "trials": args.trials, "calib_images": args.calib_images, "rows": rows}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "joint_search.json").write_text(json.dumps(summary, indent=1))
            (args.out / "joint_search.md").write_text(markdown(summary))
    return 0


def run(args, device: str, batch: int, ratio: float, name: str, precisions: tuple[str, ...]) -> dict:
    job = JobSpec(
        model=MODEL,
        weights=args.data / MODEL / "model.safetensors",
        device=device,
        batch=batch,
        budget_ratio=ratio,
        calib=args.data / "imagenet-sample",
        holdout=0.5,
        class_map=args.data / "imagenet_wnids.txt",
        calib_images=args.calib_images,
        trials=args.trials,
        space={"heads": True, "mlp": True, "precisions": precisions},  # the device's default token op
        seed=0,
    )
    out = args.work / f"{device.replace(':', '-')}-b{batch}-{ratio}-{'-'.join(precisions)}"
    began = time.monotonic()
    result = run_search(job, f"sqlite:///{args.work / 'search.db'}", out, show_progress=True)
    return {
        "device": device,
        "batch": batch,
        "ratio": ratio,
        "search": name,
        "tokens": job.space.tokens,
        **picked(result),
        "pareto_precisions": sorted({m["precision"] for m in result.models}),
        "minutes": round((time.monotonic() - began) / 60, 1),
    }


def markdown(summary: dict) -> str:
    lines = [
        f"# Joint search: pruning alone against pruning with int8 ({summary['model']}, {summary['trials']} trials, "
        f"{summary['calib_images']} calibration images, objective kl, heads and MLP searched, weight recovery)",
        "",
        "Searched on one half of the sample, reported on the other half (never searched). The budget is a share",
        "of the dense fp32 model's predicted latency; the pick is the Pareto model with the best calibration",
        "score within it. ± is one standard error.",
        "",
        "| device | batch | budget | search | top-1 (dense) | agreement | KL | precision | predicted / dense | pick "
        "| minutes |",
        "|---|--:|--:|---|---|---|---|---|--:|---|--:|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['device']} | {r['batch']} | {r['ratio']}x | {r['search']} | {r['top1']:.1f} ± {r['top1_se']:.1f} "
            f"({r['dense_top1']:.1f}) | {r['agreement']:.1f} ± {r['agreement_se']:.1f} | {r['kl']:.3f} ± "
            f"{r['kl_se']:.3f} | {r['precision']} | {r['predicted_ms'] / r['dense_ms']:.3f} | "
            f"{summarise(r['structure'])} | {r['minutes']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
