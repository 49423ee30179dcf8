"""`vitprune quantise`: post-training W8A8 quantisation of a bundle, scored on images it was not
calibrated on, exported as ONNX QDQ and checked with onnxruntime.

The new bundle's figures are those of the quantised model (computed as the int8 device computes); the
float bundle's figures on the same validation images move under `before_quantisation`. With `--onnx`
the QDQ file is run by onnxruntime on every validation image and compared with the PyTorch
simulation (top-1 agreement, largest logit difference); with `--measure` the float and the int8
files are timed here. With `--device` (a device with an int8 price: `host-cpu`, `mobile-cpu`,
`mobile-cpu:<soc>@<cores>`, `fpga:zcu102`) the model is priced on it as a float model and as an int8 one
(each in the dtype that runs it there), from the token counts it keeps on the validation images, and
where that device computes the model fully in integer (a phone's int8, an FPGA) it is quantised to
compute so too: the attention products in int8 and the residual stream on uint8 grids
(`DeviceBackend.fully_integer`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]

CALIBRATION_IMAGES = 256
"""Images whose ranges calibrate the activations: a few hundred settle min-max ranges on ImageNet ViTs."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    from pruning.quantisation.precisions import PRECISIONS

    parser = commands.add_parser("quantise", help="quantise a bundle (W8A8, W4A8) and check it with onnxruntime")
    parser.add_argument("bundle", type=Path, help="the float bundle (directory or .zip)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="int8", help="; ".join(
        f"{name}: {precision.words}" for name, precision in PRECISIONS.items()))  # fmt: skip
    parser.add_argument("--calib", type=Path, required=True, help="calibration images (ImageFolder), apart from --val")
    parser.add_argument(
        "--reconstruct", action="store_true", help="fit each layer's weight codes and bias to its float output on "
        "the calibration images, layer by layer (about a minute per DeiT-Tiny on 2 cores)",
    )  # fmt: skip
    parser.add_argument(
        "--network-scales", action="store_true", help="with int8-pow2: move each activation scale by a factor of two "
        "where that brings the output closer to the float model's (RAPQ's whole-network choice; minutes)",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-images", type=int, default=CALIBRATION_IMAGES, help="use this many of --calib (spread)"
    )
    mixed = parser.add_mutually_exclusive_group()
    mixed.add_argument(
        "--float-blocks", type=_block_list, default=(), metavar="I,J", help="keep these blocks (indices from 0) "
        "in float: per-block precision, each block priced in the dtype that runs it",
    )  # fmt: skip
    mixed.add_argument(
        "--keep-float", type=int, default=0, metavar="N", help="keep in float the N blocks whose quantisation "
        "costs the most fidelity to the float model on the calibration images (measured, one pass per block)",
    )  # fmt: skip
    parser.add_argument("--val", type=Path, required=True, help="validation images for the new bundle's figures")
    parser.add_argument("--class-map", type=Path, help="file with one class name per line (line number = index)")
    parser.add_argument("--weights", type=Path, help="the dense model's weights: fidelity is then to the dense model")
    parser.add_argument("--out", type=Path, required=True, help="the new bundle: a directory or a path ending in .zip")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="write model.onnx (QDQ) and check it with onnxruntime")
    parser.add_argument("--measure", action="store_true", help="time the float and int8 ONNX files here")
    parser.add_argument("--latency-batch", type=int, default=1, help="batch size of --measure")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument(
        "--device",
        help="a device to price the model on as float and as int8, e.g. mobile-cpu or fpga:zcu102; "
        "where it computes fully in integer (phones, FPGAs), the model is quantised so too",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=cmd_quantise)


