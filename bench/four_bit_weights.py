"""What 4-bit weights (W4A8, `--precision w4a8`) cost in accuracy against W8A8, and what they save on the
devices that price them.

Accuracy: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9), quantised to
`int8` (nearest codes, the W8A8 reference) and to `w4a8` with nearest codes and with reconstruction, all
calibrated on `--calibration-images` spread over one half of the 1,000 sample images; every figure is on
the other half: top-1, the points lost to the model's own fp32 version (paired SE), agreement and KL with
it, the seconds quantisation took, and for the reconstructed W4A8 model the exported QDQ file run by
onnxruntime (top-1 agreement with the simulation, largest logit difference).

Latency: dense DeiT-Tiny, -Small and -Base at batch 1 priced fp32, int8 and w4a8 on `fpga:zcu102` and
`mobile-cpu` (their analytic models: docs/devices.md), no weights needed.

Writes `four_bit_weights.{json,md}` under `--out`.

    python bench/four_bit_weights.py --data $VITPRUNE_DATA_DIR --threads 2
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from quantisation import fidelity, fidelity_cells, halves_parser, prepare, write_results

from latency_models.registry import Registry
from pruning import PruneConfig, describe
from pruning.export import export_onnx
from pruning.loading import create_model
from pruning.metrics import classification_metrics, predict
from pruning.onnx_session import onnx_logits, onnx_session
from pruning.quantisation import quantise

RECIPES = (("int8", False), ("w4a8", False), ("w4a8", True))
"""(precision, reconstruct) of each accuracy row."""
PRICED = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
DEVICES = ("fpga:zcu102", "mobile-cpu")


def main() -> int:
    args = halves_parser(__doc__, threads=2).parse_args()
    torch.set_num_threads(args.threads)
    dense, report, batches, models = prepare(args)
    reference = predict(dense, report)
    rows = []
    for name, model in models.items():
        float_logits = predict(model, report)
        for precision, reconstruct in RECIPES:
            start = time.perf_counter()
            quantised = quantise(model, batches, precision, reconstruct=reconstruct)
            seconds = time.perf_counter() - start
            logits = predict(quantised, report)
            row = {"model": name, "precision": precision, "reconstruct": reconstruct, "seconds": seconds}
            row |= fidelity(logits, float_logits, report)
            row["vs_dense"] = classification_metrics(logits, report.labels, reference).to_dict()
            if reconstruct:
                row["onnxruntime"] = _onnx_check(quantised, logits, report, args.threads)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    write_results(args, "four_bit_weights", batches, report, rows, _markdown, prices=_prices())
    return 0


def _onnx_check(quantised, simulated: torch.Tensor, report, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w4a8.onnx"
        export_onnx(quantised, path)
        runtime = onnx_logits(onnx_session(path, threads), report)
    check = classification_metrics(runtime, report.labels, simulated)
    return {"top1": check.top1, "agreement": check.agreement, "max_abs_diff": float((runtime - simulated).abs().max())}


def _prices() -> list[dict]:
    """Each priced model's dense latency at batch 1 per device and precision (ms)."""
    registry, prices = Registry(), []
    for model_name in PRICED:
        spec = describe(create_model(model_name), model_name)
        config = PruneConfig.dense(spec)
        for device in DEVICES:
            ms = {}
            for precision in ("fp32", "int8", "w4a8"):
                predictor = registry.predictor(registry.priced_as(device, precision), spec, [1], progress=False)
                ms[precision] = predictor.predict(config, spec, 1).ms
            prices.append({"model": model_name, "device": device, "ms": ms})
    return prices


def _markdown(summary: dict) -> str:
    lines = [
        f"# 4-bit weights (W4A8): {summary['model']}",
        "",
        f"Calibrated on {summary['calibration_images']} images of one half of the sample, measured on the other"
        f" {summary['report_images']} (seed {summary['seed']}), {summary['threads']} thread(s). Points lost,"
        " agreement and KL are against each model's own fp32 version.",
        "",
        "| model | precision | codes | top-1 | points lost (paired SE) | agreement (SE) | KL (SE) | seconds"
        " | onnxruntime vs simulation: agreement, max diff |",
        "|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in summary["rows"]:
        check = row.get("onnxruntime")
        onnx_cell = f"{check['agreement']:.1f}%, {check['max_abs_diff']:.2f}" if check else ""
        codes = "reconstructed" if row["reconstruct"] else "nearest"
        lines.append(
            f"| {row['model']} | {row['precision']} | {codes} | {fidelity_cells(row)} | {row['seconds']:.0f}"
            f" | {onnx_cell} |"
        )
    lines += [
        "",
        "Dense models at batch 1, priced by the analytic device models (ms; w4a8 against int8):",
        "",
        "| model | device | fp32 | int8 | w4a8 | w4a8 / int8 |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for price in summary["prices"]:
        ms = price["ms"]
        lines.append(
            f"| {price['model']} | {price['device']} | {ms['fp32']:.2f} | {ms['int8']:.2f} | {ms['w4a8']:.2f}"
            f" | {ms['w4a8'] / ms['int8']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
