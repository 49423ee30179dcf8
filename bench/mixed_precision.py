"""Per-block precision: what keeping the most sensitive blocks float buys back, and what it costs in latency.

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Each is
quantised as a device computes it (`DEVICES`: `int8` fully integer as a phone's int8 runtime computes,
`int8-pow2` as the FPGA does; `DeviceBackend.fully_integer`), calibrated on `--calibration-images`
spread over one half of the 1,000 sample images (a seeded shuffle). The blocks' sensitivity
(`pruning.quantisation.block_sensitivity`) is measured on those same calibration images; the 0 to
`--max-float` most sensitive are kept float. On the other half, which nothing was chosen on: the points
lost to the model's own fp32 version (paired SE), top-1 agreement and KL with it; and each model priced
at batch 1 on its device (float blocks from the float table), as a fraction of its fp32 price.

Writes `mixed_precision.{json,md}` under `--out`.

    python bench/mixed_precision.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import json
import sys

import torch
from quantisation import fidelity, fidelity_cells, halves_parser, prepare, write_results

from latency_models.mixed import MixedPrecisionPredictor
from latency_models.registry import Registry
from pruning.metrics import predict
from pruning.quantisation import block_sensitivity, most_sensitive_blocks, quantise

DEVICES = {"mobile-cpu": "int8", "fpga:zcu102": "int8-pow2"}
"""device -> the precision measured on it."""


def main() -> int:
    parser = halves_parser(__doc__, threads=2)
    parser.add_argument("--max-float", type=int, default=3, help="keep up to this many blocks float")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, report, batches, models = prepare(args)
    registry = Registry()
    rows = []
    for name, model in models.items():
        float_logits = predict(model, report)
        for device, precision in DEVICES.items():
            recipe = {"attention": True, "stream": registry.fully_integer(device, precision)}
            sensitivity = block_sensitivity(model, batches, precision, **recipe)
            print(json.dumps({"model": name, "device": device, "sensitivity": sensitivity}), file=sys.stderr)
            for keep in range(args.max_float + 1):
                float_blocks = most_sensitive_blocks(sensitivity, keep)
                quantised = quantise(model, batches, precision, float_blocks=float_blocks, **recipe)
                logits = predict(quantised, report)
                row = {"model": name, "device": device, "precision": precision, "float_blocks": float_blocks}
                row |= fidelity(logits, float_logits, report)
                row |= {"latency": _price(registry, device, model, precision, float_blocks), "sensitivity": sensitivity}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    write_results(args, "mixed_precision", batches, report, rows, _markdown)
    return 0


def _price(registry: Registry, device: str, model, precision: str, float_blocks: list[int]) -> dict[str, float]:
    """The model's predicted ms at batch 1 on `device` (float blocks priced float) and its fraction of fp32."""
    float_, quantised = (
        registry.predictor(registry.priced_as(device, p), model.spec, [1], progress=False) for p in ("fp32", precision)
    )
    fp32 = float_.predict(model.config, model.spec).ms
    ms = MixedPrecisionPredictor(quantised, float_, float_blocks).predict(model.config, model.spec).ms
    return {"ms": ms, "of_fp32": ms / fp32}


def _markdown(summary: dict) -> str:
    lines = [
        f"# Blocks kept float ({summary['model']}, {summary['calibration_images']} calibration images, "
        f"{summary['report_images']} report images, seed {summary['seed']})",
        "",
        "Quantised fully in integer as each device computes it. Blocks chosen by their sensitivity on the calibration "
        "images; loss and fidelity against each model's own fp32 version on the report half; ± is one standard "
        "error. Latency: batch 1 on the row's device, as a fraction of the same model in fp32 there.",
        "",
        "| model | device | precision | float blocks | top-1 | points lost | agreement | KL | latency / fp32 |",
        "|---|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        blocks = ", ".join(map(str, row["float_blocks"])) or "none"
        lines.append(
            f"| {row['model']} | {row['device']} | {row['precision']} | {blocks} | {fidelity_cells(row)} | "
            f"{row['latency']['of_fp32']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
