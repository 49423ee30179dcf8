"""Finding plug-in modules: a package whose public modules each define one subclass of a base."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

__all__ = ["import_public_modules"]


def import_public_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of `package` (found on its `__path__`) whose name does not start with `_`,
    so that the subclasses they define exist; the registry then lists the base's subclasses."""
    for module in pkgutil.iter_modules(path):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
