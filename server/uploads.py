"""Safe receiving of user uploads: request bodies, model weights and zipped image datasets.

Everything a user uploads is hostile until proven otherwise. This module protects the service against:

* oversized bodies filling the disk (a byte limit enforced while streaming, not after),
* half-written files being picked up by other code (temp file beside the target, fsync, atomic rename),
* weights files that execute code when loaded (pickles are only read with torch's weights-only unpickler,
  which refuses anything that is not tensors and plain containers, without running it),
* zip archives that escape their directory (zip slip via '..', absolute paths, drive letters, symlinks),
* zip bombs (entry count, total size and compression ratio are checked from the central directory before
  anything is written, and the actual bytes are counted while extracting, since declared sizes can lie).

A refused upload raises `UploadError`, whose `status` is the HTTP status to answer with and whose message
tells the user what is wrong and how to fix it. Nothing here knows about routes or databases.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import torch
from safetensors import safe_open

from pruning.data import IMAGE_EXTENSIONS

__all__ = ["UploadError", "check_weights", "extract_dataset", "receive"]

_MB = 1 << 20
_PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".bin"})
_COPY_CHUNK = 1 << 20
# Small entries legitimately reach huge ratios (a solid-colour BMP deflates ~1000x) while being harmless:
# the amplification a bomb needs only matters for large sizes, and max_bytes still bounds the total.
_RATIO_FLOOR = _MB
_NAME_MAX = 255  # bytes in one file name on common file systems
_DRIVE = re.compile(r"^[A-Za-z]:")


class UploadError(ValueError):
    """Refused upload; `status` is the HTTP status the API answers with (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def receive(chunks: AsyncIterator[bytes], dest: Path, limit: int) -> tuple[int, str]:
    """Stream `chunks` atomically into `dest`; returns (size_bytes, sha256 hex). Over `limit` bytes -> 413."""
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                # Checked before writing so an endless body never costs more than `limit` bytes of disk.
                if size > limit:
                    raise UploadError(
                        f"upload is larger than the {limit / _MB:g} MB limit; send a smaller file or raise "
                        "the limit with the setting VITPRUNE_MAX_UPLOAD_MB",
                        status=413,
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        # BaseException too: a client disconnect cancels the task, and that must not leave a temp file.
        tmp.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _tensor_dict(obj: object) -> dict | None:
    """The state dict inside a loaded checkpoint, or None when it is not made of tensors only."""
    if not isinstance(obj, dict):
        return None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    return None


def check_weights(path: Path) -> None:
    """Refuse anything that is not a safetensors file or a weights-only loadable dict of tensors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                keys = list(handle.keys())
        except Exception as error:
            raise UploadError(
                f"{path.name} is not a valid safetensors file ({error}); export it with "
                "safetensors.torch.save_file(model.state_dict(), ...)"
            ) from error
        if not keys:
            raise UploadError(f"{path.name} holds no tensors; upload the model's state dict")
        return
    if suffix not in _PICKLE_SUFFIXES:
        raise UploadError(
            f"weights file '{path.name}' has an unsupported type; upload .safetensors (preferred), .pth, .pt or .bin",
            status=415,
        )
    try:
        # weights_only=True is the whole point: the restricted unpickler rejects any global it does not know
        # before calling it, so a crafted __reduce__ is refused instead of executed.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UploadError(
            f"{path.name} could not be loaded as plain tensors ({type(error).__name__}); it is corrupt or holds "
            "arbitrary Python objects, which are refused for safety. Save only the weights with "
            "torch.save(model.state_dict(), ...) or, better, upload a .safetensors file"
        ) from error
    if _tensor_dict(loaded) is None:
        raise UploadError(
            f"{path.name} is not a state dict: expected a dict of tensors (or a dict whose 'state_dict' or 'model' "
            "entry is one); save it with torch.save(model.state_dict(), ...)"
        )


def _safe_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components, refusing names that could land outside the target directory."""
    name = info.filename
    if "\\" in name or name.startswith("/") or _DRIVE.match(name):
        raise UploadError(f"archive entry '{name}' has an absolute or Windows-style path; zip a relative folder")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UploadError(f"archive entry '{name}' points outside the archive ('..'); remove it and zip again")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"archive entry '{name}' is a symbolic link; zip the real files instead")
    if any(len(part.encode()) > _NAME_MAX for part in parts):
        raise UploadError(f"archive entry '{name[:80]}...' has a name over {_NAME_MAX} bytes; rename it and zip again")
    if info.flag_bits & 0x1:
        raise UploadError(f"archive entry '{name}' is encrypted; upload an archive without a password")
    return parts


def _is_wanted(parts: tuple[str, ...]) -> bool:
    return (
        bool(parts)
        and parts[0] != "__MACOSX"
        and not any(p.startswith(".") for p in parts)
        and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS
    )


def _plan(infos: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Image entries with their path relative to dest (class/.../image), top-level wrapper folder removed."""
    images = []
    for info in infos:
        parts = _safe_parts(info)  # every entry, directories included: a bad name means a hostile archive
        if not info.is_dir() and _is_wanted(parts):
            images.append((info, parts))
    if images and len({p[0] for _, p in images}) == 1 and all(len(p) >= 3 for _, p in images):
        images = [(info, parts[1:]) for info, parts in images]
    # Images directly at the top have no class folder, so they cannot be labelled.
    images = [(info, parts) for info, parts in images if len(parts) >= 2]
    if not images:
        raise UploadError(
            "the archive holds no images in class folders; expected <class_name>/<image> entries (optionally inside "
            f"one top-level folder) with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    seen: set[tuple[str, ...]] = set()
    for info, parts in images:
        if parts in seen:
            raise UploadError(f"archive entry '{info.filename}' appears twice; zip the folder again")
        seen.add(parts)
    return images


def _check_sizes(infos: list[zipfile.ZipInfo], max_bytes: int, max_ratio: float) -> None:
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > max_bytes:
        raise UploadError(
            f"archive unpacks to {total / _MB:.1f} MB, more than the {max_bytes / _MB:g} MB allowed; "
            "upload a smaller dataset",
            status=413,
        )
    for info in infos:
        if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UploadError(
                f"archive entry '{info.filename}' is compressed more than {max_ratio:g}x, which looks like a "
                "zip bomb; it is refused",
                status=413,
            )
    if total > _RATIO_FLOOR and total > max_ratio * max(packed, 1):
        raise UploadError(f"archive is compressed more than {max_ratio:g}x overall, which looks like a zip bomb", 413)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copy one member, counting real bytes: declared sizes come from the attacker and are not trusted."""
    written = 0
    with zf.open(info) as src, open(target, "xb") as out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            if written > info.file_size or written > budget:
                raise UploadError(f"archive entry '{info.filename}' unpacks to more than it declares; refused", 413)
            out.write(chunk)
    return written


def extract_dataset(
    archive: Path, dest: Path, *, max_files: int = 200_000, max_bytes: int = 8 << 30, max_ratio: float = 200.0
) -> dict:
    """Safely extract a zipped ImageFolder into `dest` (which must not exist); returns classes/images/bytes."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"extraction target {dest} already exists")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise UploadError("the upload is not a valid zip archive; upload a .zip of the image folder") from error
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise UploadError(f"archive has {len(infos)} entries, more than the {max_files} allowed", status=413)
        images = _plan(infos)
        _check_sizes(infos, max_bytes, max_ratio)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
        try:
            root = tmp.resolve()
            total = 0
            for info, parts in images:
                target = root.joinpath(*parts)
                # Defence in depth: the names were validated, but a path check is cheap.
                if os.path.commonpath([root, target.resolve()]) != str(root):
                    raise UploadError(f"archive entry '{info.filename}' points outside the archive")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    total += _copy_member(zf, info, target, max_bytes - total)
                except (FileExistsError, NotADirectoryError) as error:
                    # Two entries mapping to one path (e.g. 'a.png' and 'a.png/b.png'): the user's archive is at fault.
                    raise UploadError(f"archive entry '{info.filename}' clashes with another entry's path") from error
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
                    raise UploadError(
                        f"archive entry '{info.filename}' is corrupt or uses an unsupported compression ({error}); "
                        "zip the folder again with standard deflate"
                    ) from error
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"classes": len({parts[0] for _, parts in images}), "images": len(images), "bytes": total}
