"""Tables measured elsewhere (e.g. with `python -m latency_models.profiling` on a user's board) and
imported under a name of the user's choosing: `imported/<name>.json` in the profiles directory.

Imported tables take every name no built-in kind claims, so this kind is asked last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from latency_models.devices.base import DeviceProfile, DeviceSettings, coverage, float_only
from latency_models.schema import LatencyTable
from pruning.spec import ModelSpec

__all__ = ["NAME", "ImportedDevice", "ImportedKind"]

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ImportedDevice:
    """One imported table file."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def profile(self) -> DeviceProfile:
        try:
            table = LatencyTable.load(self.path)
            what = f"{table.device.hardware} ({table.device.runtime})"
            return DeviceProfile(self.name, "imported", what, True, coverage(table))
        except ValueError as error:
            return DeviceProfile(self.name, "imported", f"unreadable: {error}", False, "")

    def ready(self, spec: ModelSpec, batches: list[int]) -> bool:
        return True

    def table(self, spec: ModelSpec, batches: list[int], progress: bool = True) -> LatencyTable:
        return LatencyTable.load(self.path)

    def priced_as(self, precision: str) -> str | None:
        return float_only(self.name, precision)

    def fully_integer(self, precision: str) -> int | None:
        return None

    def details(self) -> dict[str, Any]:
        table = LatencyTable.load(self.path)
        return {"table": table.device.model_dump(mode="json") | {"entries": len(table.entries)}}


class ImportedKind:
    """The tables under `imported/`, by file name; `built_in` says which names other kinds keep."""

    aliases: Mapping[str, str] = MappingProxyType({})

    def __init__(self, settings: DeviceSettings, built_in: Callable[[str], bool]) -> None:
        self.root = settings.root / "imported"
        self.built_in = built_in

    def claims(self, name: str) -> bool:
        return True  # asked last: any name left is an imported one, or a bad one `path` refuses

    def path(self, name: str) -> Path:
        """Where the table imported as `name` lives (a bad or built-in name is refused)."""
        if not NAME.match(name) or self.built_in(name):
            raise ValueError(
                f"device name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-' (and not a built-in name)"
            )
        return self.root / f"{name}.json"

    def listed(self) -> list[ImportedDevice]:
        return [ImportedDevice(path.stem, path) for path in sorted(self.root.glob("*.json"))]

    def backend(self, name: str) -> ImportedDevice | None:
        path = self.path(name)
        return ImportedDevice(name, path) if path.exists() else None

    def import_table(self, path: Path, name: str) -> LatencyTable:
        """Validate a table file and store it as device `name`."""
        target = self.path(name)  # a bad name is refused before the file is read
        table = LatencyTable.load(path)
        info = table.device
        note = f"imported from a {info.kind} table named {info.name!r}"
        device = info.model_copy(
            update={"name": name, "kind": "imported", "notes": " ".join((info.notes, note)).strip()}
        )
        imported = LatencyTable(device=device, entries=table.entries)
        imported.save(target)
        return imported
