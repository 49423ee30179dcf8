"""What the predictor's measured corrections buy: one validation's configs, priced with and without each.

Takes a table and the report `latency_accuracy.py` (or `vitprune lut validate`) wrote with it,
rebuilds the same random configs from the report's seed, and prices each three times: with the
table as it is; without its off-grid chain entries (the predictor then interpolates between the
grid's multiples of 8 alone); and without its reducing chains and whole-model entry (token
reductions then cost their entries timed alone, and no block is scaled). All are compared with the same
measurements, so the differences are the predictor's alone. No timing: seconds.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python bench/correction_ablation.py \
        --table runs/latency_bench_t1_v3/deit_tiny_patch16_224_b1.json \
        --report bench/results/threads1/latency_accuracy_deit_tiny_patch16_224_b1.json --seed 6 --batch 1
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from latency_models.predictor import LatencyPredictor, shape_of
from latency_models.profiling import offgrid_tokens
from latency_models.schema import LatencyTable
from latency_models.validate import kept_counts, validation_configs
from pruning import describe, prune_model
from pruning.loading import create_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True, help="the validation report (.json) made with --table")
    parser.add_argument("--seed", type=int, required=True, help="the seed the validation drew its configs with")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    rows = json.loads(args.report.read_text())["rows"]
    dense = create_model(args.model)
    spec = describe(dense, args.model)
    probes = set(offgrid_tokens(shape_of(spec).tokens))

    def without(drop) -> LatencyPredictor:
        return LatencyPredictor(table.model_copy(update={"entries": [e for e in table.entries if not drop(e)]}))

    predictors = {
        "as it is": LatencyPredictor(table),
        "without off-grid entries": without(lambda e: e.op == "chain" and e.tokens in probes),
        "without reducing chains and model": without(lambda e: e.op in ("reducing_chain", "model")),
    }
    # The configs exactly as `validate` drew them (same seed, same order, the token ops the table prices).
    unpriced = predictors["as it is"].unpriced(spec, args.batch)
    configs = validation_configs(spec, len(rows), random.Random(args.seed), unpriced)
    if [c.key() for c in configs] != [r["config"] for r in rows]:
        parser.error("the report's configs are not the ones this seed draws: give the seed its validation used")
    images = torch.randn(args.batch, 3, *spec.image_size, generator=torch.Generator().manual_seed(args.seed))
    # Threshold configs are priced at the counts they keep on the validation's images.
    kept = [
        kept_counts(prune_model(dense, c, name=args.model).eval(), images) if c.per_image else None for c in configs
    ]
    print(f"{args.model}, batch {args.batch}, {len(rows)} configs: error of the prediction against the measurement")
    print("| table | against | within +-10% | MAPE | median error |")
    print("|---|---|--:|--:|--:|")
    for name, predictor in predictors.items():
        predicted = np.array([predictor.predict(c, spec, args.batch, k).ms for c, k in zip(configs, kept, strict=True)])
        for key, label in (("normalised_ms", "normalised"), ("measured_ms", "raw")):
            error = predicted / np.array([r[key] for r in rows]) - 1
            within, mape = np.mean(np.abs(error) <= 0.1), np.mean(np.abs(error))
            print(f"| {name} | {label} | {100 * within:.0f}% | {100 * mape:.1f}% | {100 * np.median(error):+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
