"""Token ops: the registry of every way a block can reduce its tokens, and the state they act on.

A token op is one public module of this package holding one `TokenOp` subclass (see `_base`): its
config fields, runtime step, descriptions and search axis. Its cost lives in one module of
`latency_models/profiling/ops/`. Nothing else names an op; everything else asks this registry.
To add an op: write `pruning/tokens/<kind>.py` and `latency_models/profiling/ops/<kind>.py`
(docs/extending.md walks through it).

The registry and the op configs import without torch (client commands validate job specs with
them); the runtime (`TokenState`, the ops' `apply`) loads torch when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from pruning._plugins import import_public_modules
from pruning.tokens._base import NoReduction, SearchAxis, TokenOp

if TYPE_CHECKING:
    from pruning.tokens._state import TokenState, attention_mask, padded_widths, paint_canvas

__all__ = [
    "TOKEN_OPS",
    "NoReduction",
    "SearchAxis",
    "TokenOp",
    "TokenReduction",
    "TokenState",
    "UnknownTokenOpError",
    "attention_mask",
    "padded_widths",
    "paint_canvas",
    "token_modes",
    "token_op",
]


class UnknownTokenOpError(KeyError, ValueError):
    """A token op kind that no module of this package defines."""

    def __str__(self) -> str:
        return str(self.args[0])


def _discover() -> dict[str, type[TokenOp]]:
    import_public_modules(__name__, __path__)
    ops = [NoReduction, *(c for c in TokenOp.__subclasses__() if c is not NoReduction)]
    return {op.kind_name(): op for op in sorted(ops, key=lambda op: op.order)}


TOKEN_OPS: dict[str, type[TokenOp]] = _discover()
"""kind -> op class, in listing order ("none" last)."""

TokenReduction = Annotated[Union[tuple(TOKEN_OPS.values())], Field(discriminator="kind")]  # noqa: UP007
"""Any token op, parsed by its `kind`."""


def token_op(kind: str) -> type[TokenOp]:
    try:
        return TOKEN_OPS[kind]
    except KeyError:
        known = ", ".join(TOKEN_OPS)
        raise UnknownTokenOpError(f"unknown token op {kind!r}; the known ones are {known}") from None


def reducing_ops() -> list[type[TokenOp]]:
    """Every op but "none"."""
    return [op for op in TOKEN_OPS.values() if op is not NoReduction]


def mix_problem(first: type[TokenOp], second: type[TokenOp]) -> str | None:
    """Why two ops cannot be searched together as `first+second`, or None if they can.

    A mixed space gives each block one op: the first op's parameter at the space's token blocks wins
    where it reduces, the second op's group parameter acts everywhere else. So the first must be
    searched per block and the second per group, and an op that needs the same count in every image
    cannot share a config with one whose counts differ per image.
    """
    name_1, name_2 = first.kind_name(), second.kind_name()
    for fixed, varying in ((first, second), (second, first)):
        if fixed.fixed_counts and varying.per_image:
            fixed_name, varying_name = fixed.kind_name(), varying.kind_name()
            alternatives = " or ".join(m for m in token_modes() if fixed_name in m.split("+") and "+" in m)
            return (
                f"{fixed_name} cannot be combined with {varying_name}: {varying_name} gives each image its own "
                f"token count, {fixed_name} needs the same count for every image"
                + (f"; use {alternatives}" if alternatives else "")
            )
    if first.axis.per == "group" and second.axis.per == "block":
        return f"write the mixed mode as {name_2}+{name_1}"
    if first.axis.per == second.axis.per:
        mixed = [m for m in token_modes() if "+" in m]
        return f"tokens={name_1}+{name_2}: the only mixed mode{'s are' if len(mixed) > 1 else ' is'} {', '.join(mixed)}"
    return None


def token_modes() -> tuple[str, ...]:
    """What a search space's `tokens` may say: each op alone, the pairs that mix, "none"."""
    ops = reducing_ops()
    singles = [op.kind_name() for op in ops]
    pairs = [
        f"{a.kind_name()}+{b.kind_name()}"
        for a in ops
        for b in ops
        if a is not b and a.axis.per == "block" and b.axis.per == "group" and not _clash(a, b)
    ]
    return (*singles, *pairs, NoReduction.kind_name())


def _clash(a: type[TokenOp], b: type[TokenOp]) -> bool:
    return (a.fixed_counts and b.per_image) or (b.fixed_counts and a.per_image)


def mode_ops(tokens: str) -> list[type[TokenOp]]:
    """The ops a search space's `tokens` names, in order; ValueError saying what is wrong otherwise."""
    if tokens == NoReduction.kind_name():
        return []
    names = tokens.split("+")
    for name in names:
        if name not in TOKEN_OPS or name == NoReduction.kind_name():
            raise ValueError(f"tokens={tokens!r}: unknown token op {name!r}; choose from {', '.join(token_modes())}")
    if len(names) > 2 or len(set(names)) != len(names):
        raise ValueError(f"tokens={tokens!r}: choose from {', '.join(token_modes())}")
    ops = [TOKEN_OPS[name] for name in names]
    if len(ops) == 2 and (problem := mix_problem(*ops)):
        raise ValueError(problem)
    return ops


def __getattr__(name: str):
    # The runtime state needs torch; it is loaded only when a model runs.
    if name in ("TokenState", "attention_mask", "padded_widths", "paint_canvas"):
        from pruning.tokens import _state

        return getattr(_state, name)
    raise AttributeError(f"module 'pruning.tokens' has no attribute {name!r}")
