"""Measured end-to-end timings of dense ViTs on a device, read from a CSV file.

One row per timing, with a header line naming the columns (any order; blank lines and lines whose
first cell starts with '#' are skipped):

- `model` (required): a timm name of the built-in shapes (`deit_small_patch16_224`; another size
  suffix, e.g. `vit_small_patch16_384`, names the same shape at that size), or a shape inline:
  `embed_dim=384;heads=6;depth=12`, optionally with `mlp_ratio=4` (or `mlp_hidden=1536`),
  `head_dim=64`, `patch=16`, `prefix=1`, `num_classes=1000` (separated by ';', or by ',' inside a
  quoted cell);
- `ms` (required): measured end-to-end latency of one forward pass of the dense model, in ms;
- `image_size`: input resolution in pixels (default: the name's size suffix, else 224);
- `batch`: images per forward pass (default 1);
- `cores`: the core configuration it ran on, `one`, `cluster`, `all` or a thread count (default:
  the base device's);
- `dtype`: `float32` or `int8` (default: the base device's).

A bad row is refused with its line number and what is wrong with it (`TimingsError`, a ValueError).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from latency_models.profiling import SHAPES, Shape

__all__ = ["COLUMNS", "TimingRow", "TimingsError", "parse_cores", "parse_timings", "read_timings", "resolve_model"]

COLUMNS = ("model", "image_size", "batch", "cores", "dtype", "ms")
REQUIRED = ("model", "ms")
DTYPES = ("float32", "int8", "int16", "w4a8")
CORE_WORDS = ("one", "cluster", "all")
BUILT_IN_DEPTH = 12
"""Depth of every built-in shape: ViT-Ti/S/B (Dosovitskiy et al., ICLR 2021, table 1; Touvron et al.,
DeiT, ICML 2021, table 1) all have 12 blocks; they differ in width and heads only."""
INLINE_KEYS = ("embed_dim", "heads", "depth", "mlp_ratio", "mlp_hidden", "head_dim", "patch", "prefix", "num_classes")


class TimingsError(ValueError):
    """A timings file that cannot be read: a missing column, or a row that says where it is wrong."""


@dataclass(frozen=True)
class TimingRow:
    """One measured timing: the dense model (its shape at the row's image size, and its depth)."""

    line: int
    """Line of the file it came from (1 = the header), for messages."""
    model: str
    """The model as the file names it (a timm name or an inline shape)."""
    shape: Shape
    depth: int
    batch: int
    ms: float
    cores: str | None = None
    """`one`, `cluster`, `all` or a thread count as digits; None: not given."""
    dtype: str | None = None
    """None: not given."""

    @property
    def model_id(self) -> str:
        """What a leave-one-model-out check leaves out together: one architecture at one resolution,
        however it is named (its rows at other batch sizes go with it)."""
        return json.dumps({k: v for k, v in self.key().items() if k != "batch"}, sort_keys=True)

    def key(self) -> dict:
        """The table key of the whole dense model, as `latency_models.profiling.plan` makes it."""
        s = self.shape
        return {
            "op": "model",
            "batch": self.batch,
            "embed_dim": s.embed_dim,
            "tokens": s.tokens,
            "heads": s.heads,
            "head_dim": s.head_dim,
            "mlp_hidden": s.mlp_hidden,
            "depth": self.depth,
            "image_size": s.image_size,
            "patch_size": s.patch_size,
            "num_classes": s.num_classes,
        }

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "image_size": self.shape.image_size,
            "batch": self.batch,
            "cores": self.cores,
            "dtype": self.dtype,
            "ms": self.ms,
        }