def cmd_quantise(args: argparse.Namespace) -> int:
    import torch

    from pruning.bundle import file_sha256, load_bundle, read_bundle_json
    from pruning.data import load_image_folder
    from pruning.image_files import shared_images
    from pruning.image_sets import describe_images, eval_data_config, image_set_name
    from pruning.loading import WeightsError, create_model
    from pruning.metrics import classification_metrics, predict
    from pruning.stages import ModelRecord, StageInputs, run_stages

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    if shared_images(args.calib, args.val):
        raise ValueError(f"--calib ({args.calib}) and --val ({args.val}) share images: validation must be held out")
    stream = None  # without a device: as onnxruntime runs the exported file, products and residual adds float
    if args.device:
        from latency_models.registry import Registry

        registry = Registry()
        _priced_as(args.device, args.precision, registry)  # a device that cannot price it is refused before any work
        stream = registry.fully_integer(args.device, args.precision)
    attention = stream is not None
    model = load_bundle(args.bundle)
    if model.quantisation is not None:
        raise ValueError(
            f"{args.bundle} is already quantised ({model.quantisation['precision']}): quantise its float bundle"
        )
    config, metrics = read_bundle_json(args.bundle)
    recorded = (config.get("provenance") or {}).get("weights_sha256")
    if args.weights and recorded and file_sha256(args.weights) != recorded:
        raise WeightsError(f"{args.weights} is not the dense model this bundle was pruned from (its sha256 differs)")
    kwargs = config.get("model_kwargs") or {}
    dense = create_model(config["base_model"], weights=args.weights, **kwargs) if args.weights else None
    data_config = eval_data_config(dense if dense is not None else model.model, model.spec.image_size)
    calib = load_image_folder(args.calib, data_config, class_map=args.class_map, max_images=args.calibration_images)
    val = load_image_folder(args.val, data_config, class_map=args.class_map)
    float_logits = predict(model, val)
    reference = predict(dense, val) if dense is not None else float_logits
    before = classification_metrics(float_logits, val.labels, reference)
    names = {"calib": image_set_name(args.calib), "val": image_set_name(args.val)}
    checks: dict[str, Any] = {}
    calibration = [batch for batch, _ in calib.batches(32)]
    float_blocks = list(args.float_blocks)
    if args.keep_float:
        from pruning.quantisation import block_sensitivity, most_sensitive_blocks

        sensitivity = block_sensitivity(
            model, calibration, args.precision, reconstruct=args.reconstruct, attention=attention, stream=stream
        )
        float_blocks = most_sensitive_blocks(sensitivity, args.keep_float)
        checks["block_sensitivity"] = {"kl_gain": sensitivity, "images": len(calib), "chosen": float_blocks}

    def report(record: ModelRecord) -> dict[str, Any]:
        # The float bundle's price was of the float model: it moves beside its accuracy.
        moved = ("val", "before_quantisation", "predicted_ms")
        kept = {k: v for k, v in metrics.items() if k not in moved}
        before_price = {"predicted_ms": metrics["predicted_ms"]} if "predicted_ms" in metrics else {}
        against_float = classification_metrics(record.logits, None, float_logits)
        datasets = {
            key: describe_images(names[key], images, data_config) for key, images in (("calib", calib), ("val", val))
        }
        return kept | {
            "precision": record.quantisation["precision"],
            "val": record.evaluation.to_dict() | {"reference": "dense" if dense is not None else "float bundle"},
            "before_quantisation": {"val": before.to_dict(), **before_price},
            "against_float": {"agreement": against_float.agreement, "kl": against_float.kl},
            "quantisation": record.quantisation,
            "datasets": datasets,
            **checks,
        }

    inputs = StageInputs(
        dense=dense if dense is not None else model,  # the stages here read no dense model
        name=config["base_model"],
        calibration=calibration,
        precision=args.precision,
        reconstruct=args.reconstruct,
        network_scales=args.network_scales,
        integer_attention=attention,
        stream_shifts=stream,
        float_blocks=float_blocks,
        val=val,
        reference=reference,
        out=args.out,
        report=report,
        weights=args.weights,
        model_kwargs=kwargs,
        onnx=args.onnx,
        overwrite=args.overwrite,
    )
    provenance = dict((config.get("provenance") or {}).get("extra") or {}) | {"quantised_from": Path(args.bundle).name}
    if args.weights is None and recorded:
        provenance["weights_sha256"] = recorded
    quantised, record = run_stages(("quantise", "evaluate"), ModelRecord(model.config, inputs, provenance), model)
    if args.onnx or args.measure:
        checks.update(_onnx_checks(model, quantised, record.logits, val, args))
    if args.device:
        checks["device_ms"] = _device_prices(quantised, record.token_counts, args)
    _, record = run_stages(("save",), record, quantised)
    summary = {"bundle": str(record.bundle), "precision": args.precision, "float_blocks": float_blocks}
    summary["val"] = record.metrics["val"]
    summary |= {"before": before.to_dict(), "against_float": record.metrics["against_float"], **checks}
    print(json.dumps(summary) if args.json else _in_words(summary))
    return 0


