"""Predicted latency of a PruneConfig on a device: the sum of its parts, read from a latency table.

A config runs as: patch embedding; per block the attention half at the tokens entering the block
(explicit attention with scores where the block reduces tokens by score, key masks once a per-image
op has padded a batch of several images), the block's token op, the MLP half at the tokens that
survive; then the classifier. Each part is looked up in the table, interpolated between grid points
(bilinear in tokens x heads, tokens x channels, and over the two axes of each token op's entries;
linear between batch sizes), and flagged when it lies outside the measured grid. What a token op
costs and how it changes the tokens that flow on is its pricing module's (`latency_models.profiling.ops`);
this module follows the flow. Blocks at token counts off the grid's multiples of 8 cost what a few
measured off-grid counts say they add; each reducing block what the reducing chains timed whole
cost beyond their parts; and every block is scaled by the whole dense model timed as one over its
parts (`_blocks_scale`). Last, a table calibrated end to end for the model's shape and batch adds
what whole pruned models were measured to cost beyond all that (`latency_models.calibration`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from latency_models.calibration.model import calibration_for, correct
from latency_models.interpolate import expand_1d, expand_2d
from latency_models.profiling import Shape, offgrid_tokens
from latency_models.profiling.ops import ENTRY_KINDS, PRICINGS, TokenFlow, pricing
from latency_models.schema import Calibration, LatencyTable
from pruning.config import PruneConfig
from pruning.spec import ModelSpec

__all__ = ["CoverageError", "LatencyPredictor", "Prediction", "shape_of"]


class CoverageError(ValueError):
    """The table has no entries for this model shape (embed dim, head dim, ...) at all."""


def shape_of(spec: ModelSpec) -> Shape:
    """The profiler's view of a dense model: one shape for every block (plain ViT/DeiT)."""
    block = spec.blocks[0]
    if spec.family != "vit" or any(b != block for b in spec.blocks):
        raise CoverageError(f"{spec.name}: latency tables price plain ViT/DeiT models with uniform blocks")
    side = round(block.tokens_in**0.5)
    return Shape(
        embed_dim=block.embed_dim,
        heads=block.heads,
        head_dim=block.head_dim,
        mlp_hidden=block.mlp_hidden,
        tokens=spec.num_prefix_tokens + block.tokens_in,
        prefix=spec.num_prefix_tokens,
        image_size=spec.image_size[0],
        patch_size=spec.image_size[0] // side,
        num_classes=spec.num_classes,
    )


@dataclass(frozen=True)
class Prediction:
    ms: float
    extrapolated: bool
    """True when some part lies outside the table's grid (tokens, widths or batch size)."""
    parts: dict[str, float] = field(default_factory=dict)
    """Milliseconds per kind of part (embed, attention, the entry kind of each token op, mlp, head,
    and the end-to-end `calibration`); filled by `breakdown`."""
    blocks_ms: float = 0.0
    """The blocks' share of `ms` before calibration (what `Calibration.scale` multiplies)."""
    reductions: tuple[tuple[str, int], ...] = ()
    """(token op kind, tokens entering the block) of every block that reduces tokens, in order."""
    calibrated: bool = False
    """True when the table's end-to-end calibration for this shape and batch was applied."""
    block_ms: tuple[float, ...] = ()
    """Each block's share of `blocks_ms`, in block order (what a mixed-precision model prices block by
    block: `latency_models.mixed`)."""


