"""What a token op's pricing module provides, and what the generic code hands its hooks.

Two kinds of thing, kept apart because two ops may share table entries (top-k and threshold are
both timed by the `select` entries, as a gather or a compaction):

- an `EntryKind`: a kind of table entry a token op is timed by: its fields, its grid, the profiler
  kernel doing its work, the predictor arrays built from a table's entries, and its cost under
  each analytic device model;
- a `TokenPricing`: one token op (its `kind` is the one `pruning.tokens` gives it): which entry
  kind times it, its step in a reducing chain (a composite timed whole), what a block running it
  costs in a prediction and how it changes the tokens that flow on, and how validation draws it.

Everything here is plain Python or torch: this package runs on a bare device with torch alone,
so a hook is given what it needs (an attention module, array look-ups, an analytic model's
primitives) rather than importing it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = ["BOOL", "COUNT", "POSITIVE", "EntryKind", "TokenFlow", "TokenPricing", "randn"]

POSITIVE, COUNT, BOOL = "positive", "count", "bool"
"""Field types of a table entry as plain data (`latency_models.schema` makes pydantic fields of
them): an int > 0, an int >= 0, a bool; a tuple of strings is one of those strings."""


def randn(gen: torch.Generator, device: torch.device, *size: int) -> torch.Tensor:
    """Seeded random inputs, drawn on the CPU so that every device times the same values."""
    return torch.randn(*size, generator=gen).to(device)


@dataclass(slots=True)
class TokenFlow:
    """The tokens a block hands on, as the predictor follows a config through the model (updated in
    place, block by block: a search prices thousands of configs a second)."""

    prefix: int
    """Class and distillation tokens (never reduced)."""
    tokens: int
    """Every token: prefix, patch tokens and the package token."""
    n_patch: int
    package: bool = False
    """A package token (the dropped tokens fused into one) follows the patch tokens."""
    masked: bool = False
    """The batch is padded (a per-image op ran in a batch of several images): attention masks its keys."""


class EntryKind:
    """A kind of table entry that times a token op's own work (the docstring becomes the entry's)."""

    op: ClassVar[str]
    """The entry's `op` in a table."""
    fields: ClassVar[dict[str, str | tuple[str, ...]]]
    """Its key fields beyond batch and embed dim, in the order tables list them (see POSITIVE)."""
    absent: ClassVar[str | None] = None
    """None: a table without these entries prices nothing. Otherwise why a table may lack them (it
    was made before they existed): the table still prices every config that does not need them,
    and this sentence ends the error for one that does."""

    def keys(self, shape: Any, batch: int, tokens: list[int]) -> list[dict]:
        """The grid's entries at `batch` for a `profiling.Shape`; `tokens` is the token ops' token grid."""
        raise NotImplementedError

    def kernel(self, key: dict, device: torch.device, gen: torch.Generator) -> Callable[[], object]:
        """A zero-argument callable doing the work of entry `key` once, on inputs drawn from `gen`."""
        raise NotImplementedError

    def arrays(self, rows: Callable, grid2: Callable, shape: Any, size: int) -> tuple[dict, Any]:
        """The predictor's dense arrays from a table's entries, and the mask of points outside its grid.

        `rows(op, **match)`: the table's entries of kind `op` at the batch and embed dim looked up,
        with the fields in `match` (CoverageError if there are none); `grid2(entries, x, y, size,
        size)`: a dense bilinear (size x size) array over fields (or functions of an entry) x and y,
        and its outside mask. Returns {variant: array}, the mask."""
        raise NotImplementedError

    def mobile_cpu(self, cpu: Any, key: dict) -> list:
        """The ops behind entry `key` for `latency_models.analytic.MobileCpu`: (parts, bytes) each,
        parts a list of (kind of work, amount); `cpu` gives its primitives (`copy`, `FP32`)."""
        raise NotImplementedError

    def fpga(self, fpga: Any, key: dict) -> list:
        """The ops behind entry `key` for `latency_models.analytic.Fpga`: (cycles, DDR bytes) each;
        `fpga` gives its primitives (`unit`, `matmul_cycles`, `spill`) and parameters."""
        raise NotImplementedError


class TokenPricing:
    """What prices one token op; the registry lists one instance per op module."""

    kind: ClassVar[str]
    """The op's kind, as `pruning.tokens` registers it."""
    order: ClassVar[int]
    """The op's place in the registry, the same as in `pruning.tokens`: it sets the order of the
    entries a grid plans (so tables list them as they always did) and of the kinds in summaries."""
    entry: ClassVar[EntryKind]
    """The table entries that time this op's work."""
    share: ClassVar[float | None] = None
    """Validation: the share of random configs that use this op (their slices of [0, 1) follow the
    registry's order); None for the op drawn when no other is (top-k)."""
    run: ClassVar[bool] = False
    """Validation: drawn as one value at every block from a random one on (ToMe's schedule), beside
    the default op at a few blocks, rather than at a few scattered blocks."""

    @property
    def correction(self) -> str:
        """The key of the in-model correction that the reducing chains of this op measure."""
        return self.kind

    # -- grid and profiler -------------------------------------------------------------------------

    def chain_tokens_out(self, tokens_in: int, prefix: int, tokens: list[int]) -> int:
        """The tokens left by this op in the reducing chain that starts at `tokens_in` (on `tokens`)."""
        raise NotImplementedError

    def chain_parts(self, key: dict, attention: Callable[..., dict]) -> list[dict]:
        """The reducing block's attention and op entries in reducing chain `key`; `attention(tokens,
        scored=False)` makes an attention entry key of the chain's shape."""
        raise NotImplementedError

    def chain_step(self, key: dict, device: torch.device) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """(attention half, x) -> tokens after the reducing block's attention and this op, in chain `key`."""
        raise NotImplementedError

    # -- predictor ---------------------------------------------------------------------------------

    def chain_cost(self, look: Any, key: Any, heads: int) -> float:
        """The table's price of the reducing block's attention and op in reducing chain entry `key`.

        `look` is the predictor's lookup: `look.attention[(scored, masked)][tokens, heads]`,
        `look.entries(op)` (this op's arrays, CoverageError where the table lacks them),
        `look.outside[op]`, `look.reducing[correction][tokens]`."""
        raise NotImplementedError

    def price(self, look: Any, flow: TokenFlow, kept: int, package_token: bool) -> tuple[float, bool]:
        """(ms, outside the grid) of this op at a block that `flow` enters, keeping `kept` patch tokens,
        with the reducing chains' correction included; moves `flow` on to the tokens after the op."""
        raise NotImplementedError

    # -- validation --------------------------------------------------------------------------------

    def sample(self, rng: random.Random, n_patch: int) -> dict:
        """The fields of a random instance, for a model of `n_patch` patch tokens."""
        raise NotImplementedError
