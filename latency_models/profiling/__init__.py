"""Measure a latency table on this machine. Needs only Python and torch.

This package is deliberately self-contained (standard library + torch, nothing else from vitprune,
relative imports only), so a table can be measured on the device that will run the model: an ARM
board, a Jetson, a phone under Termux. Copy this folder there (or `pip install --no-deps vitprune`)
and run

    python -m latency_models.profiling --shape deit_tiny_patch16_224 --batch 1,32 --out table.json

The JSON it writes follows `latency_models.schema` (validated when the table is imported).

What is timed is the work the pruned runtime (`pruning.block`, `pruning.tokens`) does, op for op:
the attention half of a block (LayerNorm, qkv, fused or explicit attention, projection, residual),
the MLP half, each token op's own work (`ops/`: one module per op, found by its registry), patch
embedding and the classifier; and a few composites timed whole, for what parts cost together beyond
their sum: dense blocks back to back, a dense and a token-reducing block in pairs, the whole dense
model. A test runs these kernels and the runtime side by side on the same weights and checks that
they compute the same values.

Timing: passes over the whole grid, one warmed-up round per entry per pass; the figure is the
median over passes of each round's median (rounds hit by a stall from another process are
outvoted, and no entry is timed all at one moment), with p90 - p10 kept as the spread. Each
kernel rotates over several copies of its weights so that, as in a real forward pass, weights are
not already sitting in cache from the previous call. Results are appended to `<out>.partial.jsonl`
as they come, so an interrupted run resumes where it stopped.
"""

from .execution import DTYPES, MODES, Execution
from .grid import (
    SCHEMA,
    SCHEMA_VERSION,
    SHAPES,
    Shape,
    composite_parts,
    entry_id,
    offgrid_tokens,
    plan,
    token_grid,
    width_grid,
)
from .kernels import kernel
from .run import Timing, allocator, profile, runtime_name, summarise, time_round

__all__ = [
    "DTYPES",
    "MODES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SHAPES",
    "Execution",
    "Shape",
    "Timing",
    "allocator",
    "composite_parts",
    "entry_id",
    "kernel",
    "offgrid_tokens",
    "plan",
    "profile",
    "runtime_name",
    "summarise",
    "time_round",
    "token_grid",
    "width_grid",
]
