"""Token merging (ToMe, Bolya et al. 2023): bipartite soft matching on attention keys.

Written with gathers, comparisons and matrix products only (no scatter_reduce), so the graph
has static shapes for a given input size, exports to ONNX and gives each image the same result
alone or in any batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from pruning.tokens._base import SearchAxis, TokenOp

if TYPE_CHECKING:
    import torch

    from pruning.spec import BlockSpec
    from pruning.tokens._state import TokenState

__all__ = ["MergeReduction", "merge_tokens"]

MERGE_STEP = 2
"""Merge counts are searched on a grid of 2: over a group of three blocks a step moves about six tokens,
close to one 0.05 keep-ratio step at a 196-token block."""


class MergeReduction(TokenOp):
    """Merge `r` pairs of similar patch tokens into one each (ToMe), between attention and MLP.

    Bipartite soft matching on this block's attention keys (averaged over heads): the patch tokens
    alternate into two sets, each token of the first set is paired with its most similar token of
    the second, and the `r` most similar pairs are averaged, weighted by how many original patches
    each token already holds. Those sizes then bias every later attention (proportional
    attention), so a merged token counts as the patches it stands for. Class, distillation and
    package tokens are never merged. At most half of the patch tokens can merge at one block.
    """

    kind: Literal["merge"] = "merge"
    r: int = Field(ge=1)

    needs: ClassVar = "keys"
    fixed_counts: ClassVar[bool] = True
    grid_ok: ClassVar[bool] = False  # merged tokens no longer form the grid that PiT pools
    order: ClassVar[int] = 3
    count_rule: ClassVar = ("pairs", "r")
    widen: ClassVar[str] = "raise merge_max"
    axis: ClassVar = SearchAxis(
        prefix="merge",
        per="group",
        group_field="merge_group",
        off=0,
        cheapest="high",
        # ToMe's own schedules: the same count at every block (DeiT-Tiny's usual r=13 about halves its latency).
        baselines=(4, 8, 12, 16),
        fields=("merge_group", "merge_max"),
        key_when_unsearched=False,
    )

    def kept(self, n_tokens: int) -> int:
        return n_tokens - min(self.r, n_tokens // 2)

    def apply(self, state: TokenState, extra: torch.Tensor, package_token: bool) -> TokenState:
        return merge_tokens(state, extra, self)

    def summary(self) -> str:
        return f"merge {self.r}"

    def card(self) -> str:
        return f"merge {self.r} pairs of similar patch tokens (ToMe)"

    @classmethod
    def search_range(cls, space, dense: BlockSpec) -> tuple[int, int, int]:
        # More than half of a block's tokens never merge (`kept`): a larger r adds nothing.
        top = max(MERGE_STEP, min(space.merge_max, dense.tokens_in // 2) // MERGE_STEP * MERGE_STEP)
        return 0, top, MERGE_STEP

    @classmethod
    def from_search(cls, value: float) -> MergeReduction | None:
        return cls(r=int(value)) if value else None


def merge_tokens(state: TokenState, keys: torch.Tensor, reduction: MergeReduction) -> TokenState:
    """Merge `reduction.r` pairs of the patch tokens of `state`; `keys` (B, N, d): this block's
    attention keys averaged over heads, the similarity metric.

    Patch tokens alternate into sets A (even positions) and B (odd). Every A token finds its most
    similar B token (cosine similarity); the r A tokens with the most similar partners are folded
    into them, as size-weighted averages. The result holds prefix tokens, the unmerged A tokens
    (in their original order), every B token, then the package token if there is one.
    """
    import torch

    if state.valid is not None or not state.compact:
        raise ValueError("token merging needs a compact, unpadded batch (no threshold reduction before it)")
    B, N, C = state.x.shape
    patch = state.patch_slice()
    n = state.n_patch
    r = n - reduction.kept(n)
    size = state.size if state.size is not None else state.x.new_ones(B, N)
    if r == 0:
        count = torch.full((B,), n, dtype=torch.long, device=state.x.device)
        return replace(state, counts=[*state.counts, count])

    metric = keys[:, patch]
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(metric.dtype).tiny)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)  # a stable sort would not export to ONNX
    merged = ranked[:, :r]  # A tokens folded into their partners
    kept = ranked[:, r:].sort(dim=-1).values  # A tokens that stay, in their original order

    patches, patch_size = state.x[:, patch], size[:, patch]
    x_a, x_b = patches[:, ::2], patches[:, 1::2]
    size_a, size_b = patch_size[:, ::2], patch_size[:, 1::2]
    weighted_a = x_a * size_a[..., None]
    # (B, |B|, r): which merged A token goes into which B token; a matrix product sums them.
    into = partner.gather(1, merged)[:, None, :] == torch.arange(x_b.shape[1], device=x_b.device)[:, None]
    into = into.to(x_b.dtype)
    total_b = x_b * size_b[..., None] + into @ weighted_a.gather(1, merged[..., None].expand(B, r, C))
    new_size_b = size_b + (into @ size_a.gather(1, merged)[..., None])[..., 0]
    new_b = total_b / new_size_b[..., None]

    parts = [state.x[:, : state.n_prefix], x_a.gather(1, kept[..., None].expand(-1, -1, C)), new_b]
    sizes = [size[:, : state.n_prefix], size_a.gather(1, kept), new_size_b]
    if state.has_package:
        parts.append(state.x[:, -1:])
        sizes.append(size[:, -1:])
    count = torch.full((B,), n - r, dtype=torch.long, device=state.x.device)
    return replace(state, x=torch.cat(parts, 1), size=torch.cat(sizes, 1), counts=[*state.counts, count])
