"""PruneConfig: the one description of a pruned ViT's structure.

A config lists, for every transformer block, how many attention heads and MLP hidden channels
survive and which token reduction runs at that block. Together with the dense weights it rebuilds
the pruned model deterministically (`heads_kept` / `channels_kept` pin the exact survivors once
importance has chosen them). The dense model is the config that keeps everything.

Checks that need the model (head counts, widths, block count) live in `PruneConfig.check`, which
names the block and the field in its message.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pruning.spec import ModelSpec

__all__ = [
    "BlockConfig",
    "ConfigError",
    "MergeReduction",
    "NoReduction",
    "PruneConfig",
    "ScoreKind",
    "ThresholdReduction",
    "TokenReduction",
    "TopKReduction",
]

ScoreKind = Literal["cls_attn", "head_weighted"]
"""How token scores are made from a block's attention.

`cls_attn`: the class token's attention averaged over heads (EViT).
`head_weighted`: the class token's attention weighted by each head's importance for that image,
the norm of the head's class-token output (AS-ViT).
"""


class ConfigError(ValueError):
    """A PruneConfig that cannot describe a pruned version of the given model."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoReduction(_Frozen):
    kind: Literal["none"] = "none"


class TopKReduction(_Frozen):
    """Keep `ceil(keep_ratio * N)` of the N patch tokens that enter this block's MLP."""

    kind: Literal["topk"] = "topk"
    keep_ratio: float = Field(gt=0.0, le=1.0)

    def kept(self, n_tokens: int) -> int:
        return max(1, math.ceil(self.keep_ratio * n_tokens))


class ThresholdReduction(_Frozen):
    """Keep the patch tokens whose score is at least `threshold` times the mean score (AS-ViT).

    Scores are normalised so that their mean over the image's patch tokens is 1: `threshold=1.0`
    keeps the tokens that receive more than a uniform share of attention. The best-scoring token
    always survives, so an image never loses every patch token.
    """

    kind: Literal["threshold"] = "threshold"
    threshold: float = Field(gt=0.0, allow_inf_nan=False)


