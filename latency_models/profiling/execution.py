"""How a table's kernels and models run: on which torch device, in which number format, in which mode.

A latency table is only true for what it timed. On a GPU the same model runs 3x faster as one
replayed CUDA graph than eagerly (kernel launches dominate a small ViT), and bf16 halves the work
again; so a table records its execution, and everything that times against it (the profiler, the
end-to-end calibration, `lut validate`) runs models exactly that way.

- `dtype`: the weights and activations are cast to it, as a deployed model is (`model.to(dtype)`).
- `mode`: `eager`, or `cuda_graphs`: the call is captured once as a CUDA graph and replayed. Work
  whose shapes depend on the data (a score threshold) cannot be captured; it runs eagerly, as it
  would deployed, and is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["DTYPES", "MODES", "Execution"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("eager", "cuda_graphs")


@dataclass(frozen=True)
class Execution:
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "eager"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.mode == "cuda_graphs" and torch.device(self.device).type != "cuda":
            raise ValueError(f"mode cuda_graphs needs a CUDA device, not {self.device!r}")

    @classmethod
    def of(cls, device_info: dict) -> Execution:
        """The execution a table measured on this machine describes (tables from before it was recorded: eager).

        Another table (analytic, fitted, imported) describes a device elsewhere: its models are run here
        as they run by default, on the CPU in float32."""
        if device_info.get("kind", "measured") != "measured":
            return cls()
        cuda = "cuda" in str(device_info.get("runtime", "")).split("(", 1)[-1]
        return cls("cuda" if cuda else "cpu", device_info.get("dtype", "float32"), device_info.get("mode", "eager"))

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def check(self) -> None:
        """Fail with a clear message where this machine cannot run it."""
        if self.torch_device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device}: torch sees no CUDA device on this machine")

    @contextmanager
    def building(self) -> Iterator[None]:
        """Modules and random tensors made inside are made in `dtype` (torch's default dtype, restored after)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.torch_dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.torch_device, self.torch_dtype).eval()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.torch_device, self.torch_dtype)

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def prepare(self, fn: Callable[[], object]) -> tuple[Callable[[], object], bool]:
        """The call to time: `fn`, or its CUDA graph's replay. Returns (call, whether it is graphed).

        Call inside `torch.inference_mode()` (as the timed calls are)."""
        if self.mode != "cuda_graphs":
            return fn, False
        stream = torch.cuda.Stream(self.torch_device)
        stream.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream(self.torch_device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
        except RuntimeError:  # data-dependent shapes or a host sync: runs eagerly, as it would deployed
            torch.cuda.synchronize(self.torch_device)
            return fn, False
        return graph.replay, True

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.mode == "cuda_graphs" else ""
        return f"{self.device}, {self.dtype}{graphs}"