def read_timings(path: Path) -> list[TimingRow]:
    """The timings in CSV file `path` (see the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise TimingsError(f"{path}: not a text CSV file ({error.reason})") from None
    return parse_timings(text, str(path))


def parse_timings(text: str, source: str = "timings") -> list[TimingRow]:
    """The timings in CSV `text`; `source` names it in messages."""
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise TimingsError(f"{source}: no header line and no timings")
    header_line, header = lines[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise TimingsError(
            f"{source} line {header_line}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are {', '.join(COLUMNS)} (model and ms required)"
        )
    if missing := [c for c in REQUIRED if c not in columns]:
        raise TimingsError(f"{source}: missing column(s) {', '.join(missing)} in the header line {header!r}")
    if len(set(columns)) != len(columns):
        raise TimingsError(f"{source} line {header_line}: a column is named twice in {header!r}")
    rows = []
    for number, line in lines[1:]:
        cells = next(csv.reader(io.StringIO(line)))
        if len(cells) != len(columns):
            raise TimingsError(
                f"{source} line {number}: {len(cells)} cells for {len(columns)} columns ({', '.join(columns)})"
            )
        rows.append(
            _row(number, dict(zip(columns, (c.strip() for c in cells), strict=True)), f"{source} line {number}")
        )
    if not rows:
        raise TimingsError(f"{source}: a header line but no timings")
    return rows


def _row(number: int, cells: dict[str, str], where: str) -> TimingRow:
    if not cells["model"]:
        raise TimingsError(f"{where}: the model cell is empty")
    size = _integer(cells.get("image_size", ""), "image_size", where) if cells.get("image_size") else None
    try:
        shape, depth = resolve_model(cells["model"], size)
    except ValueError as error:
        raise TimingsError(f"{where}: {error}") from None
    batch = _integer(cells.get("batch", ""), "batch", where) if cells.get("batch") else 1
    try:
        ms = float(cells["ms"])
    except ValueError:
        raise TimingsError(f"{where}: ms {cells['ms']!r} is not a number") from None
    if not math.isfinite(ms) or ms <= 0:
        raise TimingsError(f"{where}: ms must be a positive number of milliseconds, got {cells['ms']!r}")
    cores = None
    if cells.get("cores"):
        try:
            cores = parse_cores(cells["cores"])
        except ValueError as error:
            raise TimingsError(f"{where}: {error}") from None
    dtype = cells.get("dtype") or None
    if dtype is not None and dtype.lower() not in DTYPES:
        raise TimingsError(f"{where}: dtype {dtype!r}: use {', '.join(DTYPES)}")
    return TimingRow(number, cells["model"], shape, depth, batch, ms, cores, dtype.lower() if dtype else None)


def parse_cores(text: str) -> str:
    """A core configuration: `one`, `cluster`, `all` or a positive thread count (kept as digits)."""
    value = text.strip().lower()
    if value in CORE_WORDS or (value.isdigit() and int(value) > 0):
        return str(int(value)) if value.isdigit() else value
    raise ValueError(f"cores {text!r}: use one, cluster, all or a thread count")


def _integer(text: str, column: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TimingsError(f"{where}: {column} {text!r} is not a whole number") from None
    if value <= 0:
        raise TimingsError(f"{where}: {column} must be positive, got {value}")
    return value


def resolve_model(model: str, image_size: int | None = None) -> tuple[Shape, int]:
    """The shape (at `image_size`, default the name's own) and depth of a timm name or inline shape."""
    if "=" in model:
        shape, depth = _inline(model)
        size = image_size or 224
    else:
        name, size = _named(model)
        shape, depth = SHAPES[name], BUILT_IN_DEPTH
        size = image_size or size
    if size < shape.patch_size:
        raise ValueError(f"image_size {size} is smaller than the patch size {shape.patch_size}")
    tokens = (size // shape.patch_size) ** 2 + shape.prefix
    return replace(shape, image_size=size, tokens=tokens), depth


def _named(model: str) -> tuple[str, int]:
    if model in SHAPES:
        return model, SHAPES[model].image_size
    sized = re.fullmatch(r"(.+_patch\d+)_(\d+)", model)
    if sized and f"{sized[1]}_224" in SHAPES:
        return f"{sized[1]}_224", int(sized[2])
    raise ValueError(
        f"unknown model {model!r}: use one of {', '.join(SHAPES)} (another size suffix, e.g. _384, is the same "
        "shape at that size), or give the shape inline: embed_dim=384;heads=6;depth=12"
    )


def _inline(model: str) -> tuple[Shape, int]:
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;,\s]+", model))):
        name, sep, text = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in INLINE_KEYS:
            raise ValueError(f"inline shape {model!r}: {part!r} is not one of {'=, '.join(INLINE_KEYS)}=")
        try:
            values[name] = float(text)
        except ValueError:
            raise ValueError(f"inline shape {model!r}: {name} {text!r} is not a number") from None
        if (values[name] <= 0 and name != "prefix") or values[name] < 0:
            raise ValueError(f"inline shape {model!r}: {name} must be positive")
    if missing := [k for k in ("embed_dim", "heads", "depth") if k not in values]:
        raise ValueError(f"inline shape {model!r}: missing {', '.join(missing)} (e.g. embed_dim=384;heads=6;depth=12)")
    whole = {k: v for k, v in values.items() if k != "mlp_ratio"}
    if fractional := [k for k, v in whole.items() if v != int(v)]:
        raise ValueError(f"inline shape {model!r}: {', '.join(fractional)} must be whole numbers")
    embed, heads = int(values["embed_dim"]), int(values["heads"])
    if "head_dim" not in values and embed % heads:
        raise ValueError(f"inline shape {model!r}: embed_dim {embed} is not a multiple of heads {heads}")
    head_dim = int(values.get("head_dim", embed // heads))
    if "mlp_ratio" in values and "mlp_hidden" in values:
        raise ValueError(f"inline shape {model!r}: give mlp_ratio or mlp_hidden, not both")
    hidden = int(values["mlp_hidden"]) if "mlp_hidden" in values else round(values.get("mlp_ratio", 4.0) * embed)
    patch, prefix = int(values.get("patch", 16)), int(values.get("prefix", 1))
    shape = Shape(embed, heads, head_dim, hidden, 224 // patch * (224 // patch) + prefix, prefix, 224, patch)
    shape = replace(shape, num_classes=int(values.get("num_classes", 1000)))
    return shape, int(values["depth"])
