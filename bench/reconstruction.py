"""What reconstruction (`vitprune quantise --reconstruct`) buys over nearest-code rounding after min-max
calibration, and what it costs to build.

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Precisions
`int8` and `int8-pow2`, each built plainly and with reconstruction, both on `--calibration-images`
spread over one half of the 1,000 sample images (a seeded shuffle). Every figure is measured on images
of the other half, `--report-from` onwards (the images before it were used to try the method out, so
they are left out here). Per model, precision and method: top-1 and the points lost to its own fp32
model (paired SE), top-1 agreement and KL with its own fp32 model (what quantisation alone costs) and
with the dense fp32 model, and the seconds quantisation took.

Writes `reconstruction.{json,md}` under `--out`.

    python bench/reconstruction.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from quantisation import PRECISIONS, paired_loss, prepare

from pruning.metrics import classification_metrics, predict
from pruning.quantisation import quantise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--calibration-images", type=int, default=64, help="spread over the calibration half")
    parser.add_argument("--report-from", type=int, default=250, help="report on the report half from this image on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the split of the sample into calibration and report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense, report_half, batches, models = prepare(args)
    report = report_half.subset(list(range(args.report_from, len(report_half))))
    count = sum(len(batch) for batch in batches)
    reference = predict(dense, report)
    rows = []
    for name, model in models.items():
        float_logits = predict(model, report)
        for precision in PRECISIONS:
            for method in ("nearest", "reconstructed"):
                start = time.perf_counter()
                quantised = quantise(model, batches, precision, reconstruct=method == "reconstructed")
                seconds = time.perf_counter() - start
                logits = predict(quantised, report)
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "method": method,
                        "seconds": seconds,
                        "loss": paired_loss(logits, float_logits, report),
                        "vs_own_fp32": classification_metrics(logits, None, float_logits).to_dict(),
                        "vs_dense": classification_metrics(logits, report.labels, reference).to_dict(),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {
        "model": args.model,
        "calibration_images": count,
        "report_images": len(report),
        "report_from": args.report_from,
        "threads": args.threads,
        "seed": args.seed,
        "dense_top1": classification_metrics(reference, report.labels, reference).to_dict(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reconstruction.json").write_text(json.dumps(summary, indent=2))
    (args.out / "reconstruction.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _markdown(summary: dict) -> str:
    dense = summary["dense_top1"]
    lines = [
        f"# Reconstruction against nearest-code rounding: {summary['model']}",
        "",
        f"Calibrated on {summary['calibration_images']} images of one half of the sample; measured on"
        f" {summary['report_images']} images of the other half (from its image {summary['report_from']} on,"
        f" seed {summary['seed']}); dense fp32 top-1 {dense['top1']:.1f}% (SE {dense['top1_se']:.1f});"
        f" {summary['threads']} thread(s).",
        "",
        "| model | precision | method | top-1 (SE) | points lost vs its fp32 (paired SE)"
        " | agreement with its fp32 (SE) | KL vs its fp32 | agreement with dense | KL vs dense | seconds |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        own, dense_row, loss = row["vs_own_fp32"], row["vs_dense"], row["loss"]
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['method']}"
            f" | {dense_row['top1']:.1f} ({dense_row['top1_se']:.1f}) | {loss['points']:.1f} ({loss['se']:.1f})"
            f" | {own['agreement']:.1f} ({own['agreement_se']:.1f}) | {own['kl']:.4f}"
            f" | {dense_row['agreement']:.1f} | {dense_row['kl']:.4f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
