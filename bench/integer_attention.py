"""What multiplying the attention products in int8 costs: the accuracy a phone running the model fully in
int8, or the FPGA, gives (`quantise(attention=True)`) beside onnxruntime's recipe (products in float).

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Precisions
`int8` and `int8-pow2`, each quantised with the attention products in float and in int8, calibrated on
`--calibration-images` spread over one half of the 1,000 sample images (a seeded shuffle), and measured
on the other half, which nothing was tried on: top-1 and the points lost to its own fp32 model (paired
SE), top-1 agreement and KL with its own fp32 model; for the int8 products, the exported file run by
onnxruntime against the simulation.

Writes `integer_attention.{json,md}` under `--out`.

    python bench/integer_attention.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from quantisation import PRECISIONS, paired_loss, prepare

from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import quantise

PRODUCTS = {"float": False, "int8": True}


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
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            float_logits = predict(model, report)
            for precision in PRECISIONS:
                for products, attention in PRODUCTS.items():
                    quantised = quantise(model, batches, precision, attention=attention)
                    logits = predict(quantised, report)
                    fidelity = classification_metrics(logits, report.labels, float_logits)
                    row = {
                        "model": name,
                        "precision": precision,
                        "attention_products": products,
                        "top1": fidelity.top1,
                        "loss": paired_loss(logits, float_logits, report),
                        "agreement": fidelity.agreement,
                        "agreement_se": fidelity.agreement_se,
                        "kl": fidelity.kl,
                        "kl_se": fidelity.kl_se,
                    }
                    if attention:
                        path = Path(folder) / f"{name}-{precision}.onnx"
                        export_onnx(quantised, path)
                        runtime = onnx_logits(onnx_session(path, args.threads), report)
                        row["onnx_vs_simulation"] = classification_metrics(runtime, None, logits).agreement
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
    (args.out / "integer_attention.json").write_text(json.dumps(summary, indent=2))
    (args.out / "integer_attention.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _markdown(summary: dict) -> str:
    lines = [
        f"# Attention products in int8 ({summary['model']}, {summary['calibration_images']} calibration images, "
        f"{summary['report_images']} report images, seed {summary['seed']})",
        "",
        "Loss and fidelity against each model's own fp32 version on the report half; ± is one standard error.",
        "",
        "| model | precision | attention products | top-1 | points lost | agreement | KL | onnxruntime vs simulation |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        loss = row["loss"]
        onnx = f"{row['onnx_vs_simulation']:.1f}%" if "onnx_vs_simulation" in row else ""
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['attention_products']} | {row['top1']:.1f} | "
            f"{loss['points'] + 0.0:+.1f} ± {loss['se']:.1f} | {row['agreement']:.1f} ± {row['agreement_se']:.1f} | "
            f"{row['kl']:.4f} ± {row['kl_se']:.4f} | {onnx} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
