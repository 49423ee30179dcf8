"""The paths in a submitted job spec: uploads (`upload:...` refs) or server-side paths under configured roots.

A job names files the workers will read. Letting a client name any path would let it read any
file the service can (and learn which exist), so a path must be an upload's ref or lie under
one of the roots the operator configured (VITPRUNE_ROOTS). Refs become absolute paths in the
artifact store, which every worker shares.
"""

from __future__ import annotations

from pathlib import Path

from search.job import JobSpec
from server.settings import Settings
from server.store import ArtifactStore, OutsideStoreError

__all__ = ["UPLOAD_PREFIX", "PathError", "resolve_paths"]

UPLOAD_PREFIX = "upload:"
FIELDS = ("weights", "table", "calib", "val", "class_map")
FOLDERS = frozenset({"calib", "val"})  # image folders; the other fields name files


class PathError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def resolve_paths(spec: JobSpec, settings: Settings, store: ArtifactStore) -> JobSpec:
    """`spec` with every path an absolute, existing, allowed path; PathError names the field otherwise."""
    resolved = {}
    for field in FIELDS:
        value = getattr(spec, field)
        if value is not None:
            resolved[field] = _resolve(field, str(value), settings, store)
    return spec.model_copy(update=resolved)


def _resolve(field: str, value: str, settings: Settings, store: ArtifactStore) -> Path:
    # No file system allows NUL in a name, and os refuses it with a ValueError that names no field.
    if "\x00" in value:
        raise PathError(field, f"{value!r} contains a NUL character, which no path can; remove it")
    path = _existing(field, value, settings, store)
    if field in FOLDERS and not path.is_dir():
        raise PathError(field, f"{value!r} is not a folder; give the folder of images (one sub-folder per class)")
    if field not in FOLDERS and not path.is_file():
        raise PathError(field, f"{value!r} is not a file; give the {field} file itself")
    return path


def _existing(field: str, value: str, settings: Settings, store: ArtifactStore) -> Path:
    if value.startswith(UPLOAD_PREFIX):
        try:
            path = store.path(Path("uploads") / value.removeprefix(UPLOAD_PREFIX))
        except OutsideStoreError as error:
            raise PathError(field, f"{value!r} is not an upload reference") from error
        if not path.exists():
            raise PathError(field, f"no upload {value!r}; upload it first (PUT /api/uploads/weights or /datasets)")
        return path
    path = Path(value)
    roots = [root.resolve() for root in settings.roots]
    if not path.is_absolute() or not any(path.resolve().is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none configured"
        raise PathError(
            field,
            f"{value!r} is not an upload ref nor an absolute path under an allowed server directory "
            f"({allowed}; set VITPRUNE_ROOTS); upload the file instead",
        )
    path = path.resolve()
    if not path.exists():
        raise PathError(field, f"{path} does not exist on the server")
    return path
