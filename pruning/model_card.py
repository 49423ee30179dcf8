"""The README.md model card of a bundle: what was removed, how much it saves, what was measured, how to load it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pruning.flops import count_flops, count_params
from pruning.model import PrunedViT

__all__ = ["model_card"]

_LOADING = [
    "## Loading",
    "",
    "```python",
    "from pruning.bundle import load_bundle",
    "",
    'model = load_bundle("path/to/bundle")  # a directory or a .zip; needs only vitprune and timm',
    "logits = model(images)  # images normalised as for the base timm model",
    "```",
    "",
]


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any], pruned: PrunedViT, dense: nn.Module) -> str:
    """Markdown describing a bundle, from its config.json and metrics.json.

    `pruned` and `dense` are only counted, never computed with: they may be weightless models on the
    meta device (as `pruning.bundle` passes them), which makes the FLOP count free.
    """
    base = config["base_model"]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in config["model_kwargs"].items())
    height, width = config["image_size"]
    provenance = config["provenance"]
    lines = [
        f"# {base}, pruned with vitprune",
        "",
        f"A physically pruned version of the timm model `{base}`{f' ({kwargs})' if kwargs else ''},"
        f" input {height}x{width}. Removed heads and MLP channels are gone from the weights; token reduction"
        " runs between the attention and the MLP of the marked blocks.",
        "",
        *_size_lines(pruned, dense),
        "",
        "## Blocks",
        "",
        *_block_lines(pruned),
        "",
        *_metric_lines(metrics),
        *_onnx_lines(config.get("onnx")),
        *_LOADING,
        "## Provenance",
        "",
        f"- vitprune {provenance['vitprune_version']}, created {provenance['created']}",
        f"- Source weights sha256: {provenance['weights_sha256'] or 'not recorded'}",
    ]
    return "\n".join(lines) + "\n"


def _size_lines(pruned: PrunedViT, dense: nn.Module) -> list[str]:
    size = pruned.spec.image_size
    if pruned.config.per_image:
        flops = "depend on the image (its own token counts); see the metrics"
    else:
        flops = _versus(_flops(pruned, size), _flops(dense, size), 1e9, "G")
    return [
        f"- Parameters: {_versus(count_params(pruned), count_params(dense), 1e6, 'M')}",
        f"- FLOPs per image: {flops}",
    ]


def _versus(value: float | None, dense: float | None, scale: float, unit: str) -> str:
    if value is None or not dense:
        return "not counted"
    return f"{value / scale:.2f} {unit} of {dense / scale:.2f} {unit} dense ({value / dense:.0%})"


def _flops(model: nn.Module, image_size: tuple[int, int]) -> float | None:
    """FLOPs per image; on the meta device only shapes are propagated, nothing is computed."""
    device = next(model.parameters()).device
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    try:
        return count_flops(model, torch.zeros(1, channels, *image_size, device=device))
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel
        return None


def _block_lines(pruned: PrunedViT) -> list[str]:
    rows = ["| block | heads kept | MLP hidden kept | token reduction |", "|---:|---|---|---|"]
    for i, (block, dense) in enumerate(zip(pruned.config.blocks, pruned.spec.blocks, strict=True)):
        rows.append(
            f"| {i} | {block.heads}/{dense.heads} | {block.mlp_hidden}/{dense.mlp_hidden} | {block.tokens.card()} |"
        )
    if pruned.config.reduces_tokens:
        package = "yes" if pruned.config.package_token else "no"
        rows += ["", f"Token scores: `{pruned.config.score}`; package token (fusion of dropped tokens): {package}."]
    return rows


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["## Metrics", "", "No metrics were recorded with this bundle.", ""]
    rows = ["## Metrics", "", "| metric | value |", "|---|---|"]
    rows += [f"| {key} | {f'{value:.4g}' if isinstance(value, float) else value} |" for key, value in _flatten(metrics)]
    dataset = f"`{metrics['dataset']}`" if metrics.get("dataset") else "an image set that metrics.json does not name"
    return [
        *rows,
        "",
        f"Accuracy and fidelity were measured on {dataset} and hold for that set only; latency holds for the"
        " device and settings recorded with it.",
        "",
    ]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        items += _flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [(f"{prefix}{key}", value)]
    return items


def _onnx_lines(report: Mapping[str, Any] | None) -> list[str]:
    if not report:
        return []
    diff = report.get("max_abs_diff")
    checked = f"max |onnxruntime - PyTorch| logit difference {diff:.2e}" if diff is not None else "not checked"
    batch = "dynamic" if report["dynamic_batch"] else "static"
    notes = [f"- {note}" for note in report.get("notes", [])]
    return ["## ONNX", "", f"`{report['path']}`: opset {report['opset']}, {batch} batch, {checked}.", *notes, ""]
