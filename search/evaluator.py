"""Scoring pruned configs on the calibration images: the hot path of a search.

Nothing is computed twice. The dense model's logits are computed once. Blocks before a trial's
first pruned block are the dense blocks, so their output is cached (per block boundary, least
recently used first out under a memory cap) and a trial only runs the blocks from its first
change on. The images are decoded and normalised once, in a seeded random order, so that the
first few batches are a fair sample of the whole set (cheap-first evaluation reads only those).

Everything a trial runs (the images, the dense model's logits, the prefix cache, the pruned model)
lives on the compute device (`pruning.compute`: the CPU or a GPU), and scoring may run under bf16 or
fp16 autocast; the dense logits the trials are compared with are then computed the same way, so
fidelity measures what pruning changes, not what the number format does.

A quantised trial (`pruning.quantisation`) is the pruned model quantised on the `quantisation` batches,
compared with the float dense logits (fidelity then measures what pruning and quantisation change
together). Its prefix is the quantised dense model's: a layer's input range is calibrated in the float
model, so the layers before the first change get the same scales in both, and the prefix cache keeps
quantised dense activations per precision (and per set of blocks kept float).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning import PruneConfig, PrunedViT, prune_model
from pruning.compute import scoring
from pruning.data import ImageSet
from pruning.importance import Importance
from pruning.metrics import EvalResult, classification_metrics
from pruning.quantisation import block_sensitivity, most_sensitive_blocks, quantise
from pruning.spec import ModelSpec
from pruning.tokens import TokenState
from search.job import FLOAT

__all__ = ["Evaluation", "TrialEvaluator", "first_change"]

CACHE_BYTES = 3 * 2**30
"""Memory for cached prefix activations; DeiT-Tiny on 500 images needs 75 MB per block boundary."""


@dataclass
class Evaluation:
    metrics: EvalResult
    logits: torch.Tensor
    counts: torch.Tensor | None
    """(images, reductions): patch tokens kept by each image at each token-reducing block."""
    images: int
    first_block: int
    seconds: float
    build_seconds: float = 0.0
    """Of `seconds`, building the pruned model (slicing the dense weights, moving them to the compute device)."""

    @property
    def accuracy(self) -> float:
        """Top-1 against the labels, or agreement with the dense model for an unlabelled set."""
        return self.metrics.top1 if self.metrics.top1 is not None else self.metrics.agreement


def first_change(config: PruneConfig, spec: ModelSpec) -> int:
    """The first block that differs from the dense model; everything before it is dense.

    Any token op counts, a merge included: it changes the tokens (and their sizes) every later block sees.
    """
    for index, (block, dense) in enumerate(zip(config.blocks, spec.blocks, strict=True)):
        if block.reduces_tokens or block.heads < dense.heads or block.mlp_hidden < dense.mlp_hidden:
            return index
    return len(spec.blocks)


class TrialEvaluator:
    """Accuracy of pruned versions of one dense model on one calibration set.

    Args:
        dense: the dense timm model (not modified).
        spec: its ModelSpec.
        images: the calibration images (labels optional: without them accuracy is agreement with
            the dense model's top-1).
        importance: head / channel importance for configs that prune heads or channels.
        batch_size: images per forward pass.
        seed: the order in which images are batched.
        device: the compute device (default: the CPU).
        dtype: float32, or bfloat16 / float16 to score under autocast.
        quantisation: calibration batches that set a quantised trial's input ranges (needed for quantised
            precisions only).
        fully_integer: the precisions the device computes fully in integer -> its stream's channel shifts
            (`DeviceBackend.fully_integer`): quantised so too.
    """

    def __init__(
        self,
        dense: nn.Module,
        spec: ModelSpec,
        images: ImageSet,
        importance: Importance | None = None,
        *,
        batch_size: int = 50,
        seed: int = 0,
        cache_bytes: int = CACHE_BYTES,
        device: torch.device | None = None,
        dtype: str = "float32",
        quantisation: Sequence[torch.Tensor] | None = None,
        fully_integer: dict[str, int | None] | None = None,
    ) -> None:
        self.dense = dense.eval()
        self.spec = spec
        self.importance = importance
        self.cache_bytes = cache_bytes
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        shuffled = images.subset(order)
        self.inputs = [x.to(self.device) for x, _ in shuffled.batches(batch_size)]
        self.labels = shuffled.labels
        self.quantisation = [x.to(self.device) for x in quantisation or []]
        self.fully_integer = fully_integer or {}
        self.reference = prune_model(dense, PruneConfig.dense(spec), name=spec.name).to(self.device)
        # (precision, blocks kept float) -> the dense model at it
        self._references = {(FLOAT, ()): self.reference}
        self._states: OrderedDict[tuple[tuple[str, tuple[int, ...]], int], list[TokenState]] = OrderedDict()
        self._sensitivity: dict[str, list[float]] = {}  # precision -> each block's (`sensitive_blocks`)
        with scoring(self.device, dtype):
            self.dense_logits = torch.cat([self._finish(self.reference, s, 0)[0] for s in self._states_at(0)])

    def __len__(self) -> int:
        return sum(len(x) for x in self.inputs)

    def evaluate(
        self,
        config: PruneConfig,
        max_images: int | None = None,
        sample: Evaluation | None = None,
        precision: str = FLOAT,
        float_blocks: Sequence[int] = (),
    ) -> Evaluation:
        """Metrics of `config` at `precision` (but for its `float_blocks`, kept float) on the calibration
        set, or on its first `max_images` (whole batches).

        `sample`: an evaluation of the same config on the first batches (cheap-first); only the
        batches after it are run.
        """
        start = time.perf_counter()
        first = first_change(config, self.spec)
        pruned = prune_model(self.dense, config, name=self.spec.name, importance=self.importance).to(self.device)
        at = (precision, tuple(float_blocks))
        if precision != FLOAT:
            pruned = self._quantise(pruned, *at)
        build = time.perf_counter() - start
        done = self._batch_count(sample.images) if sample is not None else 0
        logits = [sample.logits] if sample is not None else []
        counts = [sample.counts] if sample is not None and sample.counts is not None else []
        with scoring(self.device, self.dtype):
            for state in self._states_at(first, at)[done : self._batch_count(max_images)]:
                out, kept = self._finish(pruned, state, first)
                logits.append(out)
                if kept is not None:
                    counts.append(kept)
        logits_all = torch.cat(logits)
        n = len(logits_all)
        labels = None if self.labels is None else self.labels[:n]
        metrics = classification_metrics(logits_all, labels, self.dense_logits[:n])
        kept_counts = torch.cat(counts) if counts else None
        seconds = time.perf_counter() - start + (sample.seconds if sample is not None else 0.0)
        build += sample.build_seconds if sample is not None else 0.0
        return Evaluation(metrics, logits_all, kept_counts, n, first, seconds, build)

    def _batch_count(self, max_images: int | None) -> int:
        if max_images is None:
            return len(self.inputs)
        total, count = 0, 0
        while count < len(self.inputs) and total < max_images:
            total += len(self.inputs[count])
            count += 1
        return count

    @staticmethod
    def _finish(model: PrunedViT, state: TokenState, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        state = model.run_blocks(state, start=start)
        counts = torch.stack(state.counts, dim=1).cpu() if state.counts else None
        return model.head(state).float().cpu(), counts

    def sensitive_blocks(self, precision: str, count: int) -> list[int]:
        """The `count` blocks whose quantisation to `precision` costs the dense model the most fidelity on
        the quantisation batches (`pruning.quantisation.block_sensitivity`, measured once per precision)."""
        if precision not in self._sensitivity:
            self._no_batches(precision)
            with scoring(self.device, self.dtype):
                sensitivity = block_sensitivity(self.reference, self.quantisation, precision, **self._recipe(precision))
            self._sensitivity[precision] = sensitivity
        return most_sensitive_blocks(self._sensitivity[precision], count)

    def _quantise(self, model: PrunedViT, precision: str, float_blocks: tuple[int, ...] = ()) -> PrunedViT:
        self._no_batches(precision)
        return quantise(model, self.quantisation, precision, float_blocks=float_blocks, **self._recipe(precision))

    def _recipe(self, precision: str) -> dict:
        """How the device computes `precision`: `quantise`'s `attention` and `stream`."""
        return {"attention": precision in self.fully_integer, "stream": self.fully_integer.get(precision)}

    def _no_batches(self, precision: str) -> None:
        if not self.quantisation:
            raise ValueError(f"precision {precision}: the evaluator was given no quantisation batches")

    def _reference_at(self, at: tuple[str, tuple[int, ...]]) -> PrunedViT:
        if at not in self._references:
            self._references[at] = self._quantise(self.reference, *at)
        return self._references[at]

    # -- the prefix cache -----------------------------------------------------------------------

    def _states_at(self, boundary: int, at: tuple[str, tuple[int, ...]] = (FLOAT, ())) -> list[TokenState]:
        """Dense activations (of the dense model at `at`: precision, blocks kept float) entering block
        `boundary` for every batch (0 = the embedded patches)."""
        key = (at, boundary)
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        reference = self._reference_at(at)
        below = [b for p, b in self._states if p == at and b < boundary]
        with scoring(self.device, self.dtype):
            if below:
                start = max(below)
                cached = self._states[(at, start)]
                states = [reference.run_blocks(s, start=start, stop=boundary) for s in cached]
            else:
                embedded = [reference.embed(x) for x in self.inputs]
                states = [reference.run_blocks(s, start=0, stop=boundary) for s in embedded]
        self._states[key] = states
        self._evict()
        return states

    def _evict(self) -> None:
        def size(states: list[TokenState]) -> int:
            return sum(s.x.numel() * s.x.element_size() for s in states)

        while len(self._states) > 1 and sum(size(v) for v in self._states.values()) > self.cache_bytes:
            self._states.popitem(last=False)
