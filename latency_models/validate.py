"""The proof of a latency table: random pruned models, measured here, against the table's prediction.

`validate` draws random configs (token keep-ratios at random blocks, with and without a package
token, every other token op in the share of configs its pricing module gives it, head and MLP
pruning), builds each as a real physically pruned model, times its forward pass on this machine
and compares with the predictor. The report gives the share of configs within +-10% (overall and
per kind of token op), the mean absolute percentage error, the worst case and how well the table
ranks configs (Spearman's rank correlation), and can be written as JSON, Markdown and an
interactive scatter plot.
A shared machine's speed wanders by tens of percent over minutes, so a fixed probe from the table
(its dense MLP entry) is re-timed right before every timed round and each round is normalised by
the probe's ratio (a ratio measured in one moment); errors are given against normalised and raw
measurements.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latency_models.predictor import LatencyPredictor, Prediction
from latency_models.profiling import Execution, Timing, kernel, summarise, time_round
from latency_models.profiling.ops import PRICINGS, TokenPricing, pricing
from pruning.config import BlockConfig, PruneConfig
from pruning.model import describe, prune_model
from pruning.quantisation.precisions import FLOAT
from pruning.spec import ModelSpec
from pruning.timing import torch_threads
from pruning.tokens import NoReduction, TokenOp, token_op

__all__ = [
    "ValidationReport",
    "ValidationRow",
    "kept_counts",
    "measure_configs",
    "random_config",
    "token_kind",
    "validate",
    "validation_configs",
]

PROBE_TIMING = Timing()
VALIDATION_TIMING = Timing(passes=5, warmup=1, min_round_s=0.1)
"""Rounds of at least 0.1 s (whole models are slower to time than table entries), five passes."""


@dataclass(frozen=True)
class ValidationRow:
    config: str
    summary: str
    predicted_ms: float
    measured_ms: float
    """Median over passes of this model's round medians, as timed."""
    normalised_ms: float
    """The same, each round first scaled by the probe's speed in the table over its speed just
    before that round: the model's latency with the machine as fast as when the table was made."""
    spread_ms: float
    extrapolated: bool
    kind: str = "none"
    """The config's token ops, e.g. none, topk or topk+merge (`token_kind`)."""

    def error(self, raw: bool = False) -> float:
        """Signed relative error of the prediction against the normalised (or the raw) measurement."""
        measured = self.measured_ms if raw else self.normalised_ms
        return (self.predicted_ms - measured) / measured


