"""python -m latency_models.profiling: measure a latency table on this machine (needs only torch)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from .execution import DTYPES, MODES, Execution
from .grid import SHAPES, Shape, entry_id, plan
from .run import Timing, profile


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _shape(text: str) -> Shape:
    """A known model name, or a JSON object of Shape fields (as `vitprune profile --dry-run` prints)."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        return Shape(**json.loads(text))
    except (ValueError, TypeError) as error:
        known = ", ".join(sorted(SHAPES))
        raise argparse.ArgumentTypeError(f"{text!r}: not a known shape ({known}) nor a Shape JSON ({error})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m latency_models.profiling",
        description="Measure a vitprune latency table on this machine (needs only torch).",
    )
    parser.add_argument(
        "--shape",
        action="append",
        required=True,
        type=_shape,
        help=f"model shape to cover (repeatable): one of {', '.join(sorted(SHAPES))}, or a JSON object of Shape fields",
    )
    parser.add_argument("--batch", type=_ints, default=[1], help="batch sizes, e.g. 1,32")
    parser.add_argument("--out", type=Path, required=True, help="table file to write (JSON)")
    parser.add_argument("--name", default=platform.node() or "device", help="device name stored in the table")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N for another GPU)")
    parser.add_argument(
        "--dtype", default="float32", choices=list(DTYPES), help="number format the model is deployed in"
    )
    parser.add_argument(
        "--mode",
        default="eager",
        choices=list(MODES),
        help="how it runs: eagerly, or each forward replayed as one CUDA graph (GPUs; what a deployment does)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    parser.add_argument("--passes", type=int, default=5, help="timed rounds per entry, one per pass over the grid")
    parser.add_argument("--dry-run", action="store_true", help="print the grid size and exit")
    args = parser.parse_args(argv)
    try:
        execution = Execution(args.device, args.dtype, args.mode)
    except ValueError as error:
        parser.error(str(error))
    keys = [k for shape in args.shape for k in plan(shape, args.batch)]
    keys = list({entry_id(k): k for k in keys}.values())
    counts: dict[str, int] = {}
    for k in keys:
        counts[k["op"]] = counts.get(k["op"], 0) + 1
    print(f"grid: {len(keys)} entries ({', '.join(f'{n} {op}' for op, n in counts.items())})", file=sys.stderr)
    if args.dry_run:
        return 0
    start = time.monotonic()
    profile(
        keys,
        name=args.name,
        out=args.out,
        execution=execution,
        threads=args.threads,
        timing=Timing(passes=args.passes),
    )
    print(f"wrote {args.out} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
