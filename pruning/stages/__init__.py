"""Model stages: what happens to a chosen config, as an explicit list of named steps.

`vitprune prune`, the search's Pareto materialisation and the service (through the search) run
the same list, `DEFAULT_STAGES`, with `run_stages`; each entry point only fills in the record's
inputs (and the layout of its metrics.json). A stage is one public module of this package holding
one `Stage` subclass (see `_base`); the registry below finds them, so nothing here names a module.

The order every stage list follows:

    build -> recover -> [fine-tune] -> [quantise] -> evaluate -> time -> save

"fine-tune" is recovery training (`pruning.training`); "quantise" is post-training W8A8
quantisation (`pruning.quantisation`). A name in `ORDER` without a module is planned, and a list
naming it is refused until one exists. To add a stage: write
`pruning/stages/<name>.py` with a `Stage` subclass whose `name` is its entry in `ORDER`, give it
the inputs it needs in `StageInputs` and the results it makes in `ModelRecord`, and add it to the
lists that should run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pruning._plugins import import_public_modules
from pruning.stages._base import ModelRecord, Stage, StageInputs

if TYPE_CHECKING:
    from pruning.model import PrunedViT

__all__ = [
    "DEFAULT_STAGES",
    "ORDER",
    "STAGES",
    "ModelRecord",
    "Stage",
    "StageInputs",
    "UnknownStageError",
    "check_stages",
    "run_stages",
    "stage",
]

ORDER: tuple[str, ...] = ("build", "recover", "fine-tune", "quantise", "evaluate", "time", "save")
"""Every stage, built or planned, in the order a list runs them."""

DEFAULT_STAGES: tuple[str, ...] = ("build", "recover", "quantise", "evaluate", "time", "save")
"""What a chosen config goes through (a stage without its inputs does nothing: quantise without a
precision other than fp32)."""


class UnknownStageError(KeyError, ValueError):
    """A stage name that no module defines, or a list out of `ORDER`."""

    def __str__(self) -> str:
        return str(self.args[0])


def _discover() -> dict[str, type[Stage]]:
    import_public_modules(__name__, __path__)
    found = {cls.name: cls for cls in Stage.__subclasses__()}
    misplaced = sorted(set(found) - set(ORDER))
    if misplaced:
        raise RuntimeError(f"stage(s) {', '.join(misplaced)} have no place in pruning.stages.ORDER")
    return {name: found[name] for name in ORDER if name in found}


STAGES: dict[str, type[Stage]] = _discover()
"""name -> stage class, in `ORDER`."""


def stage(name: str) -> type[Stage]:
    """The stage called `name`; UnknownStageError says whether it is planned or unknown."""
    try:
        return STAGES[name]
    except KeyError:
        if name in ORDER:
            raise UnknownStageError(f"stage {name!r} is planned but not built yet") from None
        raise UnknownStageError(f"unknown stage {name!r}; the known ones are {', '.join(STAGES)}") from None


def check_stages(names: Sequence[str]) -> list[type[Stage]]:
    """The stages of a list, refused unless every one exists and they follow `ORDER` without repeats."""
    stages = [stage(name) for name in names]
    places = [ORDER.index(name) for name in names]
    if places != sorted(set(places)):
        raise UnknownStageError(f"stages {list(names)} do not follow the order {' -> '.join(ORDER)}")
    return stages


def run_stages(
    names: Sequence[str], record: ModelRecord, model: PrunedViT | None = None
) -> tuple[PrunedViT | None, ModelRecord]:
    """Run the stages `names` in turn; returns the last model and record.

    `model` is what the first stage takes: None for a list starting with "build".
    """
    for cls in check_stages(names):
        model, record = cls().run(model, record)
    return model, record