@dataclass(frozen=True)
class ValidationReport:
    device: str
    model: str
    batch: int
    threads: int
    rows: tuple[ValidationRow, ...]
    drift: float = 1.0
    """How much slower (> 1) this machine ran during the check than when the table was measured,
    by the probe (the table's entry for the dense MLP half) timed then and now, the same way. A shared
    machine's speed wanders by tens of percent over minutes; the headline errors use the
    normalised measurements, `raw` ones the measurements as they are."""
    precision: str = FLOAT
    """What the configs ran at: fp32 as the table's execution says, or quantised and run by onnxruntime."""

    def errors(self, raw: bool = False) -> np.ndarray:
        return np.array([r.error(raw) for r in self.rows])

    @property
    def within_10(self) -> float:
        return float(np.mean(np.abs(self.errors()) <= 0.10))

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(self.errors())))

    @property
    def bias(self) -> float:
        """Median signed error: < 0 when the table predicts low (models run over what it promises)."""
        return float(np.median(self.errors()))

    @property
    def under_p95(self) -> float:
        """How far measured latency exceeds the prediction for all but the worst 5% of configs (>= 0)."""
        return max(0.0, float(np.quantile(1.0 / (1.0 + self.errors()) - 1.0, 0.95)))

    @property
    def worst(self) -> ValidationRow:
        return self.rows[int(np.argmax(np.abs(self.errors())))]

    def by_kind(self) -> dict[str, dict]:
        """Configs, share within +-10% and MAPE per kind of token reduction."""
        kinds: dict[str, list[float]] = {}
        for row in self.rows:
            kinds.setdefault(row.kind, []).append(abs(row.error()))
        return {
            kind: {
                "configs": len(errors),
                "within_10pct": round(float(np.mean(np.array(errors) <= 0.10)), 4),
                "mape": round(float(np.mean(errors)), 4),
            }
            for kind, errors in sorted(kinds.items())
        }

    @property
    def spearman(self) -> float:
        predicted = np.array([r.predicted_ms for r in self.rows])
        measured = np.array([r.measured_ms for r in self.rows])
        if len(self.rows) < 2:
            return float("nan")
        return float(np.corrcoef(_ranks(predicted), _ranks(measured))[0, 1])

    def summary(self) -> dict:
        worst, raw = self.worst, self.errors(raw=True)
        return {
            "device": self.device,
            "model": self.model,
            "batch": self.batch,
            "threads": self.threads,
            "precision": self.precision,
            "configs": len(self.rows),
            "within_10pct": round(self.within_10, 4),
            "mape": round(self.mape, 4),
            "bias": round(self.bias, 4),
            "under_p95": round(self.under_p95, 4),
            "worst_error": round(worst.error(), 4),
            "worst_config": worst.summary,
            "spearman": round(self.spearman, 4),
            "drift": round(self.drift, 4),
            "raw_within_10pct": round(float(np.mean(np.abs(raw) <= 0.10)), 4),
            "raw_mape": round(float(np.mean(np.abs(raw))), 4),
            "extrapolated": sum(r.extrapolated for r in self.rows),
            "by_kind": self.by_kind(),
        }

    def to_markdown(self) -> str:
        s = self.summary()
        lines = [
            f"{self.model}{_ran_as(self.precision)} at batch {self.batch} on '{self.device}' ({self.threads} threads):"
            f" {s['configs']} random "
            f"configs, {100 * s['within_10pct']:.0f}% within +-10%, MAPE {100 * s['mape']:.1f}%, bias "
            f"{100 * s['bias']:+.1f}%, worst {100 * s['worst_error']:+.1f}%, Spearman {s['spearman']:.3f}",
            "",
            f"Machine speed since the table was measured: x{s['drift']:.3f} slower (by the probe timed before "
            f"every round; errors above compare with measurements normalised by it, raw ones give "
            f"{100 * s['raw_within_10pct']:.0f}% within +-10%, MAPE {100 * s['raw_mape']:.1f}%).",
            "",
            "| token reduction | configs | within +-10% | MAPE |",
            "|---|---:|---:|---:|",
            *(
                f"| {kind} | {k['configs']} | {100 * k['within_10pct']:.0f}% | {100 * k['mape']:.1f}% |"
                for kind, k in s["by_kind"].items()
            ),
            "",
            "| config | predicted ms | measured ms | normalised ms | error |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in sorted(self.rows, key=lambda r: r.normalised_ms):
            flag = " (extrapolated)" if r.extrapolated else ""
            lines.append(
                f"| {r.summary}{flag} | {r.predicted_ms:.2f} | {r.measured_ms:.2f} | {r.normalised_ms:.2f} | "
                f"{100 * r.error():+.1f}% |"
            )
        return "\n".join(lines) + "\n"

    def save(self, stem: Path, plot: bool = True) -> list[Path]:
        """Write `<stem>.json`, `<stem>.md` and (with `plot`) the scatter plot `<stem>.html`."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
        data = {"summary": self.summary(), "rows": [asdict(r) | {"error": r.error()} for r in self.rows]}
        written[0].write_text(json.dumps(data, indent=1))
        written[1].write_text(self.to_markdown())
        if plot:
            written.append(self.scatter_plot(stem.with_suffix(".html")))
        return written

    def scatter_plot(self, path: Path) -> Path:
        """Predicted vs measured, with the +-10% band; a self-contained HTML file (plotly, no CDN)."""
        import plotly.graph_objects as go

        measured = [r.normalised_ms for r in self.rows]
        top = max(max(measured), max(r.predicted_ms for r in self.rows)) * 1.05
        figure = go.Figure()
        for factor, name in ((1.0, "exact"), (1.1, "+10%"), (0.9, "-10%")):
            figure.add_trace(
                go.Scatter(
                    x=[0, top],
                    y=[0, top * factor],
                    mode="lines",
                    name=name,
                    line={"dash": "solid" if factor == 1.0 else "dot", "color": "grey"},
                )
            )
        figure.add_trace(
            go.Scatter(
                x=measured,
                y=[r.predicted_ms for r in self.rows],
                mode="markers",
                name="configs",
                text=[f"{r.summary}<br>error {100 * r.error():+.1f}%" for r in self.rows],
                hoverinfo="text+x+y",
            )
        )
        s = self.summary()
        figure.update_layout(
            title=f"{self.model}{_ran_as(self.precision)}, batch {self.batch}, {self.device}: "
            f"{100 * s['within_10pct']:.0f}% within +-10%, Spearman {s['spearman']:.3f}",
            xaxis_title="measured ms (normalised to the table's machine speed)",
            yaxis_title="predicted ms",
            width=800,
            height=700,
        )
        figure.write_html(path, include_plotlyjs=True)
        return path


def _ran_as(precision: str) -> str:
    return "" if precision == FLOAT else f" in {precision} (onnxruntime QDQ)"


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(np.float64)


def random_config(spec: ModelSpec, rng: random.Random, *, leave_out: Collection[str] = ()) -> PruneConfig:
    """A random pruned structure of the kinds a search visits: token ops at up to three blocks (the
    default op, top-k, or one drawn by its `share`), or an op drawn as a run (token merging: the same
    count at every block from a random one on, ToMe's schedule), alone or around the default op at a
    few blocks; some blocks with fewer heads or MLP channels, a package token or not. `leave_out`:
    token op kinds not to draw (the default op is always drawn)."""
    depth = len(spec.blocks)
    n_patch = spec.blocks[0].tokens_in
    default = next(p for p in PRICINGS.values() if p.share is None)
    reduce_at = set(rng.sample(range(1, depth), k=rng.randint(0, min(3, depth - 1))))
    scattered, run, run_at = default, None, set()
    drawn = _drawn(rng.random(), spec, leave_out)
    if drawn is not None and drawn.run:
        run = _make(drawn, rng, n_patch)
        run_at = set(range(rng.randrange(depth), depth))
        if rng.random() < 0.5:
            reduce_at = set()  # the run alone
        elif not reduce_at and depth > 1:
            reduce_at = {rng.randrange(1, depth)}  # the default op at some blocks, the run at the others
    elif drawn is not None:
        scattered = drawn
    prune_heads, prune_mlp = rng.random() < 0.6, rng.random() < 0.7
    blocks = []
    for i, dense in enumerate(spec.blocks):
        heads = rng.randint(1, dense.heads) if prune_heads and rng.random() < 0.5 else dense.heads
        hidden = dense.mlp_hidden
        if prune_mlp and rng.random() < 0.6:
            hidden = 8 * rng.randint(1, dense.mlp_hidden // 8)
        tokens = NoReduction()
        if i in reduce_at:
            tokens = _make(scattered, rng, n_patch)
        elif i in run_at:
            tokens = run
        blocks.append(BlockConfig(heads=heads, mlp_hidden=hidden, tokens=tokens))
    return PruneConfig(blocks=tuple(blocks), package_token=rng.random() < 0.5)


def _drawn(roll: float, spec: ModelSpec, leave_out: Collection[str]) -> TokenPricing | None:
    """The op whose share of [0, 1) holds `roll` (shares follow the registry's order), unless it is
    left out or `spec` cannot run it; None for the default op."""
    start = 0.0
    for op in PRICINGS.values():
        if op.share is None:
            continue
        if start <= roll < start + op.share:
            fits = token_op(op.kind).grid_ok or spec.family == "vit"
            return op if op.kind not in leave_out and fits else None
        start += op.share
    return None


def _make(op: TokenPricing, rng: random.Random, n_patch: int) -> TokenOp:
    """A random instance of `op` (its values drawn by its pricing module)."""
    return token_op(op.kind)(**op.sample(rng, n_patch))


def token_kind(config: PruneConfig) -> str:
    """What a config does to tokens: "none", its one op's kind, or its ops joined by "+" in the
    registry's order (e.g. topk+merge); an op with per-image counts stands for all (a top-k beside a
    threshold gives the threshold's kind)."""
    kinds = [kind for kind in PRICINGS if config.uses(kind)]
    per_image = [kind for kind in kinds if token_op(kind).per_image]
    return per_image[0] if per_image else "+".join(kinds) or "none"


def summarise_config(config: PruneConfig, spec: ModelSpec) -> str:
    """'keep 0.7@3, keep 0.5@6 +pkg, heads 28/36, mlp 0.62' style one-liner, each token op in its own
    words; an op drawn as a run (a merge) is named once for a run of equal blocks: 'merge 8@2-11'."""
    tokens, blocks, i = [], config.blocks, 0
    while i < len(blocks):
        op, last = blocks[i].tokens, i
        if op.reduces:
            if pricing(op.kind).run:
                while last + 1 < len(blocks) and blocks[last + 1].tokens == op:
                    last += 1
            tokens.append(f"{op.summary()}@{i}" + (f"-{last}" if last > i else ""))
        i = last + 1
    by_score = any(b.tokens.needs == "scores" for b in blocks)  # only these make a package token
    heads = sum(b.heads for b in config.blocks), sum(b.heads for b in spec.blocks)
    mlp = sum(b.mlp_hidden for b in config.blocks) / sum(b.mlp_hidden for b in spec.blocks)
    text = ", ".join(tokens) or "all tokens"
    return f"{text}{' +pkg' if config.package_token and by_score else ''}, heads {heads[0]}/{heads[1]}, mlp {mlp:.2f}"


def validation_configs(
    spec: ModelSpec, configs: int, rng: random.Random, leave_out: Collection[str] = ()
) -> list[PruneConfig]:
    """The configs `validate` measures: the dense model, then `configs - 1` random ones from `rng`."""
    return [PruneConfig.dense(spec)] + [random_config(spec, rng, leave_out=leave_out) for _ in range(configs - 1)]


def kept_counts(pruned: nn.Module, images: torch.Tensor) -> list[int] | None:
    """The widths a threshold config's batch of `images` runs at after each token reduction (the
    longest image's count), which its prediction needs; None for other configs (counts are fixed)."""
    if not pruned.config.per_image:
        return None
    with torch.inference_mode():
        pruned(images)
    return [int(c.max()) for c in pruned.last_token_counts]


def validate(
    predictor: LatencyPredictor,
    dense: nn.Module,
    *,
    configs: int = 50,
    batch: int = 1,
    seed: int = 0,
    threads: int | None = None,
    images: torch.Tensor | None = None,
    timing: Timing = VALIDATION_TIMING,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    leave_out: Collection[str] | None = None,
    precision: str = FLOAT,
) -> ValidationReport:
    """Measure `configs` random pruned versions of `dense` at `batch` and compare with `predictor`.

    The dense model itself is the first config. Every model is built first, then timed in
    `timing.passes` passes over all of them (one round each), keeping the median of each model's
    round medians: a slow period of a shared machine then hits a few rounds of many models instead of
    every round of a few. This is the profiler's own timing method, so table and check agree on
    what "the latency" means. Before each round the table's probe is re-timed (see `ValidationRow`).
    `images` (at least `batch`) feed the threshold configs, whose token
    counts depend on the images; random inputs are used otherwise. `leave_out`: token op kinds not
    to draw (an op the table does not price then raises CoverageError); None leaves out the ops the
    table does not price, as tables made before an op was priced do not. `precision`: the configs are
    quantised to it and run by onnxruntime (see `measure_configs`); ops whose token counts depend on
    the images are then left out, since quantised scores move them away from what was priced.
    """
    spec = describe(dense, name)
    if leave_out is None:
        leave_out = predictor.unpriced(spec, batch)
    if precision != FLOAT:
        leave_out = {*leave_out, *(kind for kind in PRICINGS if token_op(kind).per_image)}
    candidates = validation_configs(spec, configs, random.Random(seed), leave_out)
    if images is None:
        images = torch.randn(batch, 3, *spec.image_size, generator=torch.Generator().manual_seed(seed))
    rows, _, drift, used_threads = measure_configs(
        predictor, dense, candidates, batch=batch, images=images, threads=threads, timing=timing, name=name,
        progress=progress, precision=precision,
    )  # fmt: skip
    return ValidationReport(predictor.device, spec.name, batch, used_threads, tuple(rows), drift, precision)


def measure_configs(
    predictor: LatencyPredictor,
    dense: nn.Module,
    candidates: list[PruneConfig],
    *,
    batch: int,
    images: torch.Tensor,
    threads: int | None = None,
    timing: Timing = VALIDATION_TIMING,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    precision: str = FLOAT,
) -> tuple[list[ValidationRow], list[Prediction], float, int]:
    """Build `candidates` as pruned models of `dense`, time each end to end at `batch` and price it
    with `predictor`: (rows, predictions, the machine's drift, threads used). See `validate`.

    Float models run as the table's execution says (its torch device, dtype, eager or CUDA graphs).
    At another `precision` each model is quantised (calibrated on `images`), exported as ONNX QDQ and
    run by onnxruntime's int8 CPU kernels, the runtime a user deploys it with; the table's probe, a
    torch kernel, then says nothing about that runtime's speed, so no drift is measured (1.0)."""
    spec = describe(dense, name)
    if images.shape[0] < batch:
        raise ValueError(f"need at least {batch} images for batch {batch}, got {images.shape[0]}")
    images = images[:batch]
    models, predictions = [], []
    for config in candidates:
        pruned = prune_model(dense, config, name=spec.name).eval()
        models.append(pruned)
        predictions.append(predictor.predict(config, spec, batch, kept_tokens=kept_counts(pruned, images)))
    rounds: list[list[list[float]]] = [[] for _ in candidates]
    speed: list[list[float]] = [[] for _ in candidates]  # probe now / probe in the table, per round
    execution = Execution.of(predictor.table.device.model_dump())
    probe = predictor.probe(spec, batch) if precision == FLOAT else None
    with torch_threads(threads) as used_threads, tempfile.TemporaryDirectory() as folder:
        if precision == FLOAT:
            execution.check()
            placed, inputs = [execution.place(m) for m in models], execution.inputs(images)
            calls = [lambda m=m: m(inputs) for m in placed]
        else:
            from pruning.onnx_session import quantised_onnx_run  # onnxruntime loads only for this path

            execution = Execution()  # onnxruntime on the CPU: torch's device and dtype play no part
            calls = [
                quantised_onnx_run(m, images, precision, Path(folder) / f"config-{i}.onnx", used_threads)
                for i, m in enumerate(models)
            ]
        with execution.building():
            probe_fn = kernel(probe[0], execution.torch_device) if probe is not None else None
        for n in range(timing.passes):
            for index, call in enumerate(calls):
                if probe_fn is not None:
                    # Timed exactly as the profiler timed it, so the ratio is the machine's speed alone.
                    speed[index].append(statistics.median(time_round(probe_fn, execution, PROBE_TIMING)) / probe[1])
                rounds[index].append(time_round(call, execution, timing))
                if progress is not None:
                    progress(n * len(calls) + index + 1, timing.passes * len(calls))
    rows = []
    for config, prediction, timed, factors in zip(candidates, predictions, rounds, speed, strict=True):
        measured, spread = summarise(timed)
        normalised = (
            summarise([[t / f for t in r] for r, f in zip(timed, factors, strict=True)])[0] if factors else measured
        )
        rows.append(
            ValidationRow(
                config.key(),
                summarise_config(config, spec),
                prediction.ms,
                measured,
                normalised,
                spread,
                prediction.extrapolated,
                token_kind(config),
            )
        )
    drift = statistics.median(f for factors in speed for f in factors) if probe is not None else 1.0
    return rows, predictions, drift, used_threads
