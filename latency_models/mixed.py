"""Latency of a mixed-precision model: some blocks kept float, the rest quantised.

A device that runs a model in int8 and keeps a few blocks float runs each block in its own dtype, so
each block is priced from the table of the dtype that runs it: the float blocks from the float table,
every other block, the patch embedding, the classifier (quantised) and the quantised table's end-to-end
calibration from the quantised one. No conversion is added at a block's edges: a quantised layer
quantises its input and the residual adds run float in both (`pruning.quantisation`), so keeping a
block float adds no quantise or dequantise step that the int8 model did not already run.
"""

from __future__ import annotations

from collections.abc import Sequence

from latency_models.predictor import LatencyPredictor, Prediction
from pruning.config import PruneConfig
from pruning.spec import ModelSpec

__all__ = ["MixedPrecisionPredictor"]


class MixedPrecisionPredictor:
    """Prices a model quantised but for `float_blocks` (block indices), as `LatencyPredictor.predict` does."""

    def __init__(self, quantised: LatencyPredictor, float_: LatencyPredictor, float_blocks: Sequence[int]) -> None:
        self.quantised = quantised
        self.float = float_
        self.float_blocks = tuple(sorted(set(float_blocks)))

    def predict(
        self, config: PruneConfig, spec: ModelSpec, batch: int = 1, kept_tokens: Sequence[float] | None = None
    ) -> Prediction:
        quantised = self.quantised.predict(config, spec, batch, kept_tokens)
        if not self.float_blocks:
            return quantised
        if self.float_blocks[-1] >= len(config.blocks):
            raise ValueError(f"float blocks {list(self.float_blocks)}: the config has {len(config.blocks)} blocks")
        float_ = self.float.predict(config, spec, batch, kept_tokens)
        swapped = sum(float_.block_ms[index] - quantised.block_ms[index] for index in self.float_blocks)
        block_ms = tuple(
            (float_ if index in self.float_blocks else quantised).block_ms[index] for index in range(len(config.blocks))
        )
        return Prediction(
            ms=quantised.ms + swapped,
            extrapolated=quantised.extrapolated or float_.extrapolated,
            blocks_ms=quantised.blocks_ms + swapped,
            reductions=quantised.reductions,
            calibrated=quantised.calibrated,
            block_ms=block_ms,
        )
