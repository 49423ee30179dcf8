"""Token ops on the latency side: what prices each one, found by a registry.

One public module per token op (`topk.py`, `threshold.py`, `merge.py`) defines `PRICING`, a
`TokenPricing` (see `_base`): the table entries that time the op (fields, grid keys, profiler
kernel, predictor arrays, mobile-CPU and FPGA costs), its step in a reducing chain, what a block
running it costs in a prediction and how it changes the token flow, and how validation draws it.
Modules starting with `_` hold what ops share (`_select`: the `select` entries that time top-k
and threshold alike). The profiler, the grid, the schema, the predictor, the analytic models and
validation ask this registry; none of them names an op.

A new token op's pricing goes in a new module here, `<kind>.py`, beside its runtime module
`pruning/tokens/<kind>.py`: a `TokenPricing` subclass with the same `kind` and `order`, and an
`EntryKind` if no existing entry times its work. Like the rest of `latency_models.profiling`, it
may import only the standard library and torch: the profiler runs on bare devices.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import EntryKind, TokenFlow, TokenPricing

__all__ = ["ENTRY_KINDS", "PRICINGS", "EntryKind", "TokenFlow", "TokenPricing", "pricing"]


def _discover() -> dict[str, TokenPricing]:
    found = [
        importlib.import_module(f"{__name__}.{module.name}").PRICING
        for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_")
    ]
    return {p.kind: p for p in sorted(found, key=lambda p: p.order)}


PRICINGS: dict[str, TokenPricing] = _discover()
"""Token op kind -> its pricing, in the registry's order ("none", which costs nothing, has none)."""

ENTRY_KINDS: dict[str, EntryKind] = {p.entry.op: p.entry for p in PRICINGS.values()}
"""Table entry op -> the entry kind that times a token op's work, in the order grids plan them."""


def pricing(kind: str) -> TokenPricing:
    """The pricing of token op `kind`; KeyError naming where it belongs if there is none."""
    try:
        return PRICINGS[kind]
    except KeyError:
        raise KeyError(
            f"token op {kind!r} has no pricing module (latency_models/profiling/ops/{kind}.py); "
            f"priced ops: {', '.join(PRICINGS)}"
        ) from None
