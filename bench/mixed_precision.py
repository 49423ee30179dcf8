"""Per-block precision: what keeping the most sensitive blocks float buys back, and what it costs in latency.

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Each is
quantised as an integer device computes it (`int8` and `int8-pow2`, attention products in int8, as on
a phone's int8 or the FPGA), calibrated on `--calibration-images` spread over one half of the 1,000
sample images (a seeded shuffle). The blocks' sensitivity (`pruning.quantisation.block_sensitivity`) is
measured on those same calibration images; the 0 to `--max-float` most sensitive are kept float. On
the other half, which nothing was chosen on: the points lost to the model's own fp32 version (paired
SE), top-1 agreement and KL with it; and each model priced at batch 1 on `mobile-cpu` and
`fpga:zcu102` (float blocks from the float table), as a fraction of its fp32 price.

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

DEVICES = ("mobile-cpu", "fpga:zcu102")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--calibration-images", type=int, default=256, help="spread over the calibration half")
    parser.add_argument("--max-float", type=int, default=3, help="keep up to this many blocks float")
    parser.add_argument("--precisions", default="int8,int8-pow2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the split of the sample into calibration and report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, report, batches, models = prepare(args)
    registry = Registry()
    rows = []
    for name, model in models.items():
        float_logits = predict(model, report)
        for precision in args.precisions.split(","):
            sensitivity = block_sensitivity(model, batches, precision, attention=True)
            print(json.dumps({"model": name, "precision": precision, "sensitivity": sensitivity}), file=sys.stderr)
            for keep in range(args.max_float + 1):
                float_blocks = most_sensitive_blocks(sensitivity, keep)
                quantised = quantise(model, batches, precision, attention=True, float_blocks=float_blocks)
                logits = predict(quantised, report)
                fidelity = classification_metrics(logits, report.labels, float_logits)
                row = {
                    "model": name,
                    "precision": precision,
                    "float_blocks": float_blocks,
                    "top1": fidelity.top1,
                    "loss": paired_loss(logits, float_logits, report),
                    "agreement": fidelity.agreement,
                    "agreement_se": fidelity.agreement_se,
                    "kl": fidelity.kl,
                    "kl_se": fidelity.kl_se,
                    "latency": _prices(registry, model, precision, float_blocks),
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


def _prices(registry: Registry, model, precision: str, float_blocks: list[int]) -> dict[str, dict[str, float]]:
    """device -> the model's predicted ms at batch 1 (float blocks priced float) and its fraction of fp32."""
    prices = {}
    for device in DEVICES:
        float_, quantised = (
            registry.predictor(registry.priced_as(device, p), model.spec, [1], progress=False)
            for p in ("fp32", precision)
        )
        fp32 = float_.predict(model.config, model.spec).ms
        ms = MixedPrecisionPredictor(quantised, float_, float_blocks).predict(model.config, model.spec).ms
        prices[device] = {"ms": ms, "of_fp32": ms / fp32}
    return prices


def _markdown(summary: dict) -> str:
    lines = [
        f"# Blocks kept float ({summary['model']}, {summary['calibration_images']} calibration images, "
        f"{summary['report_images']} report images, seed {summary['seed']})",
        "",
        "Attention products in int8 (as a phone's int8 and the FPGA compute them). Blocks chosen by their sensitivity "
        "on the calibration images; loss and fidelity against each model's own fp32 version on the report half; "
        "± is one standard error. Latency: batch 1, as a fraction of the same model in fp32 on that device.",
        "",
        "| model | precision | float blocks | top-1 | points lost | agreement | KL | mobile-cpu | fpga:zcu102 |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        loss, latency = row["loss"], row["latency"]
        blocks = ", ".join(map(str, row["float_blocks"])) or "none"
        lines.append(
            f"| {row['model']} | {row['precision']} | {blocks} | {row['top1']:.1f} | "
            f"{loss['points'] + 0.0:+.1f} ± {loss['se']:.1f} | {row['agreement']:.1f} ± {row['agreement_se']:.1f} | "
            f"{row['kl']:.4f} ± {row['kl_se']:.4f} | "
            + " | ".join(f"{latency[d]['of_fp32']:.2f}x" for d in DEVICES)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
