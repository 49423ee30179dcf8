"""Accuracy, size and CPU latency of pruned DeiT-Tiny variants on real ImageNet images.

Run by hand (never from the tests):

    python bench/pruned_models.py --data DIR [--out bench/results] [--threads N] [--quick]

DIR (default: $VITPRUNE_DATA_DIR) holds `deit_tiny_patch16_224/model.safetensors`,
`imagenet-sample/<wnid>/*.JPEG` and `imagenet_wnids.txt`. The images are split once with
`ImageSet.split(0.5, seed=0)`: the first half (calibration) is used only to choose heads/channels
and for weight recovery, the second half (validation) only for the reported figures.

Writes `<out>/pruning.json` (every figure, latency spreads, machine info) and `<out>/pruning.md`
(a Markdown table for docs/benchmarks.md and the command line that produced it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config

from pruning import PruneConfig, describe, prune_model
from pruning.data import ImageSet, load_image_folder
from pruning.flops import count_flops, count_params
from pruning.metrics import classification_metrics
from pruning.spec import ModelSpec
from pruning.timing import LatencyStats, measure_latency, time_callable

MODEL_NAME = "deit_tiny_patch16_224"
DATA_ENV = "VITPRUNE_DATA_DIR"
REDUCE_AT = (3, 6, 9)
EVAL_BATCH = 64
CALIB_BATCH = 64
LATENCY_BATCHES = (1, 32)
QUIET_BUSY_CORES = 0.3
"""Other processes may use at most this many cores before a latency measurement starts."""
CONTENDED_CORES = 0.25
"""A measurement during which other processes used more cores than this (on average) is contended."""


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Budget:
    """How much work each measurement gets; `--quick` shrinks it for a smoke run."""

    max_images: int | None
    rounds: dict[int, int]
    iters: dict[int, int]
    flops_images_fixed: int
    flops_images_threshold: int | None  # None: every validation image
    attempts: int = 3
    quiet_wait_s: float = 30.0
    total_quiet_wait_s: float = 420.0  # once spent, measure at once (and record the contention)


FULL = Budget(
    max_images=None,
    rounds={1: 15, 32: 5},
    iters={1: 10, 32: 3},
    flops_images_fixed=2,
    flops_images_threshold=None,
)
QUICK = Budget(
    max_images=160,
    rounds={1: 2, 32: 2},
    iters={1: 3, 32: 1},
    flops_images_fixed=1,
    flops_images_threshold=16,
    attempts=1,
    quiet_wait_s=2.0,
    total_quiet_wait_s=10.0,
)


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # dense | tokens-topk | tokens-threshold | structured
    settings: dict[str, Any]
    make_config: Callable[[ModelSpec], PruneConfig] | None = None  # None: the dense timm model itself
    recover: bool = False

    @property
    def per_image_tokens(self) -> bool:
        """Token counts depend on the image: time and count FLOPs on real validation images."""
        return self.kind == "tokens-threshold"


def _rows() -> list[Row]:
    rows: list[Row] = [
        Row("dense (via prune_model, nothing pruned)", "dense", {"wrapper": True}, lambda s: PruneConfig.dense(s))
    ]
    for keep in (0.9, 0.7, 0.5):
        for package in (False, True):
            label = f"top-k keep {keep} @3,6,9" + (" + package" if package else "")
            rows.append(
                Row(
                    label,
                    "tokens-topk",
                    {"keep_ratio": keep, "at": list(REDUCE_AT), "package_token": package, "score": "cls_attn"},
                    lambda s, k=keep, p=package: PruneConfig.uniform(
                        s, keep_ratio=k, at=REDUCE_AT, package_token=p, score="cls_attn"
                    ),
                )
            )
    rows.append(
        Row(
            "top-k keep 0.7 @3,6,9, head_weighted",
            "tokens-topk",
            {"keep_ratio": 0.7, "at": list(REDUCE_AT), "package_token": False, "score": "head_weighted"},
            lambda s: PruneConfig.uniform(s, keep_ratio=0.7, at=REDUCE_AT, score="head_weighted"),
        )
    )
    for threshold in (0.5, 1.0):
        rows.append(
            Row(
                f"threshold {threshold} @3,6,9 + package",
                "tokens-threshold",
                {"threshold": threshold, "at": list(REDUCE_AT), "package_token": True, "score": "cls_attn"},
                lambda s, t=threshold: PruneConfig.uniform(s, threshold=t, at=REDUCE_AT, package_token=True),
            )
        )
    structured = [
        ("heads 2/3", {"head_ratio": 2 / 3}),
        ("MLP 0.75", {"mlp_ratio": 0.75}),
        ("MLP 0.5", {"mlp_ratio": 0.5}),
        ("heads 2/3 + MLP 0.75", {"head_ratio": 2 / 3, "mlp_ratio": 0.75}),
    ]
    for label, ratios in structured:
        for recover in (False, True):
            rows.append(
                Row(
                    label + (" + recovery" if recover else ""),
                    "structured",
                    {**ratios, "importance": "calibration", "recover": recover},
                    lambda s, r=ratios: PruneConfig.uniform(s, **r),
                    recover=recover,
                )
            )
    return rows


# ------------------------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _data_dir(value: str | None) -> Path:
    raw = value or os.environ.get(DATA_ENV)
    if not raw:
        sys.exit(
            f"error: no data directory: pass --data DIR or set {DATA_ENV}; DIR must hold "
            f"{MODEL_NAME}/model.safetensors, imagenet-sample/<wnid>/*.JPEG and imagenet_wnids.txt"
        )
    root = Path(raw)
    needed = [root / MODEL_NAME / "model.safetensors", root / "imagenet-sample", root / "imagenet_wnids.txt"]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        sys.exit(f"error: data directory {root} lacks {', '.join(missing)}")
    return root


def _load_dense(weights: Path) -> torch.nn.Module:
    try:
        from pruning.loading import create_model
    except ImportError:  # older checkouts without the loading layer
        from safetensors.torch import load_file

        model = timm.create_model(MODEL_NAME, pretrained=False)
        model.load_state_dict(load_file(str(weights)), strict=True)
        return model.eval()
    return create_model(MODEL_NAME, weights=weights).eval()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(threads: int) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _command_line(args: argparse.Namespace) -> str:
    """The command as run, without any path of this machine (the data dir is shown as the env var)."""
    parts = ["python", "bench/pruned_models.py", "--data", f"${DATA_ENV}"]
    out = Path(args.out)
    if out.is_absolute():
        try:
            out = out.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            out = Path("OUT_DIR")
    parts += ["--out", out.as_posix()]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.quick:
        parts.append("--quick")
    return " ".join(p if p.startswith("$") else shlex.quote(p) for p in parts)


@torch.inference_mode()
def _run_eval(
    model: torch.nn.Module, val: ImageSet, reference: torch.Tensor | None
) -> tuple[dict[str, Any], torch.Tensor, list[dict[str, float]] | None]:
    """Metrics on the validation set, logits, and per-reduction patch-token counts over all images."""
    model.eval()
    logits, counts = [], None
    for inputs, _ in val.batches(EVAL_BATCH):
        logits.append(model(inputs).float())
        step = getattr(model, "last_token_counts", None)
        if step:
            if counts is None:
                counts = [[] for _ in step]
            for bucket, count in zip(counts, step, strict=True):
                bucket.append(count.to(torch.float64))
    logits_all = torch.cat(logits)
    metrics = classification_metrics(logits_all, val.labels, reference).to_dict()
    token_stats = None
    if counts:
        token_stats = []
        for block, bucket in zip(REDUCE_AT, counts, strict=False):
            values = torch.cat(bucket)
            token_stats.append(
                {
                    "block": block,
                    "mean": float(values.mean()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                    # Width after padding when 32 images share a batch (per-image counts do not
                    # depend on batch neighbours): what a batch-32 forward really computes on.
                    "padded_b32_mean": float(torch.stack([g.max() for g in values.split(32)]).mean()),
                }
            )
    return metrics, logits_all, token_stats


def _time_real(
    model: torch.nn.Module, inputs: list[torch.Tensor], *, rounds: int, iters: int, threads: int, warmup: int = 3
) -> LatencyStats:
    """Latency cycling over real inputs; each round sees the same `iters` inputs, so rounds compare."""
    chosen = inputs[:iters]
    position = [0]

    def forward() -> None:
        model(chosen[position[0] % len(chosen)])
        position[0] += 1

    model.eval()
    with torch.inference_mode():
        return time_callable(
            forward,
            warmup=warmup,
            rounds=rounds,
            iters=len(chosen),
            threads=threads,
            batch_size=int(chosen[0].shape[0]),
        )


def _cpu_busy_s() -> float | None:
    """CPU seconds spent by every process on the machine since boot (None where /proc/stat is missing)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    jiffies = [int(v) for v in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


_QUIET_SPENT = [0.0]
"""Seconds spent waiting for quiet so far in this run (bounded by `Budget.total_quiet_wait_s`)."""


def _wait_quiet(max_wait_s: float, window_s: float = 0.5, busy_cores: float = QUIET_BUSY_CORES) -> float:
    """Wait until other processes use less than `busy_cores` cores over a window; seconds waited.

    The machine is shared: a measurement taken while another job runs is mostly a measurement of
    the scheduler. Gives up after `max_wait_s` (the measurement then records its contention).
    """
    started = time.perf_counter()
    while True:
        busy0, t0 = _cpu_busy_s(), time.perf_counter()
        if busy0 is None:
            return 0.0
        time.sleep(window_s)
        busy = (_cpu_busy_s() - busy0) / (time.perf_counter() - t0)
        waited = time.perf_counter() - started
        if busy < busy_cores or waited >= max_wait_s:
            return waited


def _with_contention(measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float | None]:
    """Run `measure` and return how many cores other processes used meanwhile, on average."""
    busy0, own0, t0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    stats = measure()
    busy1, own1, wall = _cpu_busy_s(), time.process_time(), time.perf_counter() - t0
    if busy0 is None or busy1 is None:
        return stats, None
    return stats, max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)