class MergeReduction(_Frozen):
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

    def kept(self, n_tokens: int) -> int:
        return n_tokens - min(self.r, n_tokens // 2)


TokenReduction = Annotated[
    NoReduction | TopKReduction | ThresholdReduction | MergeReduction, Field(discriminator="kind")
]


class BlockConfig(_Frozen):
    """One transformer block: what survives of its attention and MLP, and its token reduction.

    `heads=0` removes the attention branch and `mlp_hidden=0` the MLP branch (their output biases
    stay as constants, so nothing else changes). `heads_kept` / `channels_kept` name the surviving
    head and channel indices of the dense block; left empty, an importance criterion picks them.
    """

    heads: int = Field(ge=0)
    mlp_hidden: int = Field(ge=0)
    tokens: TokenReduction = NoReduction()
    heads_kept: tuple[int, ...] | None = None
    channels_kept: tuple[int, ...] | None = None

    @field_validator("heads_kept", "channels_kept")
    @classmethod
    def _sorted_unique(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (list(value) != sorted(set(value)) or any(i < 0 for i in value)):
            raise ValueError("must be distinct non-negative indices in increasing order")
        return value

    @model_validator(mode="after")
    def _indices_match_counts(self) -> BlockConfig:
        if self.heads_kept is not None and len(self.heads_kept) != self.heads:
            raise ValueError(f"heads_kept lists {len(self.heads_kept)} heads but heads={self.heads}")
        if self.channels_kept is not None and len(self.channels_kept) != self.mlp_hidden:
            raise ValueError(f"channels_kept lists {len(self.channels_kept)} channels but mlp_hidden={self.mlp_hidden}")
        return self

    @property
    def reduces_tokens(self) -> bool:
        return self.tokens.kind != "none"


class PruneConfig(_Frozen):
    """Per-block structure plus the global token options. Frozen, hashable, JSON-serialisable."""

    blocks: tuple[BlockConfig, ...]
    score: ScoreKind = "cls_attn"
    package_token: bool = False
    round_to: int = Field(default=8, ge=1)

    @classmethod
    def dense(cls, spec: ModelSpec, **options) -> PruneConfig:
        """The config that keeps everything: it reproduces the dense model."""
        blocks = tuple(BlockConfig(heads=b.heads, mlp_hidden=b.mlp_hidden) for b in spec.blocks)
        return cls(blocks=blocks, **options)

    @classmethod
    def uniform(
        cls,
        spec: ModelSpec,
        *,
        keep_ratio: float | None = None,
        at: tuple[int, ...] = (),
        threshold: float | None = None,
        merge_r: int | None = None,
        head_ratio: float = 1.0,
        mlp_ratio: float = 1.0,
        **options,
    ) -> PruneConfig:
        """A common shape: the same token reduction at blocks `at`, the same head/MLP ratios everywhere."""
        if sum(x is not None for x in (keep_ratio, threshold, merge_r)) > 1:
            raise ConfigError("give one of keep_ratio (top-k), threshold and merge_r, not several")
        round_to = cls(blocks=(), **options).round_to  # validates the options before they are used
        blocks = []
        for i, b in enumerate(spec.blocks):
            tokens: NoReduction | TopKReduction | ThresholdReduction | MergeReduction = NoReduction()
            if i in at:
                if keep_ratio is not None:
                    tokens = TopKReduction(keep_ratio=keep_ratio)
                elif threshold is not None:
                    tokens = ThresholdReduction(threshold=threshold)
                elif merge_r is not None:
                    tokens = MergeReduction(r=merge_r)
            heads = b.heads if head_ratio >= 1.0 else max(1, round(b.heads * head_ratio))
            hidden = b.mlp_hidden
            if mlp_ratio < 1.0:
                hidden = max(round_to, round(b.mlp_hidden * mlp_ratio / round_to) * round_to)
            blocks.append(BlockConfig(heads=heads, mlp_hidden=hidden, tokens=tokens))
        return cls(blocks=tuple(blocks), **options)

    @property
    def reduces_tokens(self) -> bool:
        return any(b.reduces_tokens for b in self.blocks)

    @property
    def has_threshold(self) -> bool:
        return any(b.tokens.kind == "threshold" for b in self.blocks)

    @property
    def has_merge(self) -> bool:
        return any(b.tokens.kind == "merge" for b in self.blocks)

    def key(self) -> str:
        """A stable short hash of the structure, for caches and deduplication."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def is_dense_for(self, spec: ModelSpec) -> bool:
        return self.without_indices() == PruneConfig.dense(
            spec, score=self.score, package_token=self.package_token, round_to=self.round_to
        )

    def without_indices(self) -> PruneConfig:
        """The same structure with the survivor indices left to the importance criterion."""
        blocks = tuple(b.model_copy(update={"heads_kept": None, "channels_kept": None}) for b in self.blocks)
        return self.model_copy(update={"blocks": blocks})

    def check(self, spec: ModelSpec) -> None:
        """Raise ConfigError, naming the block and the field, if this config does not fit `spec`."""
        if len(self.blocks) != len(spec.blocks):
            raise ConfigError(
                f"blocks: the config lists {len(self.blocks)} blocks but {spec.name} has {len(spec.blocks)}"
            )
        if self.has_merge and self.has_threshold:
            # Thresholds give each image its own token count (padded batches); merging pairs tokens
            # by fixed counts and its sizes would have to follow every padding.
            raise ConfigError("tokens: merge and threshold cannot be combined in one config; use merge with topk")
        if self.has_merge and spec.family != "vit":
            raise ConfigError(
                f"tokens: merge is supported on plain ViT/DeiT models; {spec.name} pools a token grid"
                " between stages, which merged tokens no longer form"
            )
        for i, (cfg, dense) in enumerate(zip(self.blocks, spec.blocks, strict=True)):
            where = f"block {i}"
            if cfg.heads > dense.heads:
                raise ConfigError(f"{where}: heads={cfg.heads} but the model has only {dense.heads} heads there")
            if cfg.mlp_hidden > dense.mlp_hidden:
                raise ConfigError(
                    f"{where}: mlp_hidden={cfg.mlp_hidden} but the model has only {dense.mlp_hidden} channels there"
                )
            if cfg.mlp_hidden != dense.mlp_hidden and cfg.mlp_hidden % self.round_to:
                raise ConfigError(
                    f"{where}: mlp_hidden={cfg.mlp_hidden} is not a multiple of round_to={self.round_to}"
                    " (hardware-friendly widths); pick a multiple or keep all channels"
                )
            if cfg.heads_kept and max(cfg.heads_kept) >= dense.heads:
                raise ConfigError(f"{where}: heads_kept names head {max(cfg.heads_kept)} of {dense.heads}")
            if cfg.channels_kept and max(cfg.channels_kept) >= dense.mlp_hidden:
                raise ConfigError(
                    f"{where}: channels_kept names channel {max(cfg.channels_kept)} of {dense.mlp_hidden}"
                )
            if cfg.reduces_tokens and cfg.heads == 0:
                raise ConfigError(
                    f"{where}: tokens={cfg.tokens.kind} needs attention scores, but heads=0 removes the"
                    " attention of this block; keep at least one head or move the token reduction"
                )
            if cfg.reduces_tokens and not dense.can_reduce_tokens:
                raise ConfigError(f"{where}: tokens={cfg.tokens.kind} is not supported at this block of {spec.name}")
