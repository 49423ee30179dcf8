"""The compute device: where trials are scored and models trained, apart from the target device.

A search for a phone may be scored on a GPU: the phone's latency comes from its table, the accuracy
from whatever runs the model fastest here. `auto` takes the GPU when torch sees one. Scoring may run
under autocast in bf16 or fp16 (`SCORE_DTYPES`): on a GPU several times faster than float32, at a
small cost in agreement with float32 logits (docs/gpu.md has the measurement).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: a job spec names these without loading torch
    import torch

__all__ = ["COMPUTE_HELP", "SCORE_DTYPES", "ComputeError", "compute_device", "compute_name", "scoring"]

SCORE_DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_HELP = "where trials are scored: cpu, cuda (cuda:N for another GPU) or auto (the GPU when torch sees one)"


class ComputeError(ValueError):
    """A compute device this machine does not have, or a name that is none."""


def compute_device(name: str) -> torch.device:
    """The torch device `name` asks for on this machine: 'cpu', 'cuda', 'cuda:N' or 'auto'."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ComputeError(f"compute {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ComputeError(f"compute {name!r}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ComputeError(f"compute {name!r}: torch sees no CUDA GPU on this machine; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ComputeError(f"compute {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def compute_name(device: torch.device) -> str:
    """How a worker advertises its compute: 'cpu', or 'cuda' and the GPU's name."""
    import torch

    if device.type != "cuda":
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(device)})"


@contextmanager
def scoring(device: torch.device, dtype: str = "float32") -> Iterator[None]:
    """Inference as scoring runs it: no autograd, and autocast to `dtype` unless it is float32."""
    if dtype not in SCORE_DTYPES:
        raise ComputeError(f"score dtype {dtype!r}: expected one of {', '.join(SCORE_DTYPES)}")
    import torch

    autocast = torch.autocast(device.type, getattr(torch, dtype), enabled=dtype != "float32")
    with torch.inference_mode(), autocast:
        yield