def _one_round(
    model: torch.nn.Module, batch: int, iters: int, threads: int, real: list[torch.Tensor] | None
) -> LatencyStats:
    """One timed round (one warm-up call, then `iters` timed calls) of `model`."""
    if real is not None:
        return _time_real(model, real, rounds=1, iters=iters, threads=threads, warmup=1)
    torch.manual_seed(0)
    return measure_latency(model, batch_size=batch, threads=threads, rounds=1, iters=iters, warmup=1)


def _summary(rounds: list[LatencyStats]) -> dict[str, Any]:
    """The timer's statistics over rounds: headline = min over rounds of each round's median."""
    medians = [r.ms for r in rounds]
    return {
        "ms": min(medians),
        "median_ms": statistics.median(medians),
        "spread_ms": statistics.mean(r.spread_ms for r in rounds),  # p90 - p10 inside a round
        "round_ms": medians,
        "rounds": len(rounds),
        "iters_per_round": rounds[0].iters_per_round,
        "threads": rounds[0].threads,
        "batch_size": rounds[0].batch_size,
    }


def _latency(
    model: torch.nn.Module,
    row: Row | None,
    val: ImageSet,
    budget: Budget,
    threads: int,
    dense: torch.nn.Module | None = None,
) -> dict[int, dict[str, Any]]:
    """Headline latency per batch size; with `dense`, paired with the dense model's.

    Paired: rounds of the model and of the dense model alternate (ABBA order), so both see the same
    state of the shared machine, whose speed drifted by 20-30% over tens of seconds when this was
    written (other virtual machines on the host, invisible in /proc/stat); the row's
    speedup is dense / model from the same measurement. Each batch size waits for other processes
    to go quiet first; if they still used more than CONTENDED_CORES cores it is repeated (up to
    `budget.attempts`) and the fastest attempt kept. Every attempt is recorded.
    """
    results: dict[int, dict[str, Any]] = {}
    for batch in LATENCY_BATCHES:
        rounds, iters = budget.rounds[batch], budget.iters[batch]
        real = None
        if row is not None and row.per_image_tokens:
            real = [x for x, _ in itertools.islice(val.batches(batch), iters)]

        def measure(batch=batch, rounds=rounds, iters=iters, real=real) -> dict[str, Any]:
            own: list[LatencyStats] = []
            ref: list[LatencyStats] = []
            for index in range(rounds):
                order = [(own, model)] if dense is None else [(own, model), (ref, dense)]
                for bucket, timed in order if index % 2 == 0 else order[::-1]:
                    bucket.append(_one_round(timed, batch, iters, threads, real))
            result = _summary(own)
            if ref:
                result["dense"] = _summary(ref)
                result["speedup"] = result["dense"]["ms"] / result["ms"]
            return result

        attempts = []
        for _ in range(budget.attempts):
            allowed = min(budget.quiet_wait_s, budget.total_quiet_wait_s - _QUIET_SPENT[0])
            waited = _wait_quiet(allowed) if allowed > 0 else 0.0
            _QUIET_SPENT[0] += waited
            stats, others = _with_contention(measure)
            attempts.append({**stats, "others_cores": others, "waited_s": waited})
            if others is None or others <= CONTENDED_CORES:
                break
        # Contention only ever adds time, so the fastest attempt is the least disturbed one.
        best = min(attempts, key=lambda a: a["ms"] + a.get("dense", {}).get("ms", 0.0))
        results[batch] = {**best, "attempts": [{k: v for k, v in a.items() if k != "dense"} for a in attempts]}
    return results


