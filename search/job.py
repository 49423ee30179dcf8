"""JobSpec: what a user asks of a search. The CLI and the REST API share this one schema.

A job names the dense model, the device whose latency table prices every trial, the batch size
and budget, the search space, the image sets (calibration for the search, validation held out for
the Pareto models) and how many trials to run. Everything a worker on another machine needs to
evaluate a trial follows from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SAMPLERS", "JobSpec", "SearchSpace"]

SAMPLERS = ("tpe", "nsga2", "gp")
KEEP_STEP = 0.05
"""Keep ratios are searched on a 0.05 grid: finer steps change a 196-token block by < 10 tokens."""
THRESHOLD_STEP = 0.05


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite budget or ratio is never meant, and cannot be stored as JSON.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SearchSpace(_Strict):
    """Which dimensions are searched, and their ranges.

    tokens: `topk` searches a keep ratio at each of `token_blocks` (1.0 = no reduction there);
      `threshold` searches an AS-ViT score threshold there (0 = no reduction); `none` keeps all.
    heads / mlp: search attention heads / MLP channels, per group of `group` consecutive blocks
      (1 = every block on its own; 3 = DeiT's twelve blocks as four stages).
    score: the token-score kinds to choose from; package_token: off, on, or searched.
    """

    tokens: Literal["topk", "threshold", "none"] = "topk"
    token_blocks: tuple[int, ...] = (3, 6, 9)
    keep_min: float = Field(default=0.4, gt=0.0, lt=1.0)
    threshold_max: float = Field(default=1.5, gt=0.0, le=10.0)
    heads: bool = False
    mlp: bool = False
    group: int = Field(default=3, ge=1)
    min_head_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    min_mlp_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    score: tuple[Literal["cls_attn", "head_weighted"], ...] = ("cls_attn",)
    package_token: Literal["off", "on", "search"] = "search"
    round_to: int = Field(default=8, ge=1)

    @field_validator("token_blocks")
    @classmethod
    def _distinct_blocks(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if list(value) != sorted(set(value)) or any(b < 0 for b in value):
            raise ValueError("token_blocks must be distinct block indices in increasing order, e.g. [3, 6, 9]")
        return value

    @field_validator("keep_min")
    @classmethod
    def _on_grid(cls, value: float) -> float:
        snapped = round(value / KEEP_STEP) * KEEP_STEP
        if abs(snapped - value) > 1e-9 or snapped <= 0:
            raise ValueError(f"keep_min must be a positive multiple of {KEEP_STEP}, e.g. 0.4")
        return round(snapped, 4)

    @field_validator("score")
    @classmethod
    def _some_score(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("score lists one or more distinct kinds: cls_attn, head_weighted")
        return value

    @model_validator(mode="after")
    def _something_searched(self) -> SearchSpace:
        if self.tokens == "none" and not (self.heads or self.mlp):
            raise ValueError("the space searches nothing: set tokens to topk or threshold, or heads or mlp to true")
        if self.tokens != "none" and not self.token_blocks:
            raise ValueError(f"tokens={self.tokens} needs token_blocks, the blocks that reduce tokens")
        return self


class JobSpec(_Strict):
    """One search job. Exactly one of `budget_ms` and `budget_ratio` (of the dense model's latency).

    Validation images come from `val`, or, without it, from a seeded `holdout` share of `calib`
    that the search never sees.
    """

    model: str = Field(min_length=1, description="timm model name, e.g. deit_tiny_patch16_224")
    weights: Path | None = Field(default=None, description="local .safetensors/.pth of the dense model")
    pretrained: bool = Field(default=False, description="download timm's weights instead (needs internet)")
    model_kwargs: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="timm.create_model options the weights need, e.g. num_classes"
    )
    device: str = Field(min_length=1, description="host-cpu, cuda, mobile-cpu, fpga, a preset, an imported name")
    table: Path | None = Field(default=None, description="a latency table file to use instead of a named device")
    batch: int = Field(default=1, ge=1, le=4096)
    budget_ms: float | None = Field(default=None, gt=0)
    budget_ratio: float | None = Field(default=None, gt=0, le=1.0)
    calib: Path = Field(description="calibration images (ImageFolder): the search scores trials on them")
    val: Path | None = Field(default=None, description="validation images, disjoint from calib")
    holdout: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="without val: the share of calib held out for validation"
    )
    class_map: Path | None = None
    calib_images: int | None = Field(default=None, ge=8, description="use at most this many calibration images")
    val_images: int | None = Field(default=None, ge=1)
    trials: int = Field(default=100, ge=1, le=100_000)
    cheap_first: int | None = Field(
        default=None, ge=8, description="score each trial on this many images first; finish only undominated ones"
    )
    sampler: Literal["tpe", "nsga2", "gp"] = "tpe"
    space: SearchSpace = SearchSpace()
    recover: bool = Field(default=True, description="refit pruned projections of the Pareto models (no training)")
    onnx: bool = Field(default=False, description="add model.onnx to every Pareto bundle")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seeds the sampler and the holdout split")

    @model_validator(mode="after")
    def _one_budget(self) -> JobSpec:
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise ValueError("give exactly one budget: budget_ms (milliseconds) or budget_ratio (share of dense)")
        if not self.weights and not self.pretrained:
            raise ValueError("no weights: give weights (a local .safetensors or .pth file) or pretrained=true")
        return self

    def study_key(self) -> str:
        """Names the study: everything that changes what a trial means, not how many trials are asked."""
        identity = self.model_dump_json(exclude={"trials", "onnx"})
        return hashlib.sha256(identity.encode()).hexdigest()[:12]

    def study_name(self) -> str:
        return f"vitprune-{self.model}-{self.study_key()}"
