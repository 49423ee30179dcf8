"""Where a latency table's prediction and a real pruned model part ways: part by part.

For a few pruned DeiT configs (dense, token merging at many blocks, top-k early) it times the whole
model, then each block's attention half (with its token reduction or merge) and MLP half alone, in
the model, on the states they really receive, and prints them beside the predictor's breakdown
(attention including the chain correction, token selection, merge, MLP). The gap between the whole
model and the sum of its parts is what running blocks back to back adds; the gap between a part and
its prediction is the table's error for that kind of part.

    python bench/latency_breakdown.py --table runs/latency_bench_t1/deit_tiny_patch16_224_b1.json --threads 1

Writes `<out>/latency_breakdown.md`. A minute or two; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from latency_models.predictor import LatencyPredictor
from latency_models.profiling import Execution, Timing, time_round
from latency_models.schema import LatencyTable
from pruning import PruneConfig, describe, prune_model
from pruning.block import attention_half, mlp_half
from pruning.config import BlockConfig
from pruning.loading import create_model
from pruning.timing import torch_threads
from pruning.tokens import NoReduction
from pruning.tokens.merge import MergeReduction
from pruning.tokens.topk import TopKReduction

TIMING = Timing(passes=5, warmup=2, min_round_s=0.1)


def configs(spec) -> dict[str, PruneConfig]:
    def at(ops: dict) -> PruneConfig:
        blocks = (
            BlockConfig(heads=b.heads, mlp_hidden=b.mlp_hidden, tokens=ops.get(i, NoReduction()))
            for i, b in enumerate(spec.blocks)
        )
        return PruneConfig(blocks=tuple(blocks))

    depth = len(spec.blocks)
    return {
        "dense": at({}),
        "merge 4@2-": at({i: MergeReduction(r=4) for i in range(2, depth)}),
        "merge 12@1-": at({i: MergeReduction(r=12) for i in range(1, depth)}),
        "keep 0.62@1": at({1: TopKReduction(keep_ratio=0.62)}),
        "keep 0.5@2": at({2: TopKReduction(keep_ratio=0.5)}),
    }


def median_round(fn, cpu: Execution) -> float:
    return statistics.median(time_round(fn, cpu, TIMING))


def measure(model, images: torch.Tensor) -> dict[str, float]:
    """Whole model, and the sums of its attention halves (with token ops) and MLP halves timed alone."""
    cpu = Execution()
    with torch.inference_mode():
        state, entering = model.embed(images), []
        for index in range(len(model.blocks)):
            entering.append(state)
            state = model.run_blocks(state, index, index + 1)
    cfg = model.config
    score, package = cfg.score, cfg.package_token
    whole, attention, mlp = [], [[] for _ in entering], [[] for _ in entering]
    for _ in range(TIMING.passes):
        whole.append(median_round(lambda: model(images), cpu))
        for i, (block, state) in enumerate(zip(model.blocks, entering, strict=True)):
            half = cfg.blocks[i]
            attention[i].append(
                median_round(lambda b=block, h=half, s=state: attention_half(b, h, s, score, package), cpu)
            )
            with torch.inference_mode():
                middle = attention_half(block, half, state, score, package)
            mlp[i].append(median_round(lambda b=block, m=middle: mlp_half(b, m), cpu))
    return {
        "whole": statistics.median(whole),
        "attention": sum(statistics.median(t) for t in attention),
        "mlp": sum(statistics.median(t) for t in mlp),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    predictor = LatencyPredictor(LatencyTable.load(args.table))
    dense = create_model(args.model)
    spec = describe(dense, args.model)
    images = torch.randn(args.batch, 3, *spec.image_size, generator=torch.Generator().manual_seed(0))
    lines = [
        f"{args.model}, batch {args.batch}, {args.threads} thread(s), table `{args.table.name}`; ms per forward pass.",
        "Measured parts are timed alone in the model; predicted attention includes the chain correction.",
        "",
        "| config | measured whole | predicted whole | error | measured attention + token op | predicted "
        "attention + select + merge | measured MLP | predicted MLP | whole - parts - embed/head |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    with torch_threads(args.threads):
        for label, config in configs(spec).items():
            model = prune_model(dense, config, name=args.model).eval()
            got = measure(model, images)
            parts = predictor.breakdown(config, spec, args.batch).parts
            predicted = sum(parts.values())
            token_ops = parts["attention"] + parts["select"] + parts["merge"]
            rest = got["whole"] - got["attention"] - got["mlp"] - parts["embed"] - parts["head"]
            lines.append(
                f"| {label} | {got['whole']:.2f} | {predicted:.2f} | {100 * (predicted / got['whole'] - 1):+.1f}% "
                f"| {got['attention']:.2f} | {token_ops:.2f} | {got['mlp']:.2f} | {parts['mlp']:.2f} | {rest:.2f} |"
            )
            print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency_breakdown.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
