"""Does a 16-bit fixed-point design compute what the float model does? The assumption behind pricing an
FPGA's fp32 models on the board's 16-bit design (`fpga:zcu102+int16`, docs/quantisation.md).

Every Linear layer of DeiT-Tiny (dense, and pruned to top-k 0.7 with a package token at blocks 3, 6, 9)
is simulated in 16-bit fixed point with the scheme the int8 simulation uses at 8 bits: weights symmetric
per output channel (codes -32767..32767), inputs asymmetric per tensor (0..65535), min-max calibrated on
256 images spread over one half of the sample; every figure is on the other half: top-1 of both, top-1
agreement and KL of the 16-bit model with the float one, the largest logit difference. The same run at 8
bits is printed beside it for scale.

    python bench/fixed_point16.py --data $VITPRUNE_DATA_DIR --threads 1

Writes `fixed_point16.{json,md}` under `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pruning import PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.metrics import predict

MODEL = "deit_tiny_patch16_224"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dense = create_model(MODEL, weights=args.data / MODEL / "model.safetensors")
    spec = describe(dense, MODEL)
    images = load_image_folder(
        args.data / "imagenet-sample", eval_data_config(dense), class_map=args.data / "imagenet_wnids.txt"
    )
    calib, report = images.split(0.5, seed=0)
    calib = calib.subset(torch.linspace(0, len(calib) - 1, 256).round().long().unique())
    batches = [x for x, _ in calib.batches(32)]
    models = {
        "dense": PruneConfig.dense(spec),
        "top-k 0.7": PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9), package_token=True),
    }
    rows = []
    for name, config in models.items():
        float_model = prune_model(dense, config, name=MODEL)
        reference = predict(float_model, report, batch_size=50)
        for bits in (16, 8):
            logits = predict(fixed_point(float_model, batches, bits), report, batch_size=50)
            rows.append(compare(name, bits, logits, reference, report.labels))
            print(json.dumps(rows[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fixed_point16.json").write_text(json.dumps({"images": len(report), "rows": rows}, indent=1))
    (args.out / "fixed_point16.md").write_text(markdown(rows, len(report)))
    return 0


def fixed_point(model: nn.Module, batches: list[torch.Tensor], bits: int) -> nn.Module:
    """A copy of `model` whose Linear layers compute in `bits`-bit fixed point, min-max calibrated on `batches`."""
    model = copy.deepcopy(model).eval()
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    ranges = {m: [0.0, 0.0] for m in linears}  # the grid always holds 0

    def observe(module, inputs):
        entry = ranges[module]
        entry[0], entry[1] = min(entry[0], float(inputs[0].min())), max(entry[1], float(inputs[0].max()))

    handles = [m.register_forward_pre_hook(observe) for m in linears]
    with torch.no_grad():
        for x in batches:
            model(x)
    for handle in handles:
        handle.remove()
    weight_max, input_max = 2 ** (bits - 1) - 1, 2**bits - 1
    for m in linears:
        with torch.no_grad():
            scale = m.weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / weight_max
            m.weight.copy_(torch.round(m.weight / scale).clamp(-weight_max, weight_max) * scale)
        low, high = ranges[m]
        step = max(high - low, 1e-12) / input_max
        zero = round(-low / step)

        def quantise_input(module, inputs, step=step, zero=zero):
            codes = (torch.round(inputs[0] / step) + zero).clamp(0, input_max)
            return ((codes - zero) * step,)

        m.register_forward_pre_hook(quantise_input)
    return model


def compare(name: str, bits: int, logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> dict:
    agree = (logits.argmax(1) == reference.argmax(1)).double()
    kl = F.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="none").sum(1)
    n = len(labels)
    return {
        "model": name,
        "bits": bits,
        "top1_float": round(100 * float((reference.argmax(1) == labels).double().mean()), 2),
        "top1": round(100 * float((logits.argmax(1) == labels).double().mean()), 2),
        "agreement": round(100 * float(agree.mean()), 2),
        "agreement_se": round(100 * float(agree.std() / n**0.5), 2),
        "kl": float(kl.mean()),
        "kl_se": float(kl.std() / n**0.5),
        "max_abs_diff": float((logits - reference).abs().max()),
    }


def markdown(rows: list[dict], images: int) -> str:
    lines = [
        f"# Fixed point against float (DeiT-Tiny, every Linear layer, {images} held-out images)",
        "",
        "| model | bits | top-1 float | top-1 fixed | agreement | KL | max logit diff |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | W{r['bits']}A{r['bits']} | {r['top1_float']:.1f} | {r['top1']:.1f} | "
            f"{r['agreement']:.1f} ± {r['agreement_se']:.1f} | {r['kl']:.5f} ± {r['kl_se']:.5f} | "
            f"{r['max_abs_diff']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
