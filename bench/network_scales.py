"""Power-of-two scales chosen for the whole network against layer by layer (`quantise(network_scales=True)`).

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9), quantised to
`int8-pow2` as onnxruntime's recipe runs it (attention products and residual stream float) and as the
FPGA computes it (fully integer: products int8, the stream per channel up to 2^3), calibrated on
`--calibration-images` spread over one half of the 1,000 sample images (a seeded shuffle); the
network-wide search judges its tries on the first 128 of them. On the other
half, which nothing was chosen on: the points lost to the model's own fp32 version (paired SE), top-1
agreement and KL with it, and the seconds each quantisation took.

Writes `network_scales.{json,md}` under `--out`.

    python bench/network_scales.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from quantisation import paired_loss, prepare

from latency_models.analytic import FpgaParams
from latency_models.devices.analytic import STREAM_SHIFTS
from pruning.metrics import classification_metrics, predict
from pruning.quantisation import quantise

CHOICES = {"layer by layer": False, "whole network": True}
RECIPES = {"onnxruntime": None, "fully integer (FPGA)": STREAM_SHIFTS[FpgaParams]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--calibration-images", type=int, default=256, help="spread over the calibration half")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the split of the sample into calibration and report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, report, batches, models = prepare(args)
    rows = []
    for name, model in models.items():
        float_logits = predict(model, report)
        for recipe, stream in RECIPES.items():
            for choice, network in CHOICES.items():
                start = time.perf_counter()
                at = {"attention": stream is not None, "stream": stream, "network_scales": network}
                quantised = quantise(model, batches, "int8-pow2", **at)
                seconds = time.perf_counter() - start
                logits = predict(quantised, report)
                fidelity = classification_metrics(logits, report.labels, float_logits)
                row = {
                    "model": name,
                    "recipe": recipe,
                    "scales": choice,
                    "top1": fidelity.top1,
                    "loss": paired_loss(logits, float_logits, report),
                    "agreement": fidelity.agreement,
                    "agreement_se": fidelity.agreement_se,
                    "kl": fidelity.kl,
                    "kl_se": fidelity.kl_se,
                    "seconds": seconds,
                    "described": quantised.quantisation["scales"],
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    summary = {
        "model": args.model,
        "calibration_images": sum(len(batch) for batch in batches),
        "report_images": len(report),
        "seed": args.seed,
        "threads": args.threads,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "network_scales.json").write_text(json.dumps(summary, indent=2))
    (args.out / "network_scales.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _markdown(summary: dict) -> str:
    lines = [
        f"# Power-of-two scales for the whole network ({summary['model']}, int8-pow2, "
        f"{summary['calibration_images']} calibration images, {summary['report_images']} report images, "
        f"seed {summary['seed']}, {summary['threads']} threads)",
        "",
        "Loss and fidelity against each model's own fp32 version on the report half; ± is one standard error.",
        "",
        "| model | computed as | scales | top-1 | points lost | agreement | KL | seconds |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        loss = row["loss"]
        lines.append(
            f"| {row['model']} | {row['recipe']} | {row['scales']} | {row['top1']:.1f} | "
            f"{loss['points'] + 0.0:+.1f} ± {loss['se']:.1f} | {row['agreement']:.1f} ± {row['agreement_se']:.1f} | "
            f"{row['kl']:.4f} ± {row['kl_se']:.4f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