def _flops(model: torch.nn.Module, row: Row | None, val: ImageSet, budget: Budget) -> tuple[float, int]:
    if row is not None and row.per_image_tokens:
        n = len(val) if budget.flops_images_threshold is None else budget.flops_images_threshold
    else:
        n = budget.flops_images_fixed
    images = next(iter(val.subset(range(min(n, len(val)))).batches(n)))[0]
    with torch.inference_mode():
        return count_flops(model, images), int(images.shape[0])


@contextmanager
def _importance_probe() -> Iterator[dict[str, str | None]]:
    """Record which importance criterion `prune_model` used (it does not return it); changes nothing."""
    import pruning.model as model_module

    found: dict[str, str | None] = {"criterion": None}
    original = getattr(model_module, "choose_survivors", None)
    if original is None:
        yield found
        return

    def spy(config, spec, importance, *args, **kwargs):
        if importance is not None:
            found["criterion"] = getattr(importance, "criterion", None)
        return original(config, spec, importance, *args, **kwargs)

    model_module.choose_survivors = spy
    try:
        yield found
    finally:
        model_module.choose_survivors = original


def _library_digest() -> dict[str, Any]:
    """A hash of the `pruning` package sources, so results can be matched to the code that made them.

    Taken once at start, after the package is imported: later edits to the files on disk do not
    change the modules this process already runs.
    """
    import pruning

    root = Path(pruning.__file__).parent
    digest = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"pruning_sources_sha256": digest.hexdigest()[:16], "pruning_source_files": len(files)}


