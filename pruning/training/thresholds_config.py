"""ThresholdConfig: how per-block token thresholds are learned under a latency budget.

The weights train by the recovery recipe (`FineTuneConfig`: distillation from the dense model on
strongly augmented views, AdamW, warm-up and cosine, EMA); the fields here add what the thresholds
need: where they sit, how soft their masks are while training, how strongly the latency term pulls,
and how the latency is made differentiable. See `pruning.training.thresholds`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pruning.training.config import FineTuneConfig

__all__ = ["ThresholdConfig"]


class ThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    blocks: tuple[int, ...] = Field(default=(3, 6, 9), min_length=1, description="blocks that learn a threshold")
    recipe: FineTuneConfig = Field(
        default_factory=FineTuneConfig,
        description="the weights' training recipe; its early stopping (patience) is not used: the held-out KL"
        " alone would favour low thresholds, so every step runs and the thresholds are calibrated at the end",
    )
    tau: float = Field(
        default=0.1, gt=0, le=10.0, description="softness of the keep weights, in units of score / mean score"
    )
    latency_weight: float = Field(default=10.0, ge=0, description="lambda of lambda x (latency / budget - 1)^2")
    threshold_lr: float = Field(default=0.01, gt=0, le=10.0, description="peak learning rate of the thresholds")
    init: float | None = Field(
        default=None,
        gt=0,
        description="starting threshold at every block (None: the common threshold that meets the budget)",
    )
    smooth_max: float = Field(
        default=2.0, gt=0, description="temperature (tokens) of the smooth maximum that prices a padded batch"
    )
    fd_step: float = Field(default=4.0, gt=0, description="tokens either side of the finite-difference slopes")
    calibration_images: int = Field(
        default=512, ge=1, description="training images the hard thresholds are calibrated on (spread over them)"
    )
    calibration_steps: int = Field(default=12, ge=1, le=60, description="bisection steps of the calibration")

    @field_validator("blocks")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if list(value) != sorted(set(value)) or value[0] < 0:
            raise ValueError("must be distinct non-negative block indices in increasing order")
        return value
