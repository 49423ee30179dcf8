"""Threshold token pruning (AS-ViT): keep the patch tokens whose score beats a multiple of the mean."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from pruning.tokens._base import SearchAxis, TokenOp

if TYPE_CHECKING:
    import torch

    from pruning.spec import BlockSpec
    from pruning.tokens._state import TokenState

__all__ = ["ThresholdReduction"]

THRESHOLD_STEP = 0.05


class ThresholdReduction(TokenOp):
    """Keep the patch tokens whose score is at least `threshold` times the mean score (AS-ViT).

    Scores are normalised so that their mean over the image's patch tokens is 1: `threshold=1.0`
    keeps the tokens that receive more than a uniform share of attention. The best-scoring token
    always survives, so an image never loses every patch token.
    """

    kind: Literal["threshold"] = "threshold"
    threshold: float = Field(gt=0.0, allow_inf_nan=False)

    needs: ClassVar = "scores"
    per_image: ClassVar[bool] = True
    order: ClassVar[int] = 2
    count_rule: ClassVar = ("per_image", "")
    widen: ClassVar[str] = "raise threshold_max, more token_blocks"
    axis: ClassVar = SearchAxis(prefix="threshold", per="block", off=0.0, cheapest="high", fields=("threshold_max",))

    def apply(self, state: TokenState, extra: torch.Tensor, package_token: bool) -> TokenState:
        from pruning.tokens._scoring import drop_by_score

        return drop_by_score(state, extra, package_token, self._keep_mask)

    def _keep_mask(self, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n_valid = valid.sum(1, keepdim=True)
        mean = scores.masked_fill(~valid, 0.0).sum(1, keepdim=True) / n_valid.clamp(min=1)
        keep = (scores >= self.threshold * mean) & valid
        best = scores.masked_fill(~valid, float("-inf")).argmax(dim=1, keepdim=True)
        return keep.scatter(1, best, True)

    def summary(self) -> str:
        return f"thr {self.threshold:g}"

    def card(self) -> str:
        return f"threshold, keep score >= {self.threshold:g} x mean"

    @classmethod
    def search_range(cls, space, dense: BlockSpec) -> tuple[float, float, float]:
        return 0.0, round(space.threshold_max / THRESHOLD_STEP) * THRESHOLD_STEP, THRESHOLD_STEP

    @classmethod
    def from_search(cls, value: float) -> ThresholdReduction | None:
        return cls(threshold=round(value, 4)) if value > 0.0 else None
