"""Pruned model bundles: one directory (or a .zip of it) that rebuilds a PrunedViT without the dense weights.

Layout::

    config.json        format, base timm model + kwargs, image size, PruneConfig with survivor indices,
                       provenance (vitprune version, creation time, sha256 of the source weights)
    model.safetensors  the sliced timm state_dict (timm key names, smaller shapes)
    metrics.json       whatever the caller measured (accuracy, fidelity, latency, FLOPs, the image sets, ...)
    README.md          a model card made from config.json and metrics.json, see `pruning.model_card`
    model.onnx         optional, see `pruning.export`

Loading needs only vitprune and timm: the dense architecture is created on the `meta` device (no
memory, no initialisation, no download), sliced to the pinned indices of the config, and the
safetensors are assigned to it. Bundles are written to a temporary sibling first and renamed into
place, so an interrupted save never leaves a half bundle under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import Any

import safetensors.torch
import torch
from pydantic import ValidationError
from torch import nn

from pruning.config import PruneConfig
from pruning.loading import WeightsError, _describe_misfit, create_model
from pruning.model import PrunedViT, describe, prune_model
from pruning.model_card import TIMM_PRETRAINED, model_card

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "ONNX_FILE",
    "README_FILE",
    "TIMM_PRETRAINED",
    "WEIGHTS_FILE",
    "BundleError",
    "file_sha256",
    "load_bundle",
    "read_bundle_json",
    "save_bundle",
]

FORMAT = "vitprune-bundle"
FORMAT_VERSION = 2
"""The newest format this vitprune reads and writes. 2 added quantised models (`quantisation` in
config.json, their scales among the weights); a float model is still written as 1, which every
version reads."""
FLOAT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
README_FILE = "README.md"
ONNX_FILE = "model.onnx"

_REQUIRED_FIELDS = ("format", "format_version", "base_model", "model_kwargs", "image_size", "prune_config")


class BundleError(ValueError):
    """A bundle that cannot be written or read; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- saving


