"""What post-training W8A8 quantisation costs in accuracy, what onnxruntime's int8 kernels give in speed,
and how closely the exported QDQ file computes what the PyTorch simulation reports.

Models: dense DeiT-Tiny and the same pruned to top-k 0.7 (package token, blocks 3, 6, 9). Precisions:
`int8` (any scales) and `int8-pow2` (power-of-two scales), both calibrated by min-max on
`--calibration-images` spread over one half of the 1,000 sample images (a seeded shuffle); every
figure is measured on the other half, which nothing here tunes on. Per model and precision:

- top-1, agreement and KL with the dense fp32 model, each with its standard error;
- the QDQ file run by onnxruntime on the same images: its top-1, its top-1 agreement with the PyTorch
  simulation and the largest logit difference; beside it, the *float floor*: the agreement of the same
  simulation run in float32 and in float64 (a quantised network turns float rounding differences into
  code flips that grow through the blocks, so no two float implementations agree beyond this);
- onnxruntime latency of the fp32 and int8 files at batch 1 and `--batch` (`--threads` intra-op
  threads; min over rounds of round medians).

Writes `quantisation.{json,md}` under `--out`.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python bench/quantisation.py --data $VITPRUNE_DATA_DIR --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from pruning import PruneConfig, describe, prune_model
from pruning.data import ImageSet, load_image_folder
from pruning.export import export_onnx
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.metrics import classification_metrics, paired_top1_loss, predict
from pruning.model import PrunedViT
from pruning.onnx_session import onnx_logits, onnx_session, time_onnx
from pruning.quantisation import quantise

PRECISIONS = ("int8", "int8-pow2")


def main() -> int:
    parser = halves_parser(__doc__, threads=1)
    parser.add_argument("--batch", type=int, default=32, help="the larger latency batch (batch 1 is always timed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense, report, batches, models = prepare(args)
    reference = predict(dense, report)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name, model in models.items():
            float_file = work / f"{name}-fp32.onnx"
            export_onnx(model, float_file)
            float_latency = _latency(float_file, report, args)
            float_logits = predict(model, report)
            rows.append(_row(name, "fp32", float_logits, report, reference) | {"latency_ms": float_latency})
            print(json.dumps(rows[-1]), file=sys.stderr)
            for precision in PRECISIONS:
                quantised = quantise(model, batches, precision)
                simulated = predict(quantised, report)
                path = work / f"{name}-{precision}.onnx"
                export_onnx(quantised, path)
                runtime = onnx_logits(onnx_session(path, args.threads), report)
                latency = _latency(path, report, args)
                rows.append(
                    _row(name, precision, simulated, report, reference)
                    | {
                        "loss": paired_loss(simulated, float_logits, report),
                        "onnxruntime": _row(name, precision, runtime, report, reference)["val"],
                        "onnx_vs_simulation": _agreement(runtime, simulated),
                        "float_floor": _agreement(float64_logits(quantised, report), simulated),
                        "latency_ms": latency,
                        "speedup": {b: float_latency[b] / latency[b] for b in latency},
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
    write_results(args, "quantisation", batches, report, rows, _markdown, batches=sorted({1, args.batch}))
    return 0


def halves_parser(doc: str, threads: int) -> argparse.ArgumentParser:
    """The arguments of every benchmark that calibrates on one half of the sample and reports on the other."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--calibration-images", type=int, default=256, help="spread over the calibration half")
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument(
        "--seed", type=int, default=0, help="the split of the sample into calibration and report halves"
    )
    return parser


def fidelity(logits: torch.Tensor, float_logits: torch.Tensor, report: ImageSet) -> dict:
    """Top-1, the points lost (paired SE), and agreement and KL (with SEs) against the model's fp32 version."""
    metrics = classification_metrics(logits, report.labels, float_logits)
    return {
        "top1": metrics.top1,
        "loss": paired_loss(logits, float_logits, report),
        "agreement": metrics.agreement,
        "agreement_se": metrics.agreement_se,
        "kl": metrics.kl,
        "kl_se": metrics.kl_se,
    }


def fidelity_cells(row: dict) -> str:
    """`fidelity`'s figures as Markdown table cells: top-1 | points lost | agreement | KL."""
    loss = row["loss"]
    return (
        f"{row['top1']:.1f} | {loss['points'] + 0.0:+.1f} ± {loss['se']:.1f} | "
        f"{row['agreement']:.1f} ± {row['agreement_se']:.1f} | {row['kl']:.4f} ± {row['kl_se']:.4f}"
    )


