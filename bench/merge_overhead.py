"""What token merging costs against what it saves, on DeiT-Tiny shapes on this CPU.

Run by hand (never from the tests):

    python bench/merge_overhead.py --out bench/results [--threads 2] [--passes 15]

For batch 1 and 32 and r = 4, 8, 16, 32 pairs merged out of the 197 tokens entering a block, it times

- the runtime's merge (`pruning.tokens.merge.merge_tokens` on a `TokenState`, sizes all one as at a first merge),
- the profiler's merge kernel (`latency_models.profiling.ops.merge.merge_pairs`, which also averages the
  keys over heads, as the merging block's attention does for it),
- a whole later block (`pruning.block.block_forward`: attention and MLP) at 197 tokens and at 197 - r
  merged tokens (with the size bias of proportional attention): the difference is what each later
  block saves. The merging block's own MLP saves about half of that again. The two are timed in
  adjacent rounds and the saving is the median over passes of their difference, so the machine's
  drift over a run cancels out.

Blocks rotate over the 12 blocks of a randomly initialised DeiT-Tiny (latency does not depend on the
weights), so their weights are not cached from the previous call, as in a real forward pass. Every
figure is the profiler's: the median over passes of each round's median, rounds interleaved over all
items so a slow period of the shared machine hits a few rounds of many items. Writes
`<out>/merge_overhead.json` and a Markdown `<out>/merge_overhead.md` (quoted in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import timm
import torch

from latency_models.profiling import Execution, Timing, summarise, time_round
from latency_models.profiling.ops.merge import merge_pairs
from latency_models.profiling.run import hardware_name
from pruning.block import block_forward
from pruning.config import BlockConfig
from pruning.tokens import TokenState
from pruning.tokens.merge import MergeReduction, merge_tokens

TOKENS, PREFIX = 197, 1
COUNTS = (4, 8, 16, 32)
BATCHES = (1, 32)


def _items(batch: int, blocks: list[torch.nn.Module]) -> dict[str, Callable[[], object]]:
    """Every timed callable at `batch`, by name."""
    generator = torch.Generator().manual_seed(batch)
    dim, heads, head_dim = 192, 3, 64
    x = torch.randn(batch, TOKENS, dim, generator=generator)
    qkv = torch.randn(batch, TOKENS, 3 * heads * head_dim, generator=generator)
    k = qkv.reshape(batch, TOKENS, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[1]
    keys = k.mean(dim=1)
    ones = torch.ones(batch, TOKENS)
    dense = BlockConfig(heads=heads, mlp_hidden=4 * dim)
    turn = {"i": -1}

    def block(state: TokenState) -> Callable[[], object]:
        def run() -> object:
            turn["i"] = (turn["i"] + 1) % len(blocks)
            return block_forward(blocks[turn["i"]], dense, state, "cls_attn", False)

        return run

    items: dict[str, Callable[[], object]] = {}
    for r in COUNTS:
        state = TokenState(x=x, n_prefix=PREFIX)
        reduction = MergeReduction(r=r)
        items[f"merge r={r}"] = lambda s=state, m=reduction: merge_tokens(s, keys, m)
        items[f"kernel r={r}"] = lambda r=r: merge_pairs(x, k, ones, PREFIX, r)
        items[f"block 197 r={r}"] = block(TokenState(x=x, n_prefix=PREFIX))
        items[f"block r={r}"] = block(merge_tokens(state, keys, reduction))  # with its sizes: the bias is on
    return items


def measure(batch: int, blocks: list[torch.nn.Module], timing: Timing) -> list[dict]:
    items = _items(batch, blocks)
    rounds: dict[str, list[list[float]]] = {name: [] for name in items}
    cpu = Execution()
    order = sorted(items, key=lambda name: not name.startswith("block"))  # each dense block next to its pair
    for n in range(timing.passes):
        for name in order:
            rounds[name].append(time_round(items[name], cpu, timing))
        print(f"batch {batch}: pass {n + 1}/{timing.passes}", file=sys.stderr, flush=True)
    ms = {name: summarise(r) for name, r in rounds.items()}
    dense = summarise([r for name, rs in rounds.items() if name.startswith("block 197") for r in rs])
    rows = []
    for r in COUNTS:
        pairs = zip(rounds[f"block 197 r={r}"], rounds[f"block r={r}"], strict=True)
        saved = statistics.median(statistics.median(a) - statistics.median(b) for a, b in pairs)
        rows.append(
            {
                "batch": batch,
                "r": r,
                "tokens_after": TOKENS - r,
                "merge_ms": round(ms[f"merge r={r}"][0], 4),
                "merge_spread_ms": round(ms[f"merge r={r}"][1], 4),
                "kernel_ms": round(ms[f"kernel r={r}"][0], 4),
                "block_197_ms": round(dense[0], 4),
                "block_197_spread_ms": round(dense[1], 4),
                "block_merged_ms": round(ms[f"block r={r}"][0], 4),
                "block_merged_spread_ms": round(ms[f"block r={r}"][1], 4),
                "saved_per_block_ms": round(saved, 4),
                "merge_over_saved": round(ms[f"merge r={r}"][0] / saved, 3) if saved > 0 else None,
            }
        )
    return rows


def to_markdown(result: dict) -> str:
    lines = [
        "# Token merging: cost of the op vs what a later block saves (DeiT-Tiny shapes)",
        "",
        f"{result['hardware']}, {result['threads']} torch threads, torch {result['torch']}; "
        f"load average {result['load_before']} before, {result['load_after']} after. "
        f"Merge of r pairs out of {TOKENS} tokens; 'merge op' is `pruning.tokens.merge.merge_tokens`, 'kernel' the "
        "profiler's copy (which also averages the keys over heads); a block is attention + MLP "
        "(`pruning.block.block_forward`) at 197 tokens vs at 197 - r merged tokens with the size bias, timed in "
        "adjacent rounds; 'saved' is the median over passes of their difference. 'merge / saved' is how many "
        "later blocks at the fewer tokens repay one merge (the merging block's own MLP saves about half a block "
        f"more). Medians over {result['passes']} passes of each round's median"
        + (", glibc's heap kept (no pages returned to the OS between calls)." if result["allocator_pinned"] else "."),
        "",
        "| batch | r | tokens after | merge op ms | kernel ms | block @197 ms | block after merge ms | "
        "saved per block ms | merge / saved |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    spreads = {}
    for row in result["rows"]:
        spreads[row["batch"]] = max(spreads.get(row["batch"], 0.0), row["block_197_spread_ms"])
    lines[2] += (
        " Spread (p90 - p10) of single block calls: "
        + ", ".join(f"{spread:.2f} ms at batch {batch}" for batch, spread in spreads.items())
        + "; savings well below it are noise."
    )
    for row in result["rows"]:
        ratio = "n/a" if row["merge_over_saved"] is None else f"{row['merge_over_saved']:.2f}"
        lines.append(
            f"| {row['batch']} | {row['r']} | {row['tokens_after']} | {row['merge_ms']:.3f} | {row['kernel_ms']:.3f} | "
            f"{row['block_197_ms']:.3f} | {row['block_merged_ms']:.3f} | {row['saved_per_block_ms']:.3f} | {ratio} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def pin_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    At batch 32 a block's MLP buffers (19 MB) sit near glibc's adaptive mmap and trim thresholds;
    depending on what ran before, every call of some items then faults ~9,400 pages in anew (+10 ms
    on a 47 ms block, measured with getrusage), which would decide the savings instead of the token
    counts. A long-running server settles into the same steady state. False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim, mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
    return bool(libc.mallopt(trim, 1 << 30)) and bool(libc.mallopt(mmap, 1 << 30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pinned = pin_allocator()
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    blocks = list(model.blocks)
    timing = Timing(passes=args.passes, warmup=2, min_round_s=0.2)
    load_before = os.getloadavg()
    with torch.inference_mode():
        rows = [row for batch in BATCHES for row in measure(batch, blocks, timing)]
    result = {
        "hardware": hardware_name(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} logical cpus",
        "threads": torch.get_num_threads(),
        "passes": args.passes,
        "allocator_pinned": pinned,
        "torch": torch.__version__,
        "load_before": " ".join(f"{v:.2f}" for v in load_before),
        "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": "python bench/merge_overhead.py " + shlex.join(sys.argv[1:]),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "merge_overhead.json").write_text(json.dumps(result, indent=1))
    (args.out / "merge_overhead.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
