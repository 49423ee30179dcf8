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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pruning.spec import ModelSpec
from pruning.tokens import TOKEN_OPS, NoReduction, TokenReduction, token_op

__all__ = ["BlockConfig", "ConfigError", "PruneConfig", "ScoreKind"]

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


_OP_FIELDS = {name: op for op in TOKEN_OPS.values() for name in op.model_fields if name != "kind"}
"""Field name -> the token op it belongs to (field names are unique across ops)."""


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
        return self.tokens.reduces


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
        at: tuple[int, ...] = (),
        head_ratio: float = 1.0,
        mlp_ratio: float = 1.0,
        **options,
    ) -> PruneConfig:
        """A common shape: the same token op at blocks `at`, the same head/MLP ratios everywhere.

        The token op is named by its fields among `options` (`keep_ratio=0.7` for top-k,
        `threshold=1.0`, `r=8` for a merge); the other options are PruneConfig's own."""
        fields = {name: options.pop(name) for name in list(options) if name in _OP_FIELDS}
        fields = {name: value for name, value in fields.items() if value is not None}  # None: not given
        owners = {_OP_FIELDS[name] for name in fields}
        if len(owners) > 1:
            raise ConfigError(f"give the fields of one token op, not several: {', '.join(sorted(fields))}")
        op = owners.pop()(**fields) if owners else NoReduction()
        round_to = cls(blocks=(), **options).round_to  # validates the options before they are used
        blocks = []
        for i, b in enumerate(spec.blocks):
            heads = b.heads if head_ratio >= 1.0 else max(1, round(b.heads * head_ratio))
            hidden = b.mlp_hidden
            if mlp_ratio < 1.0:
                hidden = max(round_to, round(b.mlp_hidden * mlp_ratio / round_to) * round_to)
            blocks.append(BlockConfig(heads=heads, mlp_hidden=hidden, tokens=op if i in at else NoReduction()))
        return cls(blocks=tuple(blocks), **options)

    @property
    def reduces_tokens(self) -> bool:
        return any(b.reduces_tokens for b in self.blocks)

    @property
    def per_image(self) -> bool:
        """Some block keeps a different number of tokens in every image (thresholds): batches are padded."""
        return any(b.tokens.per_image for b in self.blocks)

    def uses(self, kind: str) -> bool:
        """Whether some block runs the token op `kind`."""
        token_op(kind)  # refuses unknown kinds
        return any(b.tokens.kind == kind for b in self.blocks)

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
        ops = {type(b.tokens) for b in self.blocks}
        for fixed in (op for op in ops if op.fixed_counts):
            for varying in (op for op in ops if op.per_image):
                # A per-image op gives each image its own token count (padded batches); an op that
                # pairs tokens by fixed counts would have to follow every padding.
                raise ConfigError(
                    f"tokens: {fixed.kind_name()} and {varying.kind_name()} cannot be combined in one config"
                )
            if not fixed.grid_ok and spec.family != "vit":
                raise ConfigError(
                    f"tokens: {fixed.kind_name()} is supported on plain ViT/DeiT models; {spec.name} pools a token"
                    " grid between stages, which its tokens no longer form"
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
