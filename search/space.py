"""From a SearchSpace and a model to Optuna parameters and back to PruneConfigs.

Parameters are named after what they set: `keep_3` (top-k keep ratio at block 3), `threshold_3`,
`merge_0-2` (ToMe merge count at each of blocks 0..2), `heads_0-2` / `mlp_0-2` (heads or MLP
channels of blocks 0..2, when blocks are grouped), `score`, `package_token`. A parameter at its
"keep everything" end (keep 1.0, threshold 0, merge 0, all heads) leaves that part dense, so the
dense model is a point of the space. With top-k and merging both searched, a block whose keep
ratio is below 1 runs top-k and every other block merges its group's count.
"""

from __future__ import annotations

from collections.abc import Iterator

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pruning import BlockConfig, MergeReduction, NoReduction, PruneConfig, ThresholdReduction, TopKReduction
from pruning.spec import ModelSpec
from search.job import KEEP_STEP, MERGE_STEP, THRESHOLD_STEP, SearchSpace

__all__ = ["SpaceError", "TrialSpace"]

BASELINE_KEEPS = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Warm-start keep ratios: the EViT-style uniform top-k configs every search must beat."""
BASELINE_BLOCKS = (3, 6, 9)
BASELINE_RATIOS = (0.5, 0.75)
"""Warm-start uniform head / MLP ratios."""
BASELINE_MERGES = (4, 8, 12, 16)
"""Warm-start ToMe schedules: the same merge count at every block, as ToMe itself runs (DeiT-Tiny's
usual r=13 at all twelve blocks about halves its latency)."""


class SpaceError(ValueError):
    """A search space that does not fit the model."""


class TrialSpace:
    """The search space of one job on one model: distributions, configs and warm starts."""

    def __init__(self, space: SearchSpace, spec: ModelSpec) -> None:
        self.space = space
        self.spec = spec
        depth = len(spec.blocks)
        bad = [b for b in space.token_blocks if b >= depth or not spec.blocks[b].can_reduce_tokens]
        if space.tokens in ("topk", "threshold", "topk+merge") and bad:
            raise SpaceError(f"token_blocks {bad}: {spec.name} has blocks 0..{depth - 1} that can reduce tokens")
        if space.merges and spec.family != "vit":
            raise SpaceError(
                f"tokens={space.tokens}: merging is supported on plain ViT/DeiT models, not on {spec.name}"
                " (it pools a token grid that merged tokens no longer form); use tokens=topk"
            )
        self.groups = _groups(depth, space.group)
        # Block index -> the merge parameter that sets it; blocks that cannot reduce tokens never merge.
        self.merge_names: dict[int, str] = {}
        for group in _groups(depth, space.merge_group) if space.merges else ():
            for index in group:
                if spec.blocks[index].can_reduce_tokens:
                    self.merge_names[index] = f"merge_{_name(group)}"
        self.distributions = dict(self._distributions())

    # -- distributions --------------------------------------------------------------------------

    def _distributions(self) -> Iterator[tuple[str, BaseDistribution]]:
        space = self.space
        if space.topk:
            for b in space.token_blocks:
                yield f"keep_{b}", FloatDistribution(space.keep_min, 1.0, step=KEEP_STEP)
        elif space.tokens == "threshold":
            top = round(space.threshold_max / THRESHOLD_STEP) * THRESHOLD_STEP
            for b in space.token_blocks:
                yield f"threshold_{b}", FloatDistribution(0.0, top, step=THRESHOLD_STEP)
        for name in dict.fromkeys(self.merge_names.values()):
            first = min(i for i, n in self.merge_names.items() if n == name)
            # More than half of a block's tokens never merge (MergeReduction.kept): a larger r adds nothing.
            half = self.spec.blocks[first].tokens_in // 2
            top = max(MERGE_STEP, min(space.merge_max, half) // MERGE_STEP * MERGE_STEP)
            yield name, IntDistribution(0, top, step=MERGE_STEP)
        for group in self.groups:
            dense = self.spec.blocks[group[0]]
            if space.heads:
                low = max(1, round(dense.heads * space.min_head_ratio))
                yield f"heads_{_name(group)}", IntDistribution(low, dense.heads)
            if space.mlp:
                step = space.round_to
                low = max(step, round(dense.mlp_hidden * space.min_mlp_ratio / step) * step)
                top = dense.mlp_hidden // step * step
                yield f"mlp_{_name(group)}", IntDistribution(min(low, top), top, step=step)
        # Score kind and package token only act where tokens are dropped by score, never on merges.
        if len(space.score) > 1 and space.scores_tokens:
            yield "score", CategoricalDistribution(list(space.score))
        if space.package_token == "search" and space.scores_tokens:
            yield "package_token", CategoricalDistribution([False, True])

    def suggest(self, trial: optuna.Trial) -> PruneConfig:
        params = {name: _suggest(trial, name, dist) for name, dist in self.distributions.items()}
        return self.config(params)

    # -- configs ---------------------------------------------------------------------------------

    def config(self, params: dict) -> PruneConfig:
        """The PruneConfig of a full set of parameter values."""
        space, spec = self.space, self.spec
        blocks = []
        for index, dense in enumerate(spec.blocks):
            group = _name(next(g for g in self.groups if index in g))
            heads = params.get(f"heads_{group}", dense.heads)
            hidden = params.get(f"mlp_{group}", dense.mlp_hidden)
            if hidden >= dense.mlp_hidden // space.round_to * space.round_to:
                hidden = dense.mlp_hidden  # the top of the grid is the dense width
            blocks.append(BlockConfig(heads=heads, mlp_hidden=hidden, tokens=self._tokens(params, index)))
        # Without a reduction by score (none, or merges only), score kind and package token change
        # nothing: one config, one key.
        scored = any(b.tokens.kind in ("topk", "threshold") for b in blocks)
        package = params.get("package_token", space.package_token == "on")
        return PruneConfig(
            blocks=tuple(blocks),
            score=params.get("score", space.score[0]) if scored else space.score[0],
            package_token=bool(package) and scored,
            round_to=space.round_to,
        )

    def _tokens(self, params: dict, index: int) -> NoReduction | TopKReduction | ThresholdReduction | MergeReduction:
        keep = params.get(f"keep_{index}")
        if keep is not None and keep < 1.0:
            return TopKReduction(keep_ratio=round(keep, 4))
        threshold = params.get(f"threshold_{index}")
        if threshold is not None and threshold > 0.0:
            return ThresholdReduction(threshold=round(threshold, 4))
        r = params.get(self.merge_names.get(index, ""))
        if r:
            return MergeReduction(r=int(r))
        return NoReduction()

    def dense_params(self) -> dict:
        params = {}
        for name, dist in self.distributions.items():
            if name.startswith("keep_"):
                params[name] = 1.0
            elif name.startswith("threshold_"):
                params[name] = 0.0
            elif name.startswith("merge_"):
                params[name] = 0
            elif isinstance(dist, IntDistribution):
                params[name] = dist.high
            elif name == "package_token":
                params[name] = False
            else:
                params[name] = dist.choices[0]
        return params

    def cheapest_params(self) -> dict:
        """The parameters that remove the most: the lower bound of any trial's latency."""
        params = self.dense_params()
        for name, dist in self.distributions.items():
            if name.startswith(("threshold_", "merge_")):
                params[name] = dist.high
            elif name.startswith("keep_") or isinstance(dist, IntDistribution):
                params[name] = dist.low
        if self.space.tokens == "topk+merge":
            self._fewest_tokens(params)
        return params

    def _fewest_tokens(self, params: dict) -> None:
        """Mixed mode: at each top-k block, top-k or the group's merge, whichever leaves fewer tokens.

        Top-k at keep_min is not always the cheaper one: a high keep_min drops fewer tokens than a
        full merge. Counts only fall block by block, so the fewest at every block is the fewest overall.
        """
        n = self.spec.blocks[0].tokens_in
        for index in range(len(self.spec.blocks)):
            r = params.get(self.merge_names.get(index, ""))
            merged = MergeReduction(r=r).kept(n) if r else n
            keep = params.get(f"keep_{index}")
            if keep is not None and keep < 1.0:
                kept = TopKReduction(keep_ratio=keep).kept(n)
                if merged < kept:
                    params[f"keep_{index}"] = 1.0  # keep 1 hands the block to the merge
                n = min(kept, merged)
            else:
                n = merged

    def warm_starts(self) -> list[dict]:
        """Dense first, then the obvious baselines: uniform top-k at 3/6/9, ToMe's uniform merge count at
        every block, uniform head / MLP ratios."""
        dense = self.dense_params()
        starts = [dense]
        keeps = [n for n in self.distributions if n.startswith("keep_")]
        at = [n for n in keeps if int(n.split("_")[1]) in BASELINE_BLOCKS] or keeps
        for keep in BASELINE_KEEPS:
            if keeps and keep >= self.space.keep_min:
                starts.append(dense | {n: keep for n in at})
        merges = [n for n in self.distributions if n.startswith("merge_")]
        for r in BASELINE_MERGES if merges else ():
            # Keep ratios stay at 1: every block merges, ToMe's own schedule. A count over a group's
            # range is capped there (small models); the duplicates this makes are dropped below.
            starts.append(dense | {n: min(r, self.distributions[n].high) for n in merges})
        for kind in ("heads", "mlp"):
            names = [n for n in self.distributions if n.startswith(f"{kind}_")]
            for ratio in BASELINE_RATIOS if names else ():
                starts.append(dense | {n: self._at_ratio(self.distributions[n], ratio) for n in names})
        unique = []
        for params in starts:
            if params not in unique:
                unique.append(params)
        return unique

    @staticmethod
    def _at_ratio(dist: IntDistribution, ratio: float) -> int:
        step = dist.step
        value = round(dist.high * ratio / step) * step
        return int(min(dist.high, max(dist.low, value)))


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


def _groups(depth: int, size: int) -> list[tuple[int, ...]]:
    return [tuple(range(i, min(i + size, depth))) for i in range(0, depth, size)]


def _name(group: tuple[int, ...]) -> str:
    return str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"
