"""Page faults and latency of batch-32 work under this process's malloc.

Times table entries as the profiler times them (the MLP half at a few token counts and widths,
DeiT-Tiny shapes) and the dense DeiT-Tiny forward pass, and counts the minor page faults per call.
Run it once per allocator; each run replaces its own row in the results:

    python bench/allocator_faults.py --out bench/results
    LD_PRELOAD=libtcmalloc_minimal.so.4 python bench/allocator_faults.py --out bench/results
    LD_PRELOAD=libjemalloc.so.2 python bench/allocator_faults.py --out bench/results

Writes `<out>/allocator_faults.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

from latency_models.profiling import allocator, kernel

MLP_SHAPES = ((196, 768), (197, 768), (188, 768), (197, 400), (196, 400))


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(fn, calls: int) -> tuple[float, float]:
    """(median ms per call, page faults per call) over `calls` calls after two warm-up calls."""
    with torch.inference_mode():
        fn(), fn()
        start_faults, times = faults(), []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), (faults() - start_faults) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    row = {"allocator": allocator(), "batch": args.batch}
    for tokens, hidden in MLP_SHAPES:
        key = {"op": "mlp", "batch": args.batch, "embed_dim": 192, "tokens": tokens, "mlp_hidden": hidden}
        row[f"mlp {tokens}x{hidden}"] = measure(kernel(key, cpu), args.calls)
    model = timm.create_model("deit_tiny_patch16_224").eval()  # timing does not depend on the weights
    images = torch.randn(args.batch, 3, 224, 224)
    row["DeiT-Tiny forward"] = measure(lambda: model(images), max(3, args.calls // 3))
    print(json.dumps(row), file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "allocator_faults.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["allocator"] != row["allocator"]]
    rows.append(row)
    path.write_text(json.dumps(rows, indent=1))
    parts = [k for k in row if k not in ("allocator", "batch")]
    lines = [
        f"Batch {args.batch}, one thread: median ms per call / minor page faults per call.",
        "",
        "| allocator | " + " | ".join(parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    for r in rows:
        lines.append(f"| {r['allocator']} | " + " | ".join(f"{r[p][0]:.1f} / {r[p][1]:,.0f}" for p in parts) + " |")
    (args.out / "allocator_faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
