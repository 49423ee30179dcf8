"""What every token op is: a frozen config that knows how it runs, describes itself and is searched.

A token op is one public module of this package holding one `TokenOp` subclass: its JSON fields
(with `kind` as the discriminator), its traits, its runtime step (`apply`), its words for cards,
summaries and the dashboard, and how a search varies it (`SearchAxis`). The registry
(`pruning.tokens`) finds every such module; nothing outside the op's own modules (this one and its
pricing in `latency_models/profiling/ops/`) names it.

These modules import torch only inside `apply`: the job schema validates token modes against the
registry in client commands that never load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pruning.spec import BlockSpec
    from pruning.tokens._state import TokenState

__all__ = ["NoReduction", "SearchAxis", "TokenOp"]


@dataclass(frozen=True)
class SearchAxis:
    """How a search varies an op: one parameter `{prefix}_{block}` at each of the space's token blocks
    (`per="block"`), or one `{prefix}_{first}-{last}` per group of `group_field` consecutive blocks,
    applied at each block of the group (`per="group"`). `off` leaves a block dense; `cheapest` is the
    end of the range that removes the most; `baselines` are warm-start values (uniform configs the
    search must beat), set at `baseline_blocks` when the space has them there, else everywhere."""

    prefix: str
    per: Literal["block", "group"]
    off: float
    cheapest: Literal["low", "high"]
    group_field: str | None = None
    baselines: tuple[float, ...] = ()
    baseline_blocks: tuple[int, ...] = ()
    fields: tuple[str, ...] = ()
    """The SearchSpace fields only this op reads."""
    key_when_unsearched: bool = True
    """False: its fields count in a job's study key only when the op is searched (ops added after
    the first release, so that older jobs keep their study names)."""


class TokenOp(BaseModel):
    """A token reduction at one block, between its attention and its MLP (EViT, ToMe)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    needs: ClassVar[Literal["scores", "keys"] | None] = None
    """What the block's attention must hand over: class-attention scores (explicit attention), or its
    keys averaged over heads (fused attention still runs); None: nothing."""
    per_image: ClassVar[bool] = False
    """Counts differ per image: batches of several images are padded (masked attention) from here on,
    and latency needs the realised counts."""
    fixed_counts: ClassVar[bool] = False
    """Needs the same count in every image (a compact, unpadded batch): cannot follow a per-image op."""
    grid_ok: ClassVar[bool] = True
    """False: refused on families that pool a token grid between stages (PiT)."""
    order: ClassVar[int] = 0
    """Where the op is listed (forms, help texts)."""
    count_rule: ClassVar[tuple[str, str] | None] = None
    """How the dashboard follows token counts: ("ratio", field) keeps ceil(field * N); ("pairs", field)
    removes min(field, N // 2); ("per_image", "") makes later counts unknown; None keeps all."""
    axis: ClassVar[SearchAxis | None] = None
    widen: ClassVar[str] = ""
    """How a user widens this op's search when no config meets a budget, e.g. 'raise merge_max'."""

    @classmethod
    def kind_name(cls) -> str:
        return cls.model_fields["kind"].default

    @property
    def reduces(self) -> bool:
        return self.needs is not None

    def kept(self, n_tokens: int) -> int:
        """Patch tokens left of `n_tokens` (ops with the same count in every image)."""
        return n_tokens

    def apply(self, state: TokenState, extra: Any, package_token: bool) -> TokenState:
        """The reduced token state; `extra` is what `needs` asked the attention for."""
        return state

    def summary(self) -> str:
        """A few words for tables and hover texts, e.g. 'keep 0.7'."""
        return ""

    def card(self) -> str:
        """One cell of a model card's per-block table."""
        return "-"

    # -- search ----------------------------------------------------------------------------------

    @classmethod
    def search_range(cls, space: Any, dense: BlockSpec) -> tuple[float, float, float]:
        """(low, high, step) of this op's parameter for a block shaped like `dense` (ints for int steps)."""
        raise NotImplementedError

    @classmethod
    def from_search(cls, value: float) -> TokenOp | None:
        """The op a searched value sets, or None where the value leaves the block dense."""
        raise NotImplementedError


class NoReduction(TokenOp):
    kind: Literal["none"] = "none"

    order: ClassVar[int] = 99
