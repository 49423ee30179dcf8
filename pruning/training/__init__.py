"""Recovery training: a pruned model trained back towards its dense teacher by distillation.

- `config`: `FineTuneConfig`, the recipe (function matching: strong augmentation, AdamW, warm-up and
  cosine, EMA, early stopping on held-out images);
- `augment`: the augmented views (random crops, RandAugment, mixup / cutmix from `timm.data`);
- `loop`: `fine_tune`, the training loop (CPU, CUDA, several processes with torch.distributed);
- `thresholds` (recipe in `thresholds_config`): `learn_thresholds`, token thresholds trained with the
  weights under a latency budget (soft masks, a differentiable latency term), then made hard.

The "fine-tune" model stage (`pruning.stages.finetune`) and `vitprune finetune` run it. Names are
imported on first use, so reading the recipe (`FineTuneConfig`) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning._lazy import lazy_exports

if TYPE_CHECKING:
    from pruning.training.config import FineTuneConfig
    from pruning.training.loop import CHECKPOINT_FILE, FineTuneResult, distillation_loss, fine_tune
    from pruning.training.thresholds import LearnedThresholds, learn_thresholds
    from pruning.training.thresholds_config import ThresholdConfig

_HOMES = {
    "FineTuneConfig": "pruning.training.config",
    "CHECKPOINT_FILE": "pruning.training.loop",
    "FineTuneResult": "pruning.training.loop",
    "distillation_loss": "pruning.training.loop",
    "fine_tune": "pruning.training.loop",
    "LearnedThresholds": "pruning.training.thresholds",
    "learn_thresholds": "pruning.training.thresholds",
    "ThresholdConfig": "pruning.training.thresholds_config",
}

__all__ = [
    "CHECKPOINT_FILE",
    "FineTuneConfig",
    "FineTuneResult",
    "LearnedThresholds",
    "ThresholdConfig",
    "distillation_loss",
    "fine_tune",
    "learn_thresholds",
]


__getattr__ = lazy_exports(__name__, _HOMES, globals())
