"""JobSpec: what a user asks of a search. The CLI and the REST API share this one schema.

A job names the dense model, the device whose latency table prices every trial, the batch size
and budget, the search space, the image sets (calibration for the search, validation held out for
the Pareto models) and how many trials to run. Everything a worker on another machine needs to
evaluate a trial follows from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pruning.compute import COMPUTE_HELP, SCORE_DTYPES
from pruning.quantisation.precisions import FLOAT, PRECISIONS
from pruning.tokens import TOKEN_OPS, TokenOp, mode_ops, token_modes
from pruning.tokens.merge import MERGE_STEP
from pruning.tokens.topk import KEEP_STEP
from pruning.training.config import FineTuneConfig
from search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, STORED_OBJECTIVE

__all__ = [
    "FLOAT",
    "SAMPLERS",
    "SEARCH_PRECISIONS",
    "TOKEN_MODES",
    "FineTuneJob",
    "JobSpec",
    "SearchSpace",
    "default_tokens",
]

SAMPLERS = ("tpe", "nsga2", "gp")

SEARCH_PRECISIONS: tuple[str, ...] = (FLOAT, *PRECISIONS)
"""What `SearchSpace.precisions` may list."""

TOKEN_MODES: tuple[str, ...] = token_modes()
"""What `SearchSpace.tokens` may say: each token op of the registry alone, the pairs that mix, none."""


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite budget or ratio is never meant, and cannot be stored as JSON.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SearchSpace(_Strict):
    """Which dimensions are searched, and their ranges.

    tokens: `topk` searches a keep ratio at each of `token_blocks` (1.0 = no reduction there);
      `threshold` searches an AS-ViT score threshold there (0 = no reduction); `merge` searches
      ToMe merge counts, one per group of `merge_group` blocks, applied at every block of the
      group (0 = no merging there); `topk+merge` searches both: a block of `token_blocks` with a
      keep ratio below 1 runs top-k, every other block merges its group's count; `none` keeps all.
    heads / mlp: search attention heads / MLP channels, per group of `group` consecutive blocks
      (1 = every block on its own; 3 = DeiT's twelve blocks as four stages).
    score: the token-score kinds to choose from; package_token: off, on, or searched. Both only
      matter where tokens are dropped by score (top-k, threshold); merging drops no token.
    """

    tokens: str = Field(
        default="topk",
        description="token reduction searched: " + ", ".join(TOKEN_MODES) + " (a mixed mode runs its first op at "
        "token_blocks and its second elsewhere)",
        json_schema_extra={"enum": list(TOKEN_MODES)},
    )
    token_blocks: tuple[int, ...] = Field(
        default=(3, 6, 9),
        description="blocks that search a top-k keep ratio or a threshold (unused by tokens=merge, which merges "
        "in every group of merge_group blocks)",
    )
    keep_min: float = Field(default=0.4, gt=0.0, lt=1.0, description=f"smallest top-k keep ratio ({KEEP_STEP} steps)")
    threshold_max: float = Field(
        default=1.5, gt=0.0, le=10.0, description="largest threshold, in multiples of the mean token score"
    )
    heads: bool = Field(default=False, description="search attention head counts, per group of `group` blocks")
    mlp: bool = Field(default=False, description="search MLP widths, per group of `group` blocks")
    group: int = Field(default=3, ge=1, description="consecutive blocks sharing one head count and one MLP width")
    min_head_ratio: float = Field(default=0.5, gt=0.0, le=1.0, description="fewest heads kept, as a share of dense")
    min_mlp_ratio: float = Field(default=0.5, gt=0.0, le=1.0, description="narrowest MLP, as a share of dense")
    score: tuple[Literal["cls_attn", "head_weighted"], ...] = Field(
        default=("cls_attn",), description="token-score kinds to choose from (top-k and threshold only)"
    )
    package_token: Literal["off", "on", "search"] = Field(
        default="search",
        description="fuse the dropped tokens into one package token: off, on or searched (top-k and threshold only)",
    )
    round_to: int = Field(default=8, ge=1, description="MLP widths are multiples of this")
    precisions: tuple[Literal[SEARCH_PRECISIONS], ...] = Field(
        default=(FLOAT,),
        description="precisions to choose from, searched with the structure: fp32 (the float model), int8 (W8A8), "
        "int8-pow2 (W8A8 with power-of-two scales) and w4a8 (4-bit weights), each quantised after pruning on "
        "calibration images and priced in the dtype that runs it on the device (docs/quantisation.md)",
    )
    keep_float: int = Field(
        default=0,
        ge=0,
        description="with quantised precisions: a quantised trial may also keep up to this many blocks in float "
        "(per-block precision: the blocks whose quantisation costs the most fidelity, measured once per precision "
        "on the dense model), each block priced in the dtype that runs it; 0 quantises whole models",
    )
    # The merge fields are last and left out of a job's study key unless tokens merge (JobSpec.study_key),
    # so the studies of jobs written before merging existed keep their names.
    merge_group: int = Field(
        default=3,
        ge=1,
        description="with tokens=merge or topk+merge: consecutive blocks sharing one merge count (1 = every block "
        "on its own, 3 = DeiT's twelve blocks as four stages, the depth = one uniform count like ToMe)",
    )
    merge_max: int = Field(
        default=24,
        ge=MERGE_STEP,
        description=f"with tokens=merge or topk+merge: the largest merge count r, the token pairs merged at each "
        f"block ({MERGE_STEP} steps from 0 = no merging; at most half a block's tokens merge)",
    )

    @field_validator("tokens")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        mode_ops(value)  # ValueError naming the unknown op or the mix that cannot work
        return value

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

    @field_validator("merge_max")
    @classmethod
    def _merge_on_grid(cls, value: int) -> int:
        if value % MERGE_STEP:
            raise ValueError(
                f"merge_max must be a multiple of {MERGE_STEP} (merge counts are searched in steps "
                f"of {MERGE_STEP}), e.g. 24"
            )
        return value

    @field_validator("score")
    @classmethod
    def _some_score(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("score lists one or more distinct kinds: cls_attn, head_weighted")
        return value

    @field_validator("precisions")
    @classmethod
    def _some_precision(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"precisions lists one or more distinct precisions: {', '.join(SEARCH_PRECISIONS)}")
        return value

    @property
    def quantised(self) -> bool:
        """Some trial may be quantised."""
        return self.precisions != (FLOAT,)

    @model_validator(mode="after")
    def _something_searched(self) -> SearchSpace:
        if not self.ops and not (self.heads or self.mlp):
            modes = [m for m in TOKEN_MODES if m != "none"]
            raise ValueError(
                f"the space searches nothing: set tokens to {', '.join(modes[:-1])} or {modes[-1]},"
                " or heads or mlp to true"
            )
        if self.keep_float and not self.quantised:
            raise ValueError(
                "keep_float keeps blocks float inside a quantised model: list int8, int8-pow2 or w4a8 in precisions"
            )
        if any(op.axis.per == "block" for op in self.ops) and not self.token_blocks:
            raise ValueError(f"tokens={self.tokens} needs token_blocks, the blocks that reduce tokens by score")
        return self

    @property
    def ops(self) -> list[type[TokenOp]]:
        """The token ops searched, in the order `tokens` names them."""
        return mode_ops(self.tokens)

    @property
    def scores_tokens(self) -> bool:
        """Some block may drop tokens by score, so the score kind and the package token matter."""
        return any(op.needs == "scores" for op in self.ops)

    def unused_fields(self) -> set[str]:
        """Fields of token ops this space does not search that stay out of a job's study key
        (`SearchAxis.key_when_unsearched`): ops added later, so older jobs keep their study names."""
        searched = set(self.ops)
        unused = {
            field
            for op in TOKEN_OPS.values()
            if op.axis is not None and op not in searched and not op.axis.key_when_unsearched
            for field in op.axis.fields
        }
        unused |= set() if self.keep_float else {"keep_float"}
        return unused if self.quantised else unused | {"precisions"}  # added later, like the ops


class FineTuneJob(FineTuneConfig):
    """Recovery training of the best Pareto models once the search is done: the recipe of
    `pruning.training.FineTuneConfig` (steps, lr, ...), and how many models get it.

    The models are the front's best by the search's own ranking (the objective on the calibration
    images), never by validation, so the validation figures of the result stay held out.
    """

    models: int = Field(
        default=1,
        ge=1,
        le=32,
        description="fine-tune this many Pareto models, those with the best calibration score; each becomes a "
        "new model of the job beside the one it came from",
    )

    def recipe(self) -> FineTuneConfig:
        return FineTuneConfig(**self.model_dump(exclude={"models"}))


MEASURED_TOKENS: dict[str, str] = {"mobile-cpu": "merge", "host-cpu": "topk"}
"""Device families (a device name before its ':') -> the token op measured best there, which a job that
names none searches. Measured on DeiT-Tiny at 0.7x of dense latency, heads and MLP widths searched with
weight recovery, on images no search saw (bench/results/default_space.md): on the phone's analytic CPU
at batch 1 merging kept agreement 89.6% with dense (KL 0.088) where top-k kept 86.6% (KL 0.120); on this
host's CPU at batch 32 top-k kept 89.6% (KL 0.076) where merging kept 88.0% (KL 0.147) and both 89.2%
(KL 0.088)."""

UNMEASURED_TOKENS = "topk"
"""Elsewhere (GPUs, FPGAs, imported tables) nothing was measured; top-k is the cheap op everywhere (one
gather), where a merge's sorts and scatters may cost a small-batch GPU more than they save."""


def default_tokens(device: str) -> str:
    """The token op a job on `device` searches when its space names none. Measured at one batch per family
    (the phone at 1, the host at 32); at another batch the job's token-payoff note says whether the op
    pays there (`JobContext.token_payoff`)."""
    return MEASURED_TOKENS.get(device.split(":")[0], UNMEASURED_TOKENS)


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
    budget_margin: float | Literal["auto"] | None = Field(
        default=None,
        description=(
            "search under budget / (1 + margin), so models the table prices low still meet the budget: a share "
            "(0.05 = 5%), or 'auto' for the table's checked error (how far 95% of fresh configs ran over it)"
        ),
    )
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
    objective: Literal[tuple(OBJECTIVES)] = Field(
        default=DEFAULT_OBJECTIVE,
        description="what trials are scored by on the calibration images: "
        + "; ".join(f"{o.name}: {o.help}" for o in OBJECTIVES.values()),
    )
    space: SearchSpace = SearchSpace()
    compute: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description=COMPUTE_HELP + "; only workers that have it take the job",
    )
    score_dtype: Literal[tuple(SCORE_DTYPES)] = Field(
        default="float32",
        description="score trials in float32, or under bf16 / fp16 autocast (faster on a GPU; docs/gpu.md)",
    )
    recover: bool = Field(default=True, description="refit pruned projections of the Pareto models (no training)")
    fine_tune: FineTuneJob | None = Field(
        default=None,
        description="after the search, train the best Pareto models towards the dense one (distillation; "
        "docs/training.md); off by default",
    )
    train: Path | None = Field(
        default=None,
        description="with fine_tune: training images (ImageFolder, labels optional), apart from the validation "
        "images; default: the calibration images",
    )
    onnx: bool = Field(default=False, description="add model.onnx to every Pareto bundle")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seeds the sampler and the holdout split")

    @field_validator("device")
    @classmethod
    def _no_dtype(cls, device: str) -> str:
        # A device named with a dtype (`mobile-cpu+int8`, `fpga:zcu102+int16`: `latency_models.devices.analytic`;
        # no other device name has a '+') prices every model in it, float or not. The search prices each
        # precision in its own dtype, so that a float model is never priced as an int8 one.
        base, mark, dtype = device.partition("+")
        if mark:
            raise ValueError(
                f"device {device!r} names a dtype ({dtype}); a search prices each precision it tries in the dtype "
                f"that runs it: name {base!r} and list the precisions to search in space.precisions, "
                f'e.g. ["fp32", "int8"]'
            )
        return device

    @model_validator(mode="before")
    @classmethod
    def _measured_token_op(cls, data: Any) -> Any:
        """A job whose space names no token op searches the one measured best on its device (`default_tokens`)."""
        if not isinstance(data, dict):
            return data
        space = data.get("space")
        if isinstance(space, SearchSpace):
            if "tokens" in space.model_fields_set:
                return data
            space = space.model_dump(exclude_unset=True)
        elif space is None:
            space = {}
        if not isinstance(space, dict) or "tokens" in space:
            return data  # validation says what is wrong with it
        device = data.get("device")
        if not isinstance(device, str):
            return data  # validation says what is wrong with it
        return data | {"space": space | {"tokens": default_tokens(device)}}

    @model_validator(mode="after")
    def _one_budget(self) -> JobSpec:
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise ValueError("give exactly one budget: budget_ms (milliseconds) or budget_ratio (share of dense)")
        if isinstance(self.budget_margin, float) and not 0.0 <= self.budget_margin <= 1.0:
            raise ValueError(f"budget_margin {self.budget_margin} must lie in [0, 1] (a share) or be 'auto'")
        if not self.weights and not self.pretrained:
            raise ValueError("no weights: give weights (a local .safetensors or .pth file) or pretrained=true")
        if self.train is not None and self.fine_tune is None:
            raise ValueError('train names training images but nothing trains: add fine_tune (e.g. {"models": 1})')
        if self.space.quantised and self.score_dtype != "float32":
            raise ValueError(
                f"score_dtype {self.score_dtype} with quantised precisions: a quantised model is simulated in "
                "float32 (integer codes times scales), which autocast would round; use score_dtype float32"
            )
        return self

    def study_key(self) -> str:
        """Names the study: everything that changes what a trial means, not how many trials are asked.

        The fields of a token op added after the first release change nothing unless the space searches
        it; leaving them out otherwise keeps the key (and so the study) of every job written before it.
        """
        # Where trials are scored, and what happens to the front afterwards, change no trial's meaning.
        unused: dict = {"trials": True, "onnx": True, "compute": True, "fine_tune": True, "train": True}
        if self.score_dtype == "float32":  # added later, like the margin
            unused["score_dtype"] = True
        if self.objective == STORED_OBJECTIVE:  # what every job searched before objectives were added
            unused["objective"] = True
        if self.budget_margin is None:  # added later: jobs without a margin keep their study names
            unused["budget_margin"] = True
        if skipped := self.space.unused_fields():
            unused["space"] = dict.fromkeys(sorted(skipped), True)
        identity = self.model_dump_json(exclude=unused)
        return hashlib.sha256(identity.encode()).hexdigest()[:12]

    @classmethod
    def stored(cls, raw: str | dict) -> JobSpec:
        """A job as a study or the service stored it. One stored before jobs named their objective
        was searched on calibration top-1, and is read so (its study and trials keep their meaning)."""
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        data.setdefault("objective", STORED_OBJECTIVE)
        return cls.model_validate(data)

    def study_name(self) -> str:
        return f"vitprune-{self.model}-{self.study_key()}"
