"""From a SearchSpace and a model to Optuna parameters and back to PruneConfigs.

Every token op says how it is searched (`SearchAxis` of `pruning.tokens`): parameters named after
what they set, e.g. `keep_3` (top-k keep ratio at block 3) or `merge_0-2` (merge count at each of
blocks 0..2); besides them `heads_0-2` / `mlp_0-2` (heads or MLP channels of blocks 0..2, when
blocks are grouped), `score`, `package_token`, `precision` when more than one is searched and
`float_blocks` (how many of the most sensitive blocks a quantised trial keeps float) when asked for (the
PruneConfig is the structure; the precision is the trial's other half, `TrialSpace.precision`). A
parameter at its "keep everything" end (`off`, all heads) leaves that part dense, so the dense model
is a point of the space. With two token ops searched, a block where the first one reduces runs it,
and every other block runs the second.
"""

from __future__ import annotations

from collections.abc import Iterator

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pruning import BlockConfig, NoReduction, PruneConfig, TokenOp
from pruning.spec import ModelSpec
from search.job import FLOAT, SearchSpace

__all__ = ["FLOAT_BLOCKS", "SpaceError", "TrialSpace"]

FLOAT_BLOCKS = "float_blocks"
"""The parameter of how many blocks a quantised trial keeps float (`SearchSpace.keep_float`)."""

BASELINE_RATIOS = (0.5, 0.75)
"""Warm-start uniform head / MLP ratios."""


class SpaceError(ValueError):
    """A search space that does not fit the model."""


