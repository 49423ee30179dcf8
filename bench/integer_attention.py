"""What computing a quantised model fully in integer costs: the accuracy a phone running it fully in int8,
or the FPGA, gives beside onnxruntime's recipe (attention products and residual stream float).

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Precisions
`int8` and `int8-pow2`, each quantised four ways (`RECIPES`): as onnxruntime runs it; with the attention
products in int8 but the residual stream float (what each part costs); as a phone's full-int8 runtime
computes it (products int8, the stream one scale per tensor); as the FPGA does (products int8, the stream
per channel up to 2^3, FQ-ViT's Power-of-Two Factor); both with the patch embedding and GELU's and
softmax's inputs in 8 bits too. Calibrated on `--calibration-images` spread over
one half of the 1,000 sample images (a seeded shuffle), and measured on the other half, which nothing
was tried on: top-1 and the points lost to its own fp32 model (paired SE), top-1 agreement and KL with
its own fp32 model; for the integer recipes, the exported file run by onnxruntime against the
simulation, and beside it the float floor (the simulation in float64 against itself in float32,
`bench/quantisation.py`).

Writes `integer_attention.{json,md}` under `--out`.

    python bench/integer_attention.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from quantisation import PRECISIONS, fidelity, fidelity_cells, float64_logits, halves_parser, prepare, write_results

from latency_models.analytic import FpgaParams, MobileCpuParams
from latency_models.devices.analytic import STREAM_SHIFTS
from pruning.export import export_onnx
from pruning.metrics import classification_metrics, predict
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import quantise

RECIPES = {
    "onnxruntime": (False, None),
    "products int8, stream float": (True, None),
    "phone (full int8)": (True, STREAM_SHIFTS[MobileCpuParams]),
    "FPGA (fully integer)": (True, STREAM_SHIFTS[FpgaParams]),
}
"""name -> (`quantise`'s attention, stream)."""


def main() -> int:
    args = halves_parser(__doc__, threads=2).parse_args()
    torch.set_num_threads(args.threads)
    _, report, batches, models = prepare(args)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            float_logits = predict(model, report)
            for precision in PRECISIONS:
                for recipe, (attention, stream) in RECIPES.items():
                    quantised = quantise(model, batches, precision, attention=attention, stream=stream)
                    logits = predict(quantised, report)
                    row = {"model": name, "precision": precision, "recipe": recipe}
                    row |= fidelity(logits, float_logits, report)
                    if attention:
                        path = Path(folder) / f"{name}-{precision}-{stream}.onnx"
                        export_onnx(quantised, path)
                        runtime = onnx_logits(onnx_session(path, args.threads), report)
                        row["onnx_vs_simulation"] = classification_metrics(runtime, None, logits).agreement
                        wide = float64_logits(quantised, report)
                        row["float_floor"] = classification_metrics(wide, None, logits).agreement
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    write_results(args, "integer_attention", batches, report, rows, _markdown)
    return 0


def _markdown(summary: dict) -> str:
    lines = [
        f"# Fully integer ({summary['model']}, {summary['calibration_images']} calibration images, "
        f"{summary['report_images']} report images, seed {summary['seed']})",
        "",
        "Loss and fidelity against each model's own fp32 version on the report half; ± is one standard error.",
        "",
        "| model | precision | computed as | top-1 | points lost | agreement | KL | onnxruntime vs simulation"
        " | float floor |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        onnx, floor = (f"{row[key]:.1f}%" if key in row else "" for key in ("onnx_vs_simulation", "float_floor"))
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['recipe']} | {fidelity_cells(row)} | {onnx} | {floor} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
