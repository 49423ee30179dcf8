"""The paths in a submitted job spec: uploads (`upload:...` refs) or server-side paths under configured roots.

A job names files the workers will read. Letting a client name any path would let it read any
file the service can (and learn which exist), so a path must be an upload's ref or lie under
one of the roots the operator configured (VITPRUNE_ROOTS). Refs become absolute paths in the
artifact store, which every worker shares.
"""

from __future__ import annotations

import re
from pathlib import Path

from search.job import JobSpec
from server.settings import Settings
from server.store import ArtifactStore, OutsideStoreError

__all__ = ["UPLOAD_PREFIX", "PathError", "public_message", "resolve_paths"]

UPLOAD_PREFIX = "upload:"
FIELDS = ("weights", "table", "calib", "val", "train", "class_map")
FOLDERS = frozenset({"calib", "val", "train"})  # image folders; the other fields name files
HIDDEN = "<server directory>"
"""What an answer shows in place of an allowed root or the artifact store (see `public_message`)."""


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
        raise PathError(field, _outside_roots(value, bool(roots)))
    path = path.resolve()
    if not path.exists():
        # The caller's own text: the resolved path could show where a link points, or a root's real location.
        raise PathError(field, f"{value!r} does not exist on the server; check the path, or upload the file instead")
    return path


def _outside_roots(value: str, any_roots: bool) -> str:
    """Why a server path is refused, without naming the allowed directories.

    The roots are the operator's: a caller who was not told them must not learn them (nor the server's
    layout) from an error. The operator, who sets VITPRUNE_ROOTS, knows them already.
    """
    if not any_roots:
        return (
            f"{value!r} is a server path, and this server allows none (its operator sets VITPRUNE_ROOTS); "
            "upload the file instead (PUT /api/uploads/weights or /datasets) and give its upload: ref"
        )
    return (
        f"{value!r} is not an upload ref nor an absolute path under a server directory the operator allowed "
        "(VITPRUNE_ROOTS); use a path under one of those, or upload the file (PUT /api/uploads/weights or "
        "/datasets) and give its upload: ref"
    )


def public_message(message: str, spec: JobSpec, settings: Settings, store: ArtifactStore) -> str:
    """`message` (a check's error about the job `spec` as the caller sent it) fit to send back to the caller.

    The checks see resolved paths: an upload ref becomes a path in the artifact store, a server path
    its real location. Each is written back as the caller wrote it, and what still names an allowed
    root or the store becomes HIDDEN, so an answer never shows the server's directories.
    """
    replacements: dict[str, str] = {}
    for field in FIELDS:
        value = getattr(spec, field)
        if value is not None:
            given = str(value)
            replacements |= {resolved: given for resolved in (given, *_resolved_forms(given, store))}
    hidden = [*settings.roots, *(root.resolve() for root in settings.roots), store.root]
    for path in hidden:
        replacements.setdefault(str(path), HIDDEN)
    keys = sorted((k for k in replacements if k not in ("", "/")), key=len, reverse=True)
    if not keys:
        return message
    # One pass, longest first: a path the caller wrote is kept whole, never cut at a root inside it.
    pattern = re.compile("(?:" + "|".join(re.escape(k) for k in keys) + r""")(?=$|[/\s'"),;:])""")
    return pattern.sub(lambda match: replacements[match.group(0)], message)


def _resolved_forms(given: str, store: ArtifactStore) -> list[str]:
    """The paths a check may have printed for the value `given`: what `resolve_paths` made of it."""
    try:
        if given.startswith(UPLOAD_PREFIX):
            return [str(store.path(Path("uploads") / given.removeprefix(UPLOAD_PREFIX)))]
        return [str(Path(given).resolve())]
    except (OutsideStoreError, OSError, ValueError):  # refused already; nothing of it was resolved
        return []