# ------------------------------------------------------------------------------------------- report


def _lat_text(latency: dict[int, dict[str, Any]]) -> str:
    parts = []
    for batch, stats in latency.items():
        others = stats["others_cores"]
        load = "" if others is None else f" (others {others:.2f} cores, {len(stats['attempts'])} try)"
        paired = f" (dense {stats['dense']['ms']:.2f} ms, {stats['speedup']:.2f}x)" if "dense" in stats else ""
        parts.append(f"b{batch} {stats['ms']:.2f} ms ±{stats['spread_ms']:.1f}{paired}{load}")
    return ", ".join(parts)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _tokens_cell(tokens: list[dict[str, float]] | None) -> str:
    if not tokens:
        return "196"

    def number(value: float) -> str:
        return f"{value:.0f}" if value == round(value) else f"{value:.1f}"

    cell = "/".join(number(t["mean"]) for t in tokens)
    padded = [t.get("padded_b32_mean", t["mean"]) for t in tokens]
    if any(abs(p - t["mean"]) > 0.05 for p, t in zip(padded, tokens, strict=True)):
        cell += " (b32 padded " + "/".join(number(p) for p in padded) + ")"
    return cell


def _paired_range(report: dict[str, Any], batch: str, digits: int) -> str:
    values = [r["latency"][batch]["dense"]["ms"] for r in report["rows"] if "dense" in r["latency"][batch]]
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else "–"


def _contended_mark(stats: dict[str, Any]) -> str:
    others = stats.get("others_cores")
    return " †" if others is not None and others > CONTENDED_CORES else ""