class TrialSpace:
    """The search space of one job on one model: distributions, configs and warm starts."""

    def __init__(self, space: SearchSpace, spec: ModelSpec) -> None:
        self.space = space
        self.spec = spec
        self.ops = space.ops
        depth = len(spec.blocks)
        bad = [b for b in space.token_blocks if b >= depth or not spec.blocks[b].can_reduce_tokens]
        if any(op.axis.per == "block" for op in self.ops) and bad:
            raise SpaceError(f"token_blocks {bad}: {spec.name} has blocks 0..{depth - 1} that can reduce tokens")
        for op in self.ops:
            if not op.grid_ok and spec.family != "vit":
                raise SpaceError(
                    f"tokens={space.tokens}: {op.kind_name()} is supported on plain ViT/DeiT models, not on"
                    f" {spec.name} (it pools a token grid that these tokens no longer form); use tokens=topk"
                )
        if space.keep_float >= depth:
            raise SpaceError(f"keep_float {space.keep_float}: {spec.name} has {depth} blocks; keep fewer float")
        self.groups = _groups(depth, space.group)
        # Op kind -> block index -> the parameter that sets the op there.
        self.op_params: dict[str, dict[int, str]] = {op.kind_name(): self._op_params(op) for op in self.ops}
        self._op_of = {name: op for op in self.ops for name in self.op_params[op.kind_name()].values()}
        self.distributions = dict(self._distributions())

    def _op_params(self, op: type[TokenOp]) -> dict[int, str]:
        axis, blocks = op.axis, self.spec.blocks
        if axis.per == "block":
            return {b: f"{axis.prefix}_{b}" for b in self.space.token_blocks}
        names = {}
        for group in _groups(len(blocks), getattr(self.space, axis.group_field)):
            for index in group:
                if blocks[index].can_reduce_tokens:  # blocks that cannot reduce tokens never do
                    names[index] = f"{axis.prefix}_{_name(group)}"
        return names

    # -- distributions --------------------------------------------------------------------------

    def _distributions(self) -> Iterator[tuple[str, BaseDistribution]]:
        space = self.space
        for op in self.ops:
            params = self.op_params[op.kind_name()]
            for name in dict.fromkeys(params.values()):
                first = min(i for i, n in params.items() if n == name)
                low, high, step = op.search_range(space, self.spec.blocks[first])
                kind = IntDistribution if isinstance(step, int) else FloatDistribution
                yield name, kind(low, high, step=step)
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
        # Score kind and package token only act where tokens are dropped by score.
        if len(space.score) > 1 and space.scores_tokens:
            yield "score", CategoricalDistribution(list(space.score))
        if space.package_token == "search" and space.scores_tokens:
            yield "package_token", CategoricalDistribution([False, True])
        if len(space.precisions) > 1:
            yield "precision", CategoricalDistribution(list(space.precisions))
        if space.keep_float:
            yield FLOAT_BLOCKS, IntDistribution(0, space.keep_float)

    def suggest(self, trial: optuna.Trial) -> PruneConfig:
        params = {name: _suggest(trial, name, dist) for name, dist in self.distributions.items()}
        return self.config(params)

    def precision(self, params: dict) -> str:
        """The precision a full set of parameter values quantises its config to."""
        return params.get("precision", self.space.precisions[0])

    def float_count(self, params: dict) -> int:
        """How many blocks a full set of parameter values keeps float in its quantised model (0 for fp32)."""
        return 0 if self.precision(params) == FLOAT else params.get(FLOAT_BLOCKS, 0)

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
        # Without a reduction by score (none, or ops that need no scores), score kind and package
        # token change nothing: one config, one key.
        scored = any(b.tokens.needs == "scores" for b in blocks)
        package = params.get("package_token", space.package_token == "on")
        return PruneConfig(
            blocks=tuple(blocks),
            score=params.get("score", space.score[0]) if scored else space.score[0],
            package_token=bool(package) and scored,
            round_to=space.round_to,
        )

    def _tokens(self, params: dict, index: int) -> TokenOp:
        """The first searched op that reduces at block `index`."""
        for op in self.ops:
            value = params.get(self.op_params[op.kind_name()].get(index, ""))
            if value is not None and (made := op.from_search(value)) is not None:
                return made
        return NoReduction()

    def dense_params(self) -> dict:
        params = {}
        for name, dist in self.distributions.items():
            if name in self._op_of:
                params[name] = self._op_of[name].axis.off
            elif name == FLOAT_BLOCKS:  # the whole model in the precision: the plain baseline
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
            if name in self._op_of:
                params[name] = dist.high if self._op_of[name].axis.cheapest == "high" else dist.low
            elif isinstance(dist, IntDistribution):
                params[name] = dist.low
        if len(self.ops) > 1:
            self._fewest_tokens(params)
        return params

    def _fewest_tokens(self, params: dict) -> None:
        """Mixed mode: at each block, whichever searched op leaves the fewest tokens.

        The first op at its cheapest end is not always the cheaper one (a high keep_min drops fewer
        tokens than a full merge); where it loses, it is turned off, handing the block to the next.
        Counts only fall block by block, so the fewest at every block is the fewest overall.
        """
        n = self.spec.blocks[0].tokens_in
        for index in range(len(self.spec.blocks)):
            candidates = []
            for op in self.ops:
                name = self.op_params[op.kind_name()].get(index)
                if name is not None and (made := op.from_search(params[name])) is not None:
                    candidates.append((made.kept(n), op, name))
            if not candidates:
                continue
            fewest = min(kept for kept, _, _ in candidates)
            for kept, op, name in candidates:
                if kept == fewest:
                    break
                params[name] = op.axis.off
            n = fewest

    def warm_starts(self) -> list[dict]:
        """Dense first, then the obvious baselines: each token op's uniform configs (uniform top-k at
        3/6/9, ToMe's uniform merge count at every block), uniform head / MLP ratios; each at every
        searched precision."""
        dense = self.dense_params()
        starts = [dense]
        for op in self.ops:
            axis, params = op.axis, self.op_params[op.kind_name()]
            names = list(dict.fromkeys(params.values()))
            at = [params[b] for b in axis.baseline_blocks if b in params] or names
            for value in axis.baselines if names else ():
                # A value under a parameter's range is not a baseline of this space; one over it is
                # capped there (small models); the duplicates this makes are dropped below.
                if value >= min(self.distributions[n].low for n in at):
                    starts.append(dense | {n: min(value, self.distributions[n].high) for n in at})
        for kind in ("heads", "mlp"):
            names = [n for n in self.distributions if n.startswith(f"{kind}_")]
            for ratio in BASELINE_RATIOS if names else ():
                starts.append(dense | {n: self._at_ratio(self.distributions[n], ratio) for n in names})
        if "precision" in self.distributions:
            starts = [params | {"precision": p} for params in starts for p in self.space.precisions]
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