def _onnx_checks(float_model, quantised, logits, val, args: argparse.Namespace) -> dict[str, Any]:
    """onnxruntime against the PyTorch simulation on every validation image, and (with --measure) the float
    and quantised files timed at --latency-batch."""
    from pruning.export import export_onnx
    from pruning.metrics import classification_metrics
    from pruning.onnx_session import onnx_logits, onnx_session, time_onnx

    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        export_onnx(quantised, work / "quantised.onnx")
        runtime = onnx_logits(onnx_session(work / "quantised.onnx", args.threads), val)
        agreement = classification_metrics(runtime, None, logits)
        checks["onnx_check"] = {
            "runtime": "onnxruntime (CPU)",
            "images": len(val),
            "agreement": agreement.agreement,
            "max_abs_diff": float((runtime - logits).abs().max()),
        }
        if args.measure:
            export_onnx(float_model, work / "fp32.onnx")
            batch = next(val.batches(args.latency_batch))[0]
            if len(batch) < args.latency_batch:
                batch = batch.repeat(-(-args.latency_batch // len(batch)), 1, 1, 1)[: args.latency_batch]
            timed = {name: time_onnx(work / f"{name}.onnx", batch, args.threads) for name in ("fp32", "quantised")}
            checks["onnxruntime_ms"] = {
                "fp32": timed["fp32"].ms,
                "quantised": timed["quantised"].ms,
                "speedup": timed["fp32"].ms / timed["quantised"].ms,
                "batch": args.latency_batch,
                "threads": timed["quantised"].threads,
            }
    return checks


def _priced_as(device: str, precision: str, registry=None) -> dict[str, str]:
    """fp32 and `precision` -> the device name whose table prices it on `device` (`DeviceBackend.priced_as`)."""
    from latency_models.devices.analytic import DTYPE_MARK
    from latency_models.devices.base import INT8_PRICED
    from latency_models.registry import Registry
    from pruning.quantisation.precisions import FLOAT

    if DTYPE_MARK in device:
        raise ValueError(
            f"--device {device}: name the device without a dtype; the model is priced as float and quantised"
        )
    registry = registry or Registry()
    names = {p: registry.priced_as(device, p) for p in (FLOAT, precision)}
    if None in names.values():
        raise ValueError(
            f"--device {device} has no {precision} price (devices with one: {INT8_PRICED}); "
            "time the quantised model here with --measure instead"
        )
    return names


def _device_prices(model, counts, args: argparse.Namespace) -> dict[str, Any]:
    """The model's predicted latency on --device as a float model and quantised, at --latency-batch."""
    from latency_models.mixed import MixedPrecisionPredictor
    from latency_models.registry import Registry
    from pruning.quantisation.precisions import FLOAT
    from pruning.tokens import padded_widths

    registry, batch = Registry(), args.latency_batch
    widths = padded_widths(counts, batch) if model.config.per_image else None
    names = _priced_as(args.device, args.precision, registry)
    float_, quantised = (
        registry.predictor(names[p], model.spec, [batch], progress=False) for p in (FLOAT, args.precision)
    )
    float_blocks = model.quantisation.get("float_blocks", [])
    predictors = {"fp32": float_, "quantised": MixedPrecisionPredictor(quantised, float_, float_blocks)}
    ms = {key: p.predict(model.config, model.spec, batch, kept_tokens=widths).ms for key, p in predictors.items()}
    priced_as = {"fp32": names["fp32"], "quantised": names[args.precision]}
    if float_blocks:
        priced_as["quantised"] += f" (blocks {', '.join(map(str, float_blocks))}: {names['fp32']})"
    speedup = ms["fp32"] / ms["quantised"]
    return {"device": args.device, "priced_as": priced_as, "batch": batch, **ms, "speedup": speedup}


def _block_list(text: str) -> tuple[int, ...]:
    """--float-blocks: comma-separated block indices."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give block indices separated by commas, e.g. 0,11") from None


def _in_words(summary: dict[str, Any]) -> str:
    before, after = summary["before"], summary["val"]
    from pruning.quantisation.precisions import precision_label

    lines = [f"{precision_label(summary['precision'], summary['float_blocks'])}: {summary['bundle']}"]
    if before.get("top1") is not None:
        lines.append(f"validation top-1: {before['top1']:.2f}% -> {after['top1']:.2f}% on {after['n_images']} images")
    lines.append(f"agreement with the float model: {summary['against_float']['agreement']:.2f}%")
    if "onnx_check" in summary:
        check = summary["onnx_check"]
        lines.append(
            f"onnxruntime vs PyTorch: agreement {check['agreement']:.2f}%, max |diff| {check['max_abs_diff']:.4f}"
        )
    if "onnxruntime_ms" in summary:
        ms = summary["onnxruntime_ms"]
        timed = f"fp32 {ms['fp32']:.2f} ms, {summary['precision']} {ms['quantised']:.2f} ms ({ms['speedup']:.2f}x)"
        lines.append(f"onnxruntime at batch {ms['batch']}: {timed}")
    if "device_ms" in summary:
        price = summary["device_ms"]
        lines.append(
            f"predicted on {price['device']} at batch {price['batch']}: fp32 {price['fp32']:.2f} ms"
            f" ({price['priced_as']['fp32']}), {summary['precision']} {price['quantised']:.2f} ms"
            f" ({price['speedup']:.2f}x)"
        )
    return "\n".join(lines)
