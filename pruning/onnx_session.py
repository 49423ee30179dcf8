"""Running an exported model with onnxruntime on the CPU: its logits on an image set and its latency.

What a user who deploys the ONNX file gets, measured rather than assumed: the quantised file's
predictions against the PyTorch model that simulates it, and its speed against the float file's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pruning.data import ImageSet
from pruning.timing import LatencyStats, time_callable

__all__ = ["onnx_logits", "onnx_session", "quantised_onnx_run", "time_onnx"]


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session for the file at `path`, with all graph optimisations (which fuse QDQ into int8 kernels)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, images: ImageSet, batch_size: int = 64) -> torch.Tensor:
    """The session's logits on every image of `images` (N, classes)."""
    name = session.get_inputs()[0].name
    chunks = [session.run(None, {name: batch.numpy()})[0] for batch, _ in images.batches(batch_size)]
    return torch.from_numpy(np.concatenate(chunks)).float()


def time_onnx(path: str | Path, inputs: torch.Tensor, threads: int | None = None, **timing) -> LatencyStats:
    """Latency of one run of the file at `path` on `inputs` (its batch), with `threads` intra-op threads;
    `timing` are `pruning.timing.time_callable`'s rounds, iters and warmup."""
    return time_callable(_run(path, inputs, threads), threads=threads, batch_size=len(inputs), **timing)


def quantised_onnx_run(
    pruned: torch.nn.Module, images: torch.Tensor, precision: str, path: Path, threads: int | None
) -> Callable[[], object]:
    """One onnxruntime run of `pruned` on `images`: quantised to `precision` (calibrated on `images`),
    exported as QDQ to `path` and run by onnxruntime's CPU kernels with `threads` intra-op threads."""
    from pruning.export import export_onnx
    from pruning.quantisation import quantise

    export_onnx(quantise(pruned, [images], precision), path, batch_size=len(images), images=images)
    return _run(path, images, threads)


def _run(path: str | Path, inputs: torch.Tensor, threads: int | None) -> Callable[[], object]:
    """One run of the file at `path` on `inputs`, in a session made once."""
    session = onnx_session(path, threads)
    feed = {session.get_inputs()[0].name: inputs.numpy()}
    return lambda: session.run(None, feed)