@dataclass
class _Lookup:
    """One (model shape, batch) expanded to dense arrays: value and extrapolation mask per part."""

    embed: float
    head: np.ndarray
    chain: np.ndarray  # [tokens]: what a block costs in a chain beyond (or below) its halves timed alone
    reducing: dict[str, np.ndarray]  # a token op's correction -> [tokens in]: a reducing block's in-model extra
    attention: dict[tuple[bool, bool], np.ndarray]  # (scored, masked) -> [tokens, heads]
    mlp: np.ndarray  # [tokens, hidden]
    ops: dict[str, dict]  # token-op entry kind -> {variant: [tokens in, second axis]}, as its `arrays` builds
    outside: dict[str, np.ndarray]
    blocks_scale: float = 1.0  # the whole dense model timed as one over its parts (`_blocks_scale`)
    calibration: Calibration | None = None  # the end-to-end correction for this shape and batch
    batch_extrapolated: bool = False
    missing: dict[str, str] = field(default_factory=dict)
    """Entry kinds the table lacks (made before they were priced): the CoverageError for a config using them."""

    def entries(self, op: str) -> dict:
        """The arrays of token-op entry kind `op`; CoverageError where the table has none."""
        if op not in self.ops:
            raise CoverageError(self.missing[op])
        return self.ops[op]

    def blend(self, other: _Lookup, weight: float, extrapolated: bool) -> _Lookup:
        """(1 - weight) * self + weight * other, part by part (linear interpolation in batch size)."""

        def mix(a, b):
            return a * (1.0 - weight) + b * weight

        return _Lookup(
            embed=mix(self.embed, other.embed),
            head=mix(self.head, other.head),
            chain=mix(self.chain, other.chain),
            reducing={k: mix(v, other.reducing[k]) for k, v in self.reducing.items()},
            attention={k: mix(v, other.attention[k]) for k, v in self.attention.items() if k in other.attention},
            mlp=mix(self.mlp, other.mlp),
            ops={
                op: {k: mix(v, other.ops[op][k]) for k, v in arrays.items() if k in other.ops[op]}
                for op, arrays in self.ops.items()
                if op in other.ops
            },
            outside={k: v | other.outside[k] for k, v in self.outside.items() if k in other.outside},
            blocks_scale=mix(self.blocks_scale, other.blocks_scale),
            batch_extrapolated=extrapolated,
            missing={**other.missing, **self.missing},
        )


