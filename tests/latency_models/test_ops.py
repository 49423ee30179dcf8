"""The token-op pricing registry: every op of `pruning.tokens` is priced, and its entries reach every layer."""

from __future__ import annotations

import pytest

from latency_models.analytic import PRESETS, analytic_model
from latency_models.profiling import SHAPES, composite_parts, plan
from latency_models.profiling.ops import ENTRY_KINDS, PRICINGS, pricing
from latency_models.schema import TOKEN_OP_ENTRIES, ReducingChainEntry
from pruning.tokens import TOKEN_OPS, NoReduction

TINY = SHAPES["deit_tiny_patch16_224"]


def test_every_token_op_has_a_pricing_module_in_the_registry_order():
    reducing = [kind for kind in TOKEN_OPS if kind != NoReduction.kind_name()]
    assert list(PRICINGS) == reducing
    for kind, priced in PRICINGS.items():
        assert priced.order == TOKEN_OPS[kind].order
    with pytest.raises(KeyError, match="no pricing module"):
        pricing("nonexistent")


@pytest.mark.parametrize("kind", sorted(PRICINGS))
def test_each_op_is_planned_validated_and_priced(kind):
    priced = PRICINGS[kind]
    keys = plan(TINY, [1])
    own = [k for k in keys if k["op"] == priced.entry.op]
    assert own and all(TOKEN_OP_ENTRIES[priced.entry.op].model_validate({**k, "median_ms": 1.0, "spread_ms": 0.0})
                       for k in own)  # fmt: skip
    chains = [k for k in keys if k["op"] == "reducing_chain" and k["reduction"] == kind]
    assert chains and ReducingChainEntry.model_validate({**chains[0], "median_ms": 1.0, "spread_ms": 0.0})
    assert all(any(part["op"] == priced.entry.op for part in composite_parts(k)) for k in chains)
    for params in PRESETS.values():
        assert analytic_model(params).cost(own[-1]) > 0


def test_entry_kinds_are_the_ones_the_ops_name():
    assert set(ENTRY_KINDS) == {p.entry.op for p in PRICINGS.values()} == set(TOKEN_OP_ENTRIES)
