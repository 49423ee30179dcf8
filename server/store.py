"""The artifact store: bundles, ONNX files, uploads, in one directory; the database keeps paths and checksums.

Files appear under their final name only when complete (written beside it, then renamed), so a
reader never sees half a file, and every path handed in from outside is checked to stay inside.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["ArtifactStore", "OutsideStoreError", "sha256_of"]

CHUNK = 1 << 20


class OutsideStoreError(ValueError):
    """A path that would leave the artifact store."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str | Path) -> Path:
        """The absolute path of `relative`, refused if it resolves outside the store."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise OutsideStoreError(f"{relative} is outside the artifact store")
        return path

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def job_dir(self, job_id: int) -> Path:
        return self.path(f"jobs/{job_id}")

    def produce(self, target: Path, write: Callable[[Path], None]) -> Path:
        """Make `target` with `write(tmp_path)` unless it exists; the rename makes it appear whole."""
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(handle)
        try:
            write(Path(tmp))
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    def zipped(self, directory: Path) -> Path:
        """`directory` as a zip beside it (made once)."""

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(directory.rglob("*")):
                    if file.is_file():
                        archive.write(file, f"{directory.name}/{file.relative_to(directory)}")

        return self.produce(directory.with_name(directory.name + ".zip"), write)

    def remove(self, relative: str | Path) -> None:
        shutil.rmtree(self.path(relative), ignore_errors=True)