class LatencyPredictor:
    """Predicts milliseconds per forward pass of pruned configs of one table's device."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self._by_op: dict[str, list] = {}
        for entry in table.entries:
            self._by_op.setdefault(entry.op, []).append(entry)
        self._cache: dict[tuple, _Lookup] = {}

    @property
    def device(self) -> str:
        return self.table.device.name

    def predict(
        self, config: PruneConfig, spec: ModelSpec, batch: int = 1, kept_tokens: Sequence[float] | None = None
    ) -> Prediction:
        """Latency of one forward pass of `batch` images.

        `kept_tokens`: patch tokens kept at each token-reducing block, in block order. Needed for
        threshold reductions, whose counts depend on the images: give the width a batch really
        runs at (in a batch of several images, the longest image's count). Top-k counts follow
        from the config.
        """
        return self._run(config, spec, batch, kept_tokens, None)

    def breakdown(
        self, config: PruneConfig, spec: ModelSpec, batch: int = 1, kept_tokens: Sequence[float] | None = None
    ) -> Prediction:
        """Like `predict`, with the milliseconds of each kind of part."""
        kinds = ("embed", "attention", *ENTRY_KINDS, "mlp", "head", "calibration")
        parts = dict.fromkeys(kinds, 0.0)
        return self._run(config, spec, batch, kept_tokens, parts)

    def _run(self, config, spec, batch, kept_tokens, parts) -> Prediction:
        look = self.lookup(spec, batch)
        reducing = sum(b.reduces_tokens for b in config.blocks)
        if kept_tokens is not None and len(kept_tokens) != reducing:
            raise ValueError(f"kept_tokens lists {len(kept_tokens)} counts but the config reduces tokens at {reducing}")
        prefix, n_patch = spec.num_prefix_tokens, spec.blocks[0].tokens_in
        flow = TokenFlow(prefix=prefix, tokens=prefix + n_patch, n_patch=n_patch)
        out = look.outside
        extrapolated = look.batch_extrapolated
        total = 0.0  # the blocks
        reduction = 0
        reductions = []
        per_block = []
        for cfg in config.blocks:
            before = total
            op = cfg.tokens
            # A block reducing tokens by score runs explicit attention that returns them; one that needs
            # keys (a merge) runs fused attention. Once tokens were merged, every attention adds
            # log(size) to its keys, and is priced as an unmasked one. Measured (DeiT-Tiny shapes,
            # 2 threads): the bias adds 0.6-1.5% to fused attention and 0.7-2.6% to attention with
            # scores at batch 1 (17 to 197 tokens), within the +-2% noise fused at batch 32; with
            # scores at batch 32 and 197 tokens its add over the logits takes 0.41 ms of ~23 ms, while
            # the masked entries' masked_fill takes 1.84 ms (they would overstate it).
            attn = look.attention[(op.needs == "scores", flow.masked)]
            total += (cost := attn[flow.tokens, cfg.heads] + look.chain[flow.tokens])
            extrapolated |= bool(out["attention"][flow.tokens, cfg.heads])
            if parts is not None:
                parts["attention"] += cost
            if cfg.reduces_tokens:
                if kept_tokens is not None:
                    kept = max(1, min(flow.n_patch, math.ceil(kept_tokens[reduction])))
                elif op.per_image:
                    raise ValueError(
                        f"this config keeps tokens by {op.kind}: pass kept_tokens (the measured token counts)"
                    )
                else:
                    kept = op.kept(flow.n_patch)
                reduction += 1
                reductions.append((op.kind, flow.tokens))
                priced = pricing(op.kind)
                cost, outside = priced.price(look, flow, kept, config.package_token)
                total += cost
                extrapolated |= outside
                if parts is not None:
                    parts[priced.entry.op] += cost
                if op.per_image and batch > 1:  # a padded batch: attention masks its keys from here on
                    flow.masked = True
            total += (cost := look.mlp[flow.tokens, cfg.mlp_hidden])
            extrapolated |= bool(out["mlp"][flow.tokens, cfg.mlp_hidden])
            if parts is not None:
                parts["mlp"] += cost
            per_block.append(look.blocks_scale * (total - before))
        blocks = look.blocks_scale * total
        total = look.embed + blocks + look.head[flow.tokens]
        reductions = tuple(reductions)
        correction = correct(look.calibration, blocks, reductions, prefix + n_patch) if look.calibration else 0.0
        if parts is not None:
            for part in ("attention", *ENTRY_KINDS, "mlp"):
                parts[part] *= look.blocks_scale
            parts["embed"], parts["head"] = look.embed, float(look.head[flow.tokens])
            parts["calibration"] = correction
        return Prediction(
            ms=float(total + correction),
            extrapolated=extrapolated,
            parts=parts or {},
            blocks_ms=float(blocks),
            reductions=reductions,
            calibrated=look.calibration is not None,
            block_ms=tuple(float(ms) for ms in per_block),
        )

    def probe(self, spec: ModelSpec, batch: int) -> tuple[dict, float] | None:
        """The table's entry for `spec`'s dense MLP half at all tokens and `batch` (key, ms), if the
        table was measured: a fixed workload to re-time later, the same way, to see how much faster
        or slower the machine runs now than when the table was made."""
        if self.table.device.kind == "analytic":
            return None
        block = spec.blocks[0]
        wanted = (batch, block.embed_dim, spec.num_prefix_tokens + block.tokens_in, block.mlp_hidden)
        for e in self._by_op.get("mlp", []):
            if (e.batch, e.embed_dim, e.tokens, e.mlp_hidden) == wanted:
                return e.model_dump(exclude={"median_ms", "spread_ms"}), e.median_ms
        return None

    def lookup(self, spec: ModelSpec, batch: int) -> _Lookup:
        """The dense lookup arrays for `spec` at `batch`, built once and cached."""
        if batch < 1:
            raise ValueError(f"batch size must be >= 1, got {batch}")
        key = (_shape_key(spec), batch)
        if key not in self._cache:
            self._cache[key] = self._build(spec, batch)
        return self._cache[key]

    def _build(self, spec: ModelSpec, batch: int) -> _Lookup:
        shape_of(spec)  # refuses, with the reason, models the tables cannot price
        batches = sorted({e.batch for e in self._by_op.get("attention", []) if e.embed_dim == spec.blocks[0].embed_dim})
        if not batches:
            raise CoverageError(self._missing(spec, f"embed_dim={spec.blocks[0].embed_dim}"))
        if batch in batches:
            return self._build_at(spec, batch)
        if len(batches) == 1:
            # One measured batch size: assume cost proportional to the batch (flagged as extrapolated).
            return _scaled(self._build_at(spec, batches[0]), batch / batches[0])
        below = [b for b in batches if b < batch]
        above = [b for b in batches if b > batch]
        lo, hi = (below[-1], above[0]) if below and above else (batches[-2], batches[-1]) if below else batches[:2]
        weight = (batch - lo) / (hi - lo)
        return self._build_at(spec, lo).blend(self._build_at(spec, hi), weight, not (below and above))

    def _build_at(self, spec: ModelSpec, batch: int) -> _Lookup:
        shape = shape_of(spec)
        dim, heads, head_dim, hidden = shape.embed_dim, shape.heads, shape.head_dim, shape.mlp_hidden
        size_n = shape.tokens + 2  # + a package token after keeping every patch, + index 0
        where = f"embed_dim={dim}, batch={batch}"

        def rows(op: str, **match) -> list:
            found = [
                e
                for e in self._by_op.get(op, [])
                if e.batch == batch and e.embed_dim == dim and all(getattr(e, k) == v for k, v in match.items())
            ]
            if not found:
                detail = "".join(f", {k}={v}" for k, v in match.items())
                raise CoverageError(self._missing(spec, f"{op} entries with {where}{detail}"))
            return found

        outside: dict[str, np.ndarray] = {}
        attention = {}
        for scored in (False, True):
            for masked in (False, True):
                try:
                    found = rows("attention", head_dim=head_dim, scored=scored, masked=masked)
                except CoverageError:
                    if masked and batch == 1:
                        continue  # batches of one image are never padded
                    raise
                attention[(scored, masked)], mask = _grid2(found, "tokens", "heads", size_n, heads + 1)
                outside["attention"] = mask
        for scored in (False, True):
            attention.setdefault((scored, True), attention[(scored, False)])
        mlp, outside["mlp"] = _grid2(rows("mlp"), "tokens", "mlp_hidden", size_n, hidden + 1)
        ops, missing = {}, {}
        for kind in ENTRY_KINDS.values():  # each token op's own entries, as its pricing module reads them
            try:
                ops[kind.op], outside[kind.op] = kind.arrays(rows, _grid2, shape, size_n)
            except CoverageError as error:
                if kind.absent is None:
                    raise
                missing[kind.op] = f"{error}. {kind.absent}"  # fine unless a config uses the op
        head_rows = rows("head", num_classes=spec.num_classes)
        xs, values = _series(head_rows, "tokens")
        head, _ = expand_1d(xs, values, size_n)
        embed = rows("embed", image_size=shape.image_size, patch_size=shape.patch_size)
        chain = np.zeros(size_n)
        offgrid = np.ones(size_n)
        chained = [e for e in self._by_op.get("chain", []) if e.batch == batch and e.embed_dim == dim]
        if chained:  # optional: analytic devices have no such effects
            probes = set(offgrid_tokens(shape.tokens))
            xs, values = _series([e for e in chained if e.tokens not in probes], "tokens")
            curve, _ = expand_1d(xs, values, size_n)
            # Signed: at large batches blocks run back to back can cost less than their halves
            # timed alone (the cold-weight copies of the halves overstate memory traffic there).
            chain = curve - attention[(False, False)][:, heads] - mlp[:, hidden]
            measured = {e.tokens: e.median_ms for e in chained if e.tokens in probes}
            offgrid = _offgrid_factor(measured, curve, shape.tokens)
        look = _Lookup(embed[0].median_ms, head, chain, {}, attention, mlp, ops, outside, missing=missing)
        # The composites are compared with on-grid parts, before blocks off the grid are scaled.
        look.blocks_scale = self._blocks_scale(spec, batch, look)
        look.reducing = self._reducing(spec, batch, look)
        look.calibration = calibration_for(self.table, spec, batch)
        look.attention = {k: v * offgrid[:, None] for k, v in attention.items()}
        look.mlp, look.chain = mlp * offgrid[:, None], chain * offgrid
        return look

    def _composites(self, op: str, spec: ModelSpec, batch: int) -> list:
        """The table's `op` entries (model, reducing_chain) of `spec`'s dense block shape at `batch`."""
        block = spec.blocks[0]
        wanted = (batch, block.embed_dim, block.heads, block.head_dim, block.mlp_hidden)
        return [
            e for e in self._by_op.get(op, []) if (e.batch, e.embed_dim, e.heads, e.head_dim, e.mlp_hidden) == wanted
        ]

    def _blocks_scale(self, spec: ModelSpec, batch: int, look: _Lookup) -> float:
        """The dense model's blocks timed in it over the table's price for them (1 without a model entry).
        A factor, not a sum once per pass: what the model entry adds to its parts (-5% to +4% of the
        model, more than its embedding and head cost) lies in its blocks, so a config gets it pro rata."""
        shape = shape_of(spec)
        wanted = (shape.tokens, shape.image_size, shape.patch_size, shape.num_classes)
        for e in self._composites("model", spec, batch):
            if (e.tokens, e.image_size, e.patch_size, e.num_classes) == wanted:
                blocks = e.depth * _dense_block(look, spec, e.tokens)
                return float((e.median_ms - look.embed - look.head[e.tokens]) / blocks)
        return 1.0

    def _reducing(self, spec: ModelSpec, batch: int, look: _Lookup) -> dict[str, np.ndarray]:
        """Per token op's correction and tokens in: what a reducing block costs in a model beyond its
        parts, from the reducing chains (a dense block, then a reducing one): measured pair minus the
        table's pair, interpolated over tokens, constant past the ends."""
        heads, hidden, size_n = spec.blocks[0].heads, spec.blocks[0].mlp_hidden, len(look.chain)
        points: dict[str, dict[int, float]] = {}
        for e in self._composites("reducing_chain", spec, batch):
            op = PRICINGS[e.reduction]
            if e.prefix != spec.num_prefix_tokens or op.entry.op not in look.ops:
                continue
            cost = op.chain_cost(look, e, heads)
            cost += look.chain[e.tokens] + look.mlp[e.tokens_out, hidden]
            points.setdefault(op.correction, {})[e.tokens] = e.median_ms - _dense_block(look, spec, e.tokens) - cost
        tokens = np.arange(size_n)
        reducing = {}
        for op in PRICINGS.values():
            measured = sorted(points.get(op.correction, {0: 0.0}).items())
            reducing[op.correction] = np.interp(tokens, [t for t, _ in measured], [v for _, v in measured])
        return reducing

    def unpriced(self, spec: ModelSpec, batch: int) -> list[str]:
        """The token ops (kinds) the table does not price for `spec` at `batch`: a table made before
        an op was priced lacks its entries, and prices every config that does not use it."""
        have = self.lookup(spec, batch).ops
        return [kind for kind, op in PRICINGS.items() if op.entry.op not in have]

    def _missing(self, spec: ModelSpec, what: str) -> str:
        return (
            f"latency table '{self.device}' has no {what} (needed for {spec.name}); "
            f"profile this model shape at that batch size (vitprune profile --model {spec.name} --batch ...)"
        )


def _dense_block(look: _Lookup, spec: ModelSpec, tokens: int) -> float:
    """A dense block at `tokens` as the predictor prices it: its halves plus the chain correction."""
    block = spec.blocks[0]
    return look.attention[(False, False)][tokens, block.heads] + look.chain[tokens] + look.mlp[tokens, block.mlp_hidden]


def _shape_key(spec: ModelSpec) -> tuple:
    return (spec.family, spec.blocks, spec.num_prefix_tokens, spec.image_size, spec.num_classes)


def _series(entries: list, axis: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted({getattr(e, axis): e.median_ms for e in entries}.items())
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def _grid2(entries: list, ax: str, ay: str | Callable, size_x: int, size_y: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (size_x, size_y) array from grid entries. Holes in a row of the grid take the nearest
    value below them on the second axis (e.g. tokens_out > tokens_in for a token reduction, or more
    pairs merged than the row's tokens allow), or are interpolated between their neighbours (a merge
    row lacks the counts that are only other rows' largest). `ay` is a field name or a function of the entry."""
    get_y = ay if callable(ay) else operator.attrgetter(ay)
    xs = np.array(sorted({getattr(e, ax) for e in entries}))
    ys = np.array(sorted({get_y(e) for e in entries}))
    values = np.full((len(xs), len(ys)), np.nan)
    index_x = {x: i for i, x in enumerate(xs)}
    index_y = {y: j for j, y in enumerate(ys)}
    for e in entries:
        values[index_x[getattr(e, ax)], index_y[get_y(e)]] = e.median_ms
    for row in values:
        known = np.flatnonzero(~np.isnan(row))
        if len(known) == 0:
            raise CoverageError(f"latency table: a row of {entries[0].op} entries has no values")
        row[:] = np.interp(ys, ys[known], row[known])  # constant past either end, linear in between
    return expand_2d(xs, ys, values, size_x, size_y)


def _offgrid_factor(probes: dict[int, float], curve: np.ndarray, max_tokens: int, step: int = 8) -> np.ndarray:
    """Per token count, 1 + how much more a block costs off the multiples of `step` than the grid
    (timed at multiples) says, from the off-grid chain entries (`offgrid_tokens`): the median over
    groups of each count's excess at the same distance past a multiple. A group's own multiple,
    timed in the same profile, sets the level; the curve through the other chain entries only its
    slope. Counts on the grid, at the small end and the two largest keep 1."""
    factor = np.ones(len(curve))
    excess: dict[int, list[float]] = {}
    for base in (t for t in probes if t % step == 0):
        for j in range(1, step):
            if base + j in probes:
                expected = probes[base] * curve[base + j] / curve[base]
                excess.setdefault(j, []).append(probes[base + j] / expected - 1.0)
    if not excess:  # a table made before off-grid counts were timed
        return factor
    by_offset = np.array([float(np.median(excess[j])) if j in excess else 0.0 for j in range(step)])
    tokens = np.arange(len(curve))
    off = (tokens > 2 * step) & (tokens < max_tokens - 1) & (tokens % step != 0)
    factor[off] += by_offset[tokens[off] % step]
    return factor


def _scaled(look: _Lookup, factor: float) -> _Lookup:
    return _Lookup(
        embed=look.embed * factor,
        head=look.head * factor,
        chain=look.chain * factor,
        reducing={k: v * factor for k, v in look.reducing.items()},
        attention={k: v * factor for k, v in look.attention.items()},
        mlp=look.mlp * factor,
        ops={op: {k: v * factor for k, v in arrays.items()} for op, arrays in look.ops.items()},
        outside=look.outside,
        blocks_scale=look.blocks_scale,
        batch_extrapolated=True,
        missing=look.missing,
    )