def write_results(args, name: str, calibration, report: ImageSet, rows: list[dict], markdown, **extra) -> None:
    """`<name>.json` and `<name>.md` under `--out` (what was measured, on which images, and the rows); prints the
    Markdown."""
    summary = {
        "model": args.model,
        "calibration_images": sum(len(batch) for batch in calibration),
        "report_images": len(report),
        "seed": args.seed,
        "threads": args.threads,
        **extra,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    (args.out / f"{name}.md").write_text(markdown(summary))
    print(markdown(summary))


def prepare(args: argparse.Namespace) -> tuple[torch.nn.Module, ImageSet, list[torch.Tensor], dict[str, PrunedViT]]:
    """The dense model (`--model`, its weights under `--data`), the report half of the sample (`--seed`),
    `--calibration-images` spread over the other half in batches, and the two models measured."""
    data = Path(args.data)
    dense = create_model(args.model, weights=data / args.model / "model.safetensors")
    spec = describe(dense, args.model)
    images = load_image_folder(data / "imagenet-sample", eval_data_config(dense), class_map=data / "imagenet_wnids.txt")
    calib_half, report = images.split(0.5, seed=args.seed)
    count = min(args.calibration_images, len(calib_half))
    calib = calib_half.subset([i * len(calib_half) // count for i in range(count)])
    models = {
        "dense": prune_model(dense, PruneConfig.dense(spec)),
        "topk-0.7": prune_model(dense, PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9), package_token=True)),
    }
    return dense, report, [batch for batch, _ in calib.batches(32)], models


def _row(name: str, precision: str, logits: torch.Tensor, report: ImageSet, reference: torch.Tensor) -> dict:
    return {
        "model": name,
        "precision": precision,
        "val": classification_metrics(logits, report.labels, reference).to_dict(),
    }


def paired_loss(logits: torch.Tensor, float_logits: torch.Tensor, report: ImageSet) -> dict:
    """Top-1 points lost to quantisation, with the standard error of the per-image difference."""
    points, se = paired_top1_loss(logits, float_logits, report.labels)
    return {"points": points, "se": se}


def _agreement(logits: torch.Tensor, simulated: torch.Tensor) -> dict:
    fidelity = classification_metrics(logits, None, simulated)
    return {
        "agreement": fidelity.agreement,
        "agreement_se": fidelity.agreement_se,
        "max_abs_diff": float((logits - simulated).abs().max()),
    }


def float64_logits(quantised, report: ImageSet) -> torch.Tensor:
    """The simulation computed in float64: the same codes and scales, other float rounding."""
    wide = copy.deepcopy(quantised).double()
    with torch.no_grad():
        return torch.cat([wide(batch.double()).float() for batch, _ in report.batches(64)])


def _latency(path: Path, report: ImageSet, args: argparse.Namespace) -> dict[int, float]:
    first = next(report.batches(args.batch))[0]
    timed = {}
    for batch in sorted({1, args.batch}):
        iters = max(1, 32 // batch)  # about 32 images per round at every batch
        timed[batch] = time_onnx(path, first[:batch], args.threads, rounds=5, iters=iters, warmup=2).ms
    return timed


def _markdown(summary: dict) -> str:
    batches = summary["batches"]
    rows = summary["rows"]
    dense = next(r for r in rows if r["model"] == "dense" and r["precision"] == "fp32")["val"]
    lines = [
        f"# Post-training quantisation: {summary['model']}, onnxruntime {summary['threads']} thread(s)",
        "",
        f"Calibrated on {summary['calibration_images']} images of one half of the sample, measured on the other"
        f" {summary['report_images']} (seed {summary['seed']}); dense fp32 top-1 {dense['top1']:.1f}%"
        f" (SE {dense['top1_se']:.1f}). Loss and agreement are against the dense fp32 model on the same images.",
        "",
        "| model | precision | top-1 (SE) | points lost vs its fp32 (paired SE) | agreement with dense | KL"
        " | onnxruntime top-1 | onnxruntime vs simulation: agreement, max diff | float floor"
        + "".join(f" | ms b{b} (speed-up)" for b in batches)
        + " |",
        "|---|---|---|--:|--:|--:|--:|---|--:|" + "--:|" * len(batches),
    ]
    for row in rows:
        val = row["val"]
        loss = f"{row['loss']['points']:.1f} ({row['loss']['se']:.1f})" if "loss" in row else ""
        if row["precision"] == "fp32":
            checks = " | | | "
            timing = "".join(f" | {row['latency_ms'][b]:.1f}" for b in batches)
        else:
            check, floor = row["onnx_vs_simulation"], row["float_floor"]
            checks = (
                f" | {row['onnxruntime']['top1']:.1f} | {check['agreement']:.1f}% ({check['agreement_se']:.1f}),"
                f" {check['max_abs_diff']:.2f} | {floor['agreement']:.1f}%"
            )
            timing = "".join(f" | {row['latency_ms'][b]:.1f} ({row['speedup'][b]:.2f}x)" for b in batches)
        lines.append(
            f"| {row['model']} | {row['precision']} | {val['top1']:.1f} ({val['top1_se']:.1f})"
            f" | {loss} | {val['agreement']:.1f} | {val['kl']:.4f}{checks}{timing} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
