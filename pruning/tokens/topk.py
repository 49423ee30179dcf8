"""Top-k token pruning (EViT, SPViT): keep the patch tokens the class token attends to most."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from pruning.tokens._base import SearchAxis, TokenOp

if TYPE_CHECKING:
    import torch

    from pruning.spec import BlockSpec
    from pruning.tokens._state import TokenState

__all__ = ["TopKReduction"]

KEEP_STEP = 0.05
"""Keep ratios are searched on a 0.05 grid: finer steps change a 196-token block by < 10 tokens."""


class TopKReduction(TokenOp):
    """Keep `ceil(keep_ratio * N)` of the N patch tokens that enter this block's MLP."""

    kind: Literal["topk"] = "topk"
    keep_ratio: float = Field(gt=0.0, le=1.0)

    needs: ClassVar = "scores"
    order: ClassVar[int] = 1
    count_rule: ClassVar = ("ratio", "keep_ratio")
    widen: ClassVar[str] = "lower keep_min, more token_blocks"
    axis: ClassVar = SearchAxis(
        prefix="keep",
        per="block",
        off=1.0,
        cheapest="low",
        baselines=(0.5, 0.6, 0.7, 0.8, 0.9),  # the EViT-style uniform configs every search must beat
        baseline_blocks=(3, 6, 9),
        fields=("keep_min",),
    )

    def kept(self, n_tokens: int) -> int:
        return max(1, math.ceil(self.keep_ratio * n_tokens))

    def apply(self, state: TokenState, extra: torch.Tensor, package_token: bool) -> TokenState:
        from pruning.tokens._scoring import drop_by_score

        return drop_by_score(state, extra, package_token, self._keep_mask, fixed_count=self.kept)

    def _keep_mask(self, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per image, the `ceil(keep_ratio * n)` best of its n real tokens (after a per-image op)."""
        import torch

        k = torch.ceil(self.keep_ratio * valid.sum(1, keepdim=True)).clamp(min=1)
        masked = scores.masked_fill(~valid, float("-inf"))
        rank = masked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        return (rank < k) & valid

    def summary(self) -> str:
        return f"keep {self.keep_ratio:g}"

    def card(self) -> str:
        return f"top-k, keep {self.keep_ratio:.0%} of patch tokens"

    @classmethod
    def search_range(cls, space, dense: BlockSpec) -> tuple[float, float, float]:
        return space.keep_min, 1.0, KEEP_STEP

    @classmethod
    def from_search(cls, value: float) -> TopKReduction | None:
        return cls(keep_ratio=round(value, 4)) if value < 1.0 else None
