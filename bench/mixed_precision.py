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

import argparse
import json
import sys
from pathlib import Path

import torch
from quantisation import paired_loss, prepare

from latency_models.mixed import MixedPrecisionPredictor
from latency_models.registry import Registry
from pruning.metrics import classification_metrics, predict
from pruning.quantisation import block_sensitivity, most_sensitive_blocks, quantise

DEVICES = {"mobile-cpu": "int8", "fpga:zcu102": "int8-pow2"}
"""device -> the precision measured on it."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--calibration-images", type=int, default=256, help="spread over the calibration half")
    parser.add_argument("--max-float", type=int, default=3, help="keep up to this many blocks float")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the split of the sample into calibration and report")
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
                fidelity = classification_metrics(logits, report.labels, float_logits)
                row = {
                    "model": name,
                    "device": device,
                    "precision": precision,
                    "float_blocks": float_blocks,
                    "top1": fidelity.top1,
                    "loss": paired_loss(logits, float_logits, report),
                    "agreement": fidelity.agreement,
                    "agreement_se": fidelity.agreement_se,
                    "kl": fidelity.kl,
                    "kl_se": fidelity.kl_se,
                    "latency": _price(registry, device, model, precision, float_blocks),
                    "sensitivity": sensitivity,
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
    (args.out / "mixed_precision.json").write_text(json.dumps(summary, indent=2))
    (args.out / "mixed_precision.md").write_text(_markdown(summary))
    print(_markdown(summary))
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
        loss, latency = row["loss"], row["latency"]
        blocks = ", ".join(map(str, row["float_blocks"])) or "none"
        lines.append(
            f"| {row['model']} | {row['device']} | {row['precision']} | {blocks} | {row['top1']:.1f} | "
            f"{loss['points'] + 0.0:+.1f} ± {loss['se']:.1f} | {row['agreement']:.1f} ± {row['agreement_se']:.1f} | "
            f"{row['kl']:.4f} ± {row['kl_se']:.4f} | {latency['of_fp32']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
