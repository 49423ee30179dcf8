"""ONNX export of a PrunedViT, checked against PyTorch with onnxruntime.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). It exports top-k
token pruning with a dynamic batch dimension: the kept-token count `ceil(r * N)` is a Python int
computed from static shapes, so every tensor shape except the batch is fixed. The legacy
TorchScript exporter (`dynamo=False`) is not used: with torch 2.15 its tracer cannot export token
pruning at all.

Threshold mode (AS-ViT) keeps a different number of tokens per image, a data-dependent shape no
static graph can hold. It is exported in masked form: dropped tokens stay in place and are masked
out as attention keys (`PrunedViT.compact_tokens = False`). The logits are the same as the
compact model's (up to float rounding), but the graph computes on all tokens, so it has none of
the token-count speedup; heads and MLP channels are still physically removed.

The file is always a single `.onnx` with the weights embedded, unless the weights exceed
protobuf's 2 GB limit, where ONNX requires an external data file next to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from pruning.model import PrunedViT
from pruning.quantisation._onnx import add_qdq, float_layers

__all__ = ["MIN_OPSET", "ExportError", "ExportReport", "export_onnx", "file_uses_external_data", "verify_onnx"]

MIN_OPSET = 17
"""LayerNormalization (used by every ViT block) is a native ONNX op from opset 17."""

_PROTOBUF_LIMIT = 2 * 1024**3
_INPUT_NAME = "images"
_OUTPUT_NAME = "logits"
_CHECK_BATCH = 3
_SEED = 0
_QUIET_LOGGERS = ("onnxscript", "onnx_ir")
"""The exporter's libraries: several hundred INFO lines (optimizer passes, deduplicated initializers) per
export, which would fill a service's log; their warnings and errors still show."""
_BLAME = re.compile(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in (\w+)\n([^\n]+)')

MASKED_NOTE = (
    "threshold token pruning is exported in masked form: dropped tokens stay in the graph and are "
    "masked out as attention keys, so the logits match but the token-count speedup is not in the "
    "graph (heads and MLP channels are still physically removed)"
)


class ExportError(RuntimeError):
    """The pruned model could not be exported to ONNX; the message says which exporter failed and why."""


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how closely onnxruntime reproduces PyTorch."""

    path: Path
    opset: int
    dynamic_batch: bool
    exporter: str
    """Always `dynamo` (torch.export + onnxscript)."""
    batch_size: int
    max_abs_diff: float | None = None
    """Largest |onnxruntime - PyTorch| logit difference over `checked_batches`."""
    checked_batches: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["checked_batches"] = list(self.checked_batches)
        return data


def export_onnx(
    pruned: PrunedViT,
    path: str | Path,
    *,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    opset: int = 18,
    images: torch.Tensor | None = None,
) -> ExportReport:
    """Write `pruned` to a single ONNX file (input `images`, output `logits`) and check it.

    `batch_size` is the example batch; with `dynamic_batch=False` it is also the only batch the
    graph accepts. After export the file is run with onnxruntime (CPU) and compared with PyTorch
    at `batch_size` and, with a dynamic batch, at a second batch size; `images` (N, C, H, W) are
    used when given (real images matter for threshold mode, whose kept tokens depend on them),
    else seeded random inputs.

    Top-k token pruning exports as it runs: every block after a reduction really processes
    `ceil(r * N)` tokens, so the ONNX graph has the speedup, with a static or dynamic batch.

    Threshold token pruning (AS-ViT) keeps a different number of tokens in every image, which no
    static ONNX graph can express. It is exported in masked form: the dropped tokens stay in place
    and are masked out as attention keys (and fused into the package token if there is one). The
    logits are the same as the pruned PyTorch model's, up to float rounding, but every block
    still computes on all tokens, so the exported graph is not faster than a model with the same
    heads and MLP channels and no token pruning; the report's `notes` say so. Serve threshold
    models from PyTorch where the token-count speedup matters.

    Raises `ExportError`, with the exporter's reason, if the graph cannot be produced.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: vitprune exports with opset >= {MIN_OPSET}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masked = pruned.config.per_image
    example = _inputs(pruned, batch_size, images).to(_device(pruned))
    with _masked_tokens(pruned, masked), _eval_mode(pruned), torch.no_grad(), _quiet_exporter(), float_layers(pruned):
        exporter = _export(pruned, example, path, opset=opset, dynamic_batch=dynamic_batch)
    if pruned.quantisation is not None:
        layers = add_qdq(path, pruned)
    report = ExportReport(
        path=path,
        opset=_file_opset(path),
        dynamic_batch=dynamic_batch,
        exporter=exporter,
        batch_size=batch_size,
        notes=[f"exported with the {exporter} exporter"],
    )
    if masked:
        report.notes.append(MASKED_NOTE)
    if pruned.quantisation is not None:
        report.notes.append(
            f"{pruned.quantisation['precision']}: {layers} layers as QDQ (int8 weight codes, uint8 inputs, the"
            " model's own scales), which onnxruntime runs with integer kernels"
        )
    if _needs_external_data(pruned):
        report.notes.append(f"weights exceed 2 GB: stored in an external data file next to {path.name}")
    _check(pruned, report, images)
    return report


def verify_onnx(pruned: PrunedViT, path: str | Path, images: torch.Tensor) -> float:
    """Max |onnxruntime - PyTorch| logit difference of the ONNX file at `path` on `images`.

    PyTorch runs `pruned` as it is configured (compact tokens unless the caller changed it), so
    the number answers "does the file compute what my pruned model computes".
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.detach().cpu().to(torch.float32).numpy()}
    onnx_logits = session.run(None, feed)[0]
    with _eval_mode(pruned), torch.no_grad():
        torch_logits = pruned(images.to(_device(pruned))).float().cpu().numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


# ------------------------------------------------------------------------------------------- exporting


def _export(pruned: PrunedViT, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool) -> str:
    """Export with the dynamo exporter; return its name for the report."""
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            # PrunedViT.forward records per-image token counts for callers; they are not part of the graph.
            warnings.filterwarnings("ignore", message=r"The tensor attributes? self\.last_token_counts")
            torch.onnx.export(
                pruned,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[_INPUT_NAME],
                output_names=[_OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                external_data=_needs_external_data(pruned),
                verbose=False,
            )
    except Exception as err:  # the exporter raises many unrelated types; all mean "it failed"
        path.unlink(missing_ok=True)
        mode = "per-image token counts, masked" if pruned.config.per_image else "fixed token counts"
        raise ExportError(f"cannot export this pruned model ({mode}) to ONNX: {_reason(err)}") from err
    return "dynamo"


def _needs_external_data(pruned: PrunedViT) -> bool:
    """Protobuf cannot hold more than 2 GB; below that everything is embedded in the one file."""
    size = sum(t.numel() * t.element_size() for t in pruned.state_dict().values())
    return size >= _PROTOBUF_LIMIT


def _reason(err: BaseException) -> str:
    """The root cause in one line, with the user-code line torch.export blames when it names one."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = f"{type(err).__name__}: {lines[0][:300] if lines else ''}"
    where = _BLAME.search(text)
    if where:
        file, line, function, code = where.groups()
        reason += f" (raised at {'/'.join(Path(file).parts[-2:])}:{line} in {function}: {code.strip()})"
    return reason


# ------------------------------------------------------------------------------------------- checking


def _check(pruned: PrunedViT, report: ExportReport, images: torch.Tensor | None) -> None:
    """Fill `max_abs_diff`: onnxruntime vs PyTorch at the example batch and, if dynamic, one more."""
    batches = [report.batch_size]
    if report.dynamic_batch:
        batches.append(_CHECK_BATCH if report.batch_size != _CHECK_BATCH else 1)
    diffs = [verify_onnx(pruned, report.path, _inputs(pruned, b, images)) for b in batches]
    report.max_abs_diff = max(diffs)
    report.checked_batches = tuple(batches)
    source = "the given images" if images is not None else "seeded random inputs"
    report.notes.append(f"checked against PyTorch with onnxruntime (CPU) on {source}")


def _file_opset(path: Path) -> int:
    """The default-domain opset the file declares (the exporter may raise the one asked for)."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def file_uses_external_data(path: str | Path) -> bool:
    """True if any initializer of the ONNX file lives in a separate data file."""
    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in model.graph.initializer)


# ------------------------------------------------------------------------------------------- helpers


def _inputs(pruned: PrunedViT, batch: int, images: torch.Tensor | None) -> torch.Tensor:
    """`batch` images: the first ones of `images` (repeated if too few), else seeded random ones."""
    if images is not None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        repeats = math.ceil(batch / images.shape[0])
        return images.repeat(repeats, 1, 1, 1)[:batch].to(torch.float32)
    height, width = pruned.spec.image_size
    generator = torch.Generator().manual_seed(_SEED)
    return torch.randn(batch, _in_channels(pruned), height, width, generator=generator)


def _in_channels(pruned: PrunedViT) -> int:
    """Channels of the first convolution (the patch embedding) of the model."""
    conv = next((m for m in pruned.model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _masked_tokens(pruned: PrunedViT, masked: bool) -> Iterator[None]:
    """Run with dropped tokens kept in place (static shapes) while exporting; restore afterwards."""
    saved = pruned.compact_tokens
    if masked:
        pruned.compact_tokens = False
    try:
        yield
    finally:
        pruned.compact_tokens = saved


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Raise the exporter's loggers (and their children that have a level of their own) to WARNING while
    exporting; restore their levels afterwards. Exports in several threads at once (a service exporting
    two models) share one quiet spell: the first in saves the levels, the last out restores them."""
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = [(logger, logger.level) for logger in _exporter_loggers()]
            for logger, level in _quiet_saved:
                if level < logging.WARNING:
                    logger.setLevel(logging.WARNING)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for logger, level in _quiet_saved:
                    logger.setLevel(level)
                _quiet_saved = []


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: list[tuple[logging.Logger, int]] = []


def _exporter_loggers() -> list[logging.Logger]:
    """The _QUIET_LOGGERS and those of their children given a level of their own (the rest inherit)."""
    children = [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
        and logger.level != logging.NOTSET
        and any(name.startswith(f"{root}.") for root in _QUIET_LOGGERS)
    ]
    return [logging.getLogger(name) for name in _QUIET_LOGGERS] + children


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
