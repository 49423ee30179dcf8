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

import json
import sys
import time

import torch
from quantisation import fidelity, fidelity_cells, halves_parser, prepare, write_results

from latency_models.analytic import FpgaParams
from latency_models.devices.analytic import STREAM_SHIFTS
from pruning.metrics import predict
from pruning.quantisation import quantise

CHOICES = {"layer by layer": False, "whole network": True}
RECIPES = {"onnxruntime": None, "fully integer (FPGA)": STREAM_SHIFTS[FpgaParams]}


def main() -> int:
    args = halves_parser(__doc__, threads=2).parse_args()
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
                row = {"model": name, "recipe": recipe, "scales": choice}
                row |= fidelity(predict(quantised, report), float_logits, report)
                row |= {"seconds": seconds, "described": quantised.quantisation["scales"]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    write_results(args, "network_scales", batches, report, rows, _markdown)
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
        cells = f"{row['model']} | {row['recipe']} | {row['scales']} | {fidelity_cells(row)} | {row['seconds']:.0f}"
        lines.append(f"| {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