def save_bundle(
    pruned: PrunedViT,
    path: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    onnx: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `pruned` as a bundle at `path` (a `.zip` file if the name ends in .zip, else a directory).

    `metrics` goes to metrics.json and the model card, which prints its figures (FLOPs included) as
    they are and counts nothing itself. `provenance` is a free-form dict stored under
    `provenance.extra`; `weights` is the dense weights file the model was pruned from, whose sha256
    is recorded (a caller without the file may put `weights_sha256` in `provenance` instead).
    `model_kwargs` recreate the dense architecture with timm; by default they are derived
    (num_classes, img_size where they differ from timm's defaults) and checked: the bundle is only
    written if `base_model` + `model_kwargs` rebuild exactly the shapes of `pruned`. With
    `onnx=True` a model.onnx (dynamic batch, checked with onnxruntime) is added.
    """
    path = Path(path)
    _check_free(path, overwrite)
    kwargs = dict(model_kwargs) if model_kwargs is not None else _derived_kwargs(pruned)
    dense, skeleton = _build(pruned.spec.name, kwargs, pruned.config)
    if pruned.quantisation is not None:
        _quantised_skeleton(skeleton, pruned.quantisation)
    _check_rebuilds(pruned, skeleton, kwargs)
    config = _config_json(pruned, kwargs, provenance, weights)
    metrics = _plain_json(dict(metrics or {}), "metrics")
    with _staging(path) as stage:
        tensors = {k: v.detach().contiguous().cpu() for k, v in pruned.model.state_dict().items()}
        safetensors.torch.save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        if onnx:
            from pruning.export import export_onnx  # onnx/onnxruntime are only needed when asked for

            config["onnx"] = {**export_onnx(pruned, stage / ONNX_FILE).to_dict(), "path": ONNX_FILE}
        (stage / CONFIG_FILE).write_text(_config_text(config), encoding="utf-8")
        (stage / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        sizes = {file.name: file.stat().st_size for file in sorted(stage.iterdir())}
        card = model_card(config, metrics, skeleton, dense, sizes)  # weightless models: counting them is free
        (stage / README_FILE).write_text(card, encoding="utf-8")
        _publish(stage, path, overwrite)
    return path


def _derived_kwargs(pruned: PrunedViT) -> dict[str, Any]:
    """The timm kwargs in which `pruned`'s dense model differs from timm's default for its name."""
    default = describe(_dense_on_meta(pruned.spec.name, {}), pruned.spec.name)
    kwargs: dict[str, Any] = {}
    if pruned.spec.num_classes != default.num_classes:
        kwargs["num_classes"] = pruned.spec.num_classes
    if tuple(pruned.spec.image_size) != tuple(default.image_size):
        kwargs["img_size"] = list(pruned.spec.image_size)
    return kwargs


def _check_rebuilds(pruned: PrunedViT, skeleton: PrunedViT, kwargs: Mapping[str, Any]) -> None:
    """Refuse to write a bundle whose config.json would not rebuild this very model."""
    problem = _describe_misfit(skeleton.model, pruned.model.state_dict())
    if not problem and skeleton.spec != pruned.spec:
        problem = f"the rebuilt structure differs: {skeleton.spec} vs {pruned.spec}"
    if problem:
        raise BundleError(
            f"timm model {pruned.spec.name!r} with model_kwargs={dict(kwargs)} does not rebuild this pruned"
            f" model ({problem}); pass the timm kwargs the dense model was created with as model_kwargs"
        )


def _config_text(config: dict[str, Any]) -> str:
    """Indented JSON with one line per block, so a person can read the structure at a glance."""
    prune = config["prune_config"]
    placeholder = "\u0000blocks"
    text = json.dumps({**config, "prune_config": {**prune, "blocks": placeholder}}, indent=2)
    blocks = ",\n      ".join(json.dumps(block) for block in prune["blocks"])
    return text.replace(json.dumps(placeholder), f"[\n      {blocks}\n    ]") + "\n"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in chunks (the weights a bundle records it was pruned from)."""
    digest = hashlib.sha256()  # hashlib.file_digest would need Python 3.11; vitprune supports 3.10
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _config_json(
    pruned: PrunedViT, kwargs: dict[str, Any], provenance: Mapping[str, Any] | None, weights: str | Path | None
) -> dict[str, Any]:
    extra = dict(provenance or {})
    sha = extra.pop("weights_sha256", None)
    if weights is not None:
        sha = file_sha256(weights)
    try:
        package_version = version("vitprune")
    except PackageNotFoundError:  # a source tree that was not installed
        package_version = "0.0.0+local"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if pruned.quantisation is not None else FLOAT_FORMAT_VERSION,
        "base_model": pruned.spec.name,
        "model_kwargs": _plain_json(kwargs, "model_kwargs"),
        "image_size": list(pruned.spec.image_size),
        "prune_config": pruned.config.model_dump(mode="json"),
        **({"quantisation": pruned.quantisation} if pruned.quantisation is not None else {}),
        "provenance": {
            "vitprune_version": package_version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights_sha256": sha,
            "extra": _plain_json(extra, "provenance"),
        },
    }


def _plain_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    """`value` with tensors, numpy scalars, dataclasses (EvalResult, ExportReport) and paths made plain JSON."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise BundleError(f"{what}: not JSON-serialisable ({err})") from err


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ------------------------------------------------------------------------------------ atomic writing


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """An empty directory inside a temporary sibling of `path`; the sibling is always removed at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (root / "bundle").mkdir()
        yield root / "bundle"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _publish(stage: Path, path: Path, overwrite: bool) -> None:
    """Move the finished bundle to `path` in one rename (zipped first, next to `stage`, for a .zip path)."""
    if path.suffix.lower() == ".zip":
        archive = stage.with_suffix(".zip")
        with zipfile.ZipFile(archive, "w") as zf:
            for file in sorted(stage.iterdir()):
                binary = file.suffix in (".safetensors", ".onnx")  # already dense; deflating wastes time
                zf.write(file, file.name, compress_type=zipfile.ZIP_STORED if binary else zipfile.ZIP_DEFLATED)
        stage = archive
    _check_free(path, overwrite)
    if path.is_dir() or (path.exists() and stage.is_dir()):  # os.replace cannot replace these
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(stage, path)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(stage, path)


# --------------------------------------------------------------------------------------------- loading


def load_bundle(path: str | Path) -> PrunedViT:
    """Rebuild the PrunedViT stored at `path` (a bundle directory or .zip), in eval mode on the CPU.

    Needs only vitprune and timm: nothing is downloaded and the dense weights are never read.
    Raises `BundleError`, naming the file and field, for a missing file, another format or a newer
    format version, or weights that do not match the config.
    """
    path = Path(path)
    text, tensors = _read_zip(path) if path.is_file() else _read_directory(path)
    header = _parse_config(text)
    _, pruned = _build(header["base_model"], header["model_kwargs"], header["prune_config"])
    if header.get("quantisation") is not None:
        _quantised_skeleton(pruned, header["quantisation"])
    if list(pruned.spec.image_size) != header["image_size"]:
        raise BundleError(
            f"{CONFIG_FILE}: image_size {header['image_size']} does not match {header['base_model']}"
            f" built with model_kwargs={header['model_kwargs']} ({list(pruned.spec.image_size)})"
        )
    problem = _describe_misfit(pruned.model, tensors)
    if problem:
        raise BundleError(f"{WEIGHTS_FILE} does not match {CONFIG_FILE}: {problem}")
    pruned.model.load_state_dict(tensors, strict=True, assign=True)
    for name, tensor in chain(pruned.model.named_parameters(), pruned.model.named_buffers()):
        if tensor.is_meta:  # would fail at the first forward
            raise BundleError(f"{WEIGHTS_FILE}: no value for {name} after loading")
    return pruned.eval()


def _quantised_skeleton(pruned: PrunedViT, quantisation: Any) -> None:
    """Give the weightless model the quantised layers whose scales the weights file holds."""
    from pruning.quantisation import (
        PRECISIONS,
        QuantisationError,
        attach_products,
        attach_stream_grids,
        kept_float,
        wrap_linears,
        wrap_patch_embedding,
    )

    if not isinstance(quantisation, dict) or quantisation.get("precision") not in PRECISIONS:
        raise BundleError(
            f"{CONFIG_FILE}: quantisation must name a precision of {', '.join(PRECISIONS)}, got {quantisation!r}"
        )
    float_blocks = quantisation.get("float_blocks", [])
    if not isinstance(float_blocks, list) or not all(type(index) is int for index in float_blocks):
        raise BundleError(f"{CONFIG_FILE}: quantisation.float_blocks must list block indices, got {float_blocks!r}")
    try:
        keep_float = kept_float(pruned, float_blocks)
    except QuantisationError as error:
        raise BundleError(f"{CONFIG_FILE}: quantisation.float_blocks: {error}") from None
    weight_bits = PRECISIONS[quantisation["precision"]].weight_bits
    wrap_linears(pruned.model, keep_float, weight_bits)
    if quantisation.get("patch_embedding"):
        wrap_patch_embedding(pruned.model, weight_bits)
    if quantisation.get("attention_products"):
        attach_products(pruned.model, keep_float)
    if quantisation.get("stream"):
        attach_stream_grids(pruned, keep_float, nonlinear_inputs=bool(quantisation.get("nonlinear_inputs")))
    pruned.quantisation = quantisation


def read_bundle_json(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, metrics.json) of the bundle at `path` as plain JSON ({} for a bundle without metrics),
    for a caller that makes a new bundle from it (`vitprune finetune`)."""
    path = Path(path)
    try:
        if path.is_file():
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                prefix = _zip_prefix(names, path)
                config = zf.read(prefix + CONFIG_FILE).decode("utf-8")
                metrics = zf.read(prefix + METRICS_FILE).decode("utf-8") if prefix + METRICS_FILE in names else "{}"
        elif (path / CONFIG_FILE).is_file():
            config = (path / CONFIG_FILE).read_text(encoding="utf-8")
            metrics = (path / METRICS_FILE).read_text(encoding="utf-8") if (path / METRICS_FILE).is_file() else "{}"
        else:
            raise BundleError(f"bundle not found: {path}")
        return json.loads(config), json.loads(metrics)
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is not a readable bundle: {err}") from err


def _read_directory(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise BundleError(f"{name}: missing from bundle {path}")
    text = (path / CONFIG_FILE).read_text(encoding="utf-8")
    return text, _safetensors(safetensors.torch.load_file, str(path / WEIGHTS_FILE))


def _read_zip(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Read the two needed members by name, in memory: nothing is extracted to disk."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            prefix = _zip_prefix(names, path)
            if prefix + WEIGHTS_FILE not in names:
                raise BundleError(f"{WEIGHTS_FILE}: missing from bundle {path}")
            text, data = zf.read(prefix + CONFIG_FILE).decode("utf-8"), zf.read(prefix + WEIGHTS_FILE)
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as err:
        raise BundleError(f"{path} is not a readable bundle zip: {err}") from err
    return text, _safetensors(safetensors.torch.load, data)


def _safetensors(load: Callable[[Any], dict[str, torch.Tensor]], source: Any) -> dict[str, torch.Tensor]:
    try:
        return load(source)
    except Exception as err:  # SafetensorError is not exported under a stable name
        raise BundleError(f"{WEIGHTS_FILE}: not a valid safetensors file ({err})") from err


def _zip_prefix(names: list[str], path: Path) -> str:
    """'' for a bundle at the top of the zip, 'folder/' for a zipped bundle directory; refuses zip slip."""
    for name in names:  # member names that point outside the archive
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise BundleError(f"{path}: unsafe member name {name!r} in the zip")
    if CONFIG_FILE in names:
        return ""
    folders = {n[: -len(CONFIG_FILE)] for n in names if n.endswith("/" + CONFIG_FILE) and n.count("/") == 1}
    if len(folders) == 1:
        return folders.pop()
    raise BundleError(f"{CONFIG_FILE}: missing from bundle {path}")


def _parse_config(text: str) -> dict[str, Any]:
    """Validate config.json and return its fields, with `prune_config` as a PruneConfig."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise BundleError(f"{CONFIG_FILE}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise BundleError(f"{CONFIG_FILE}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED_FIELDS if k not in raw]
    if missing:
        raise BundleError(f"{CONFIG_FILE}: missing field(s) {', '.join(missing)}")
    _check_fields(raw)
    return {**raw, "prune_config": _parse_prune_config(raw["prune_config"])}


def _check_fields(raw: dict[str, Any]) -> None:
    found = raw["format_version"]
    if raw["format"] != FORMAT:
        raise BundleError(f"{CONFIG_FILE}: format is {raw['format']!r}, expected {FORMAT!r}")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise BundleError(f"{CONFIG_FILE}: format_version must be a positive integer, got {found!r}")
    if found > FORMAT_VERSION:
        raise BundleError(
            f"{CONFIG_FILE}: format_version {found} is newer than this vitprune reads ({FORMAT_VERSION});"
            " upgrade vitprune"
        )
    if not isinstance(raw["base_model"], str) or not raw["base_model"]:
        raise BundleError(f"{CONFIG_FILE}: base_model must be a timm model name, got {raw['base_model']!r}")
    if not isinstance(raw["model_kwargs"], dict):
        raise BundleError(f"{CONFIG_FILE}: model_kwargs must be an object, got {raw['model_kwargs']!r}")


def _parse_prune_config(value: Any) -> PruneConfig:
    try:
        config = PruneConfig.model_validate(value)
    except ValidationError as err:
        raise BundleError(f"{CONFIG_FILE}: prune_config is invalid: {err}") from err
    for i, block in enumerate(config.blocks):
        if block.heads_kept is None or block.channels_kept is None:
            raise BundleError(
                f"{CONFIG_FILE}: prune_config block {i} does not pin heads_kept/channels_kept;"
                " a bundle must name the surviving heads and channels"
            )
    return config


# ----------------------------------------------------------------------------------- model skeletons


def _build(base_model: str, model_kwargs: Mapping[str, Any], config: PruneConfig) -> tuple[nn.Module, PrunedViT]:
    """The dense architecture (weightless) and its pruned version sliced to `config`'s pinned indices."""
    dense = _dense_on_meta(base_model, model_kwargs)
    try:
        return dense, prune_model(dense, config, name=base_model)
    except ValueError as err:  # ConfigError, unsupported family, unpinned indices
        raise BundleError(f"{CONFIG_FILE}: prune_config does not fit {base_model}: {err}") from err


def _dense_on_meta(base_model: str, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """timm's model with no weights on the meta device: nothing is allocated, initialised or downloaded.

    Non-persistent buffers are in no state_dict, so a model with some is built on the CPU instead.
    """
    try:
        with torch.device("meta"):
            model = create_model(base_model, pretrained=False, **model_kwargs)
        if any(m._non_persistent_buffers_set for m in model.modules()):
            model = create_model(base_model, pretrained=False, **model_kwargs)
    except (WeightsError, TypeError, AssertionError, RuntimeError) as err:
        raise BundleError(
            f"{CONFIG_FILE}: cannot create timm model {base_model!r} with model_kwargs={dict(model_kwargs)}: {err}"
        ) from err
    return model