def _markdown(report: dict[str, Any]) -> str:
    criteria = ", ".join(sorted({r["importance_criterion"] for r in report["rows"] if r.get("importance_criterion")}))
    lines = [
        f"# Pruning benchmark: {MODEL_NAME}",
        "",
        f"Validation: {report['split']['validation']} real ImageNet images (one per class, second half of "
        f"`split(0.5, seed=0)`); calibration: the other {report['split']['calibration']}, used only to "
        "choose heads/channels and for weight recovery.",
        f"Latency: {report['machine']['cpu_model']}, {report['machine']['cpu_cores']} cores, "
        f"{report['threads']} torch threads, torch {report['machine']['torch']}, timm {report['machine']['timm']}; "
        "headline = min over rounds of each round's median (ms per forward; batch 32 is ms per batch of 32). "
        "The shared machine's speed drifts over tens of seconds, so every row is timed paired with the "
        "dense model (their rounds alternate) and its speedup is that dense time / its own; the dense row "
        "shows the faster of the dense measurements at the start and at the end of the run "
        f"(start: b1 {report['dense_latency']['start']['1']['ms']:.2f} ms, "
        f"b32 {report['dense_latency']['start']['32']['ms']:.1f} ms; "
        f"end: b1 {report['dense_latency']['end']['1']['ms']:.2f} ms, "
        f"b32 {report['dense_latency']['end']['32']['ms']:.1f} ms); paired dense times ranged "
        f"{_paired_range(report, '1', 2)} ms at b1 and {_paired_range(report, '32', 0)} ms at b32.",
        "Threshold rows are timed and FLOP-counted on real validation images (their token counts depend on "
        "the image); the other rows on random inputs. Tokens = mean patch tokens kept after the reductions "
        "at blocks 3/6/9 (of 196); for threshold rows also the padded width a batch of 32 runs at. "
        "Before each latency measurement the script waits (up to "
        f"{report['budget']['quiet_wait_s']:.0f} s) for other processes to go quiet and repeats a measurement "
        f"during which they used more than {CONTENDED_CORES} cores (up to {report['budget']['attempts']} tries); "
        "† marks a latency still taken under such contention (see `others_cores` in pruning.json).",
        f"Head/MLP rows: survivors chosen by `{criteria}` importance on the calibration half; "
        "+ recovery = least-squares refit of attn.proj / mlp.fc2 on calibration activations.",
        "",
        "| model | top-1 % | top-5 % | agree % | KL | params M | GFLOPs | tokens 3/6/9 | b1 ms | b32 ms "
        "| speedup b1 | speedup b32 | build s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        lat = r["latency"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    _fmt(r["top1"], 1),
                    _fmt(r["top5"], 1),
                    _fmt(r["agreement"], 1),
                    _fmt(r["kl"], 3),
                    _fmt(r["params"] / 1e6, 2),
                    _fmt(r["gflops"], 3),
                    _tokens_cell(r["tokens"]),
                    _fmt(lat["1"]["ms"], 2) + _contended_mark(lat["1"]),
                    _fmt(lat["32"]["ms"], 1) + _contended_mark(lat["32"]),
                    _fmt(r["speedup"]["1"], 2) + "x",
                    _fmt(r["speedup"]["32"], 2) + "x",
                    _fmt(r["build_s"], 1),
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"Produced by `{report['command']}` on {report['date']} in {report['total_s'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help=f"data directory (default: ${DATA_ENV})")
    parser.add_argument("--out", default="bench/results", help="where pruning.json / pruning.md go")
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds: a smoke run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default, all cores)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = _data_dir(args.data)
    budget = QUICK if args.quick else FULL
    if args.threads is not None:
        if args.threads < 1:
            sys.exit("error: --threads must be >= 1")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    machine = _machine(threads)
    load = machine["load_average_at_start"]
    _log(f"{machine['cpu_model']}, {machine['cpu_cores']} cores, {threads} threads, load average {load}")

    dense = _load_dense(data / MODEL_NAME / "model.safetensors")
    code = _library_digest()  # every module it uses is imported by now: this is the code that runs
    spec = describe(dense, MODEL_NAME)
    data_config = resolve_data_config({}, model=dense)
    t0 = time.perf_counter()
    images = load_image_folder(
        data / "imagenet-sample", data_config, class_map=data / "imagenet_wnids.txt", max_images=budget.max_images
    )
    _log(f"decoded {len(images)} images in {time.perf_counter() - t0:.1f} s ({len(images.skipped)} skipped)")
    calib, val = images.split(0.5, seed=0)
    calibration = [x for x, _ in calib.batches(CALIB_BATCH)]
    _log(f"calibration {len(calib)} images, validation {len(val)} images")

    # Dense reference: accuracy, FLOPs and latency, measured on the plain timm model.
    dense_metrics, reference, _ = _run_eval(dense, val, None)
    dense_flops, _ = _flops(dense, None, val, budget)
    dense_start = _latency(dense, None, val, budget, threads)
    _log(f"dense: top-1 {dense_metrics['top1']:.1f}%, {dense_flops / 1e9:.3f} GFLOPs, {_lat_text(dense_start)}")

    rows_out: list[dict[str, Any]] = []
    for row in _rows():
        gc.collect()
        t0 = time.perf_counter()
        config = row.make_config(spec)
        with _importance_probe() as probe:
            model = prune_model(dense, config, name=MODEL_NAME, calibration=calibration, recover=row.recover)
        build_s = time.perf_counter() - t0
        metrics, _, tokens = _run_eval(model, val, reference)
        flops, flops_n = _flops(model, row, val, budget)
        latency = _latency(model, row, val, budget, threads, dense=dense)
        rows_out.append(
            {
                "name": row.name,
                "kind": row.kind,
                "settings": row.settings,
                "config_key": model.config.key(),
                "importance_criterion": probe["criterion"],
                **{k: metrics[k] for k in ("top1", "top5", "agreement", "kl")},
                "n_val": metrics["n_images"],
                "params": count_params(model),
                "gflops": flops / 1e9,
                "flops_images": flops_n,
                "tokens": tokens,
                "latency": {str(b): s for b, s in latency.items()},
                "latency_inputs": "real validation images" if row.per_image_tokens else "random normal",
                "build_s": build_s,
            }
        )
        _log(
            f"{row.name}: [{probe['criterion'] or '-'}] top-1 {metrics['top1']:.1f}%, "
            f"agree {metrics['agreement']:.1f}%, "
            f"KL {metrics['kl']:.3f}, {flops / 1e9:.3f} GFLOPs, tokens {_tokens_cell(tokens)}, "
            f"{_lat_text(latency)}, build {build_s:.1f} s"
        )
        del model

    gc.collect()
    dense_end = _latency(dense, None, val, budget, threads)
    _log(f"dense again: {_lat_text(dense_end)}")
    baseline = {b: min(dense_start[b]["ms"], dense_end[b]["ms"]) for b in LATENCY_BATCHES}

    dense_row = {
        "name": "dense",
        "kind": "dense",
        "settings": {"wrapper": False},
        "config_key": PruneConfig.dense(spec).key(),
        "importance_criterion": None,
        **{k: dense_metrics[k] for k in ("top1", "top5")},
        "agreement": 100.0,
        "kl": 0.0,
        "n_val": dense_metrics["n_images"],
        "params": count_params(dense),
        "gflops": dense_flops / 1e9,
        "flops_images": budget.flops_images_fixed,
        "tokens": None,
        "latency": {str(b): min(dense_start[b], dense_end[b], key=lambda s: s["ms"]) for b in LATENCY_BATCHES},
        "latency_inputs": "random normal",
        "build_s": 0.0,
    }
    rows_out.insert(0, dense_row)
    for r in rows_out:
        lat = r["latency"]
        r["speedup_vs_start_end_dense"] = {str(b): baseline[b] / lat[str(b)]["ms"] for b in LATENCY_BATCHES}
        r["speedup"] = {str(b): lat[str(b)].get("speedup", 1.0) for b in LATENCY_BATCHES}

    total_s = time.perf_counter() - started
    report = {
        "benchmark": "pruning",
        "model": MODEL_NAME,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _command_line(args),
        "quick": args.quick,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "threads": threads,
        "code": code,
        "split": {"fraction": 0.5, "seed": 0, "calibration": len(calib), "validation": len(val)},
        "budget": {
            "rounds": {str(k): v for k, v in budget.rounds.items()},
            "iters": {str(k): v for k, v in budget.iters.items()},
            "max_images": budget.max_images,
            "attempts": budget.attempts,
            "quiet_wait_s": budget.quiet_wait_s,
            "total_quiet_wait_s": budget.total_quiet_wait_s,
            "quiet_waited_s": _QUIET_SPENT[0],
            "quiet_busy_cores": QUIET_BUSY_CORES,
            "contended_cores": CONTENDED_CORES,
        },
        "dense_latency": {
            "start": {str(b): s for b, s in dense_start.items()},
            "end": {str(b): s for b, s in dense_end.items()},
            "baseline_ms": {str(b): v for b, v in baseline.items()},
        },
        "rows": rows_out,
        "total_s": total_s,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "pruning.md").write_text(_markdown(report), encoding="utf-8")
    _log(f"wrote {out / 'pruning.json'} and {out / 'pruning.md'} ({total_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
