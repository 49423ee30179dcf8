"""vitprune's library layer: physically pruned timm ViTs, their evaluation and export.

Names are imported on first use (PEP 562), so that `import pruning.config` or the token-op registry
does not pull in torch: the job schema and the command line's client commands use them without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning._lazy import lazy_exports

_EXPORTS = {
    "BlockConfig": "pruning.config",
    "ConfigError": "pruning.config",
    "PruneConfig": "pruning.config",
    "NoReduction": "pruning.tokens",
    "TokenOp": "pruning.tokens",
    "token_op": "pruning.tokens",
    "UnsupportedModelError": "pruning.families",
    "Importance": "pruning.importance",
    "PrunedViT": "pruning.model",
    "describe": "pruning.model",
    "prune_model": "pruning.model",
    "BlockSpec": "pruning.spec",
    "ModelSpec": "pruning.spec",
}

__all__ = [
    "BlockConfig",
    "BlockSpec",
    "ConfigError",
    "Importance",
    "ModelSpec",
    "NoReduction",
    "PruneConfig",
    "PrunedViT",
    "TokenOp",
    "UnsupportedModelError",
    "describe",
    "prune_model",
    "token_op",
]

if TYPE_CHECKING:
    from pruning.config import BlockConfig, ConfigError, PruneConfig
    from pruning.families import UnsupportedModelError
    from pruning.importance import Importance
    from pruning.model import PrunedViT, describe, prune_model
    from pruning.spec import BlockSpec, ModelSpec
    from pruning.tokens import NoReduction, TokenOp, token_op


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
