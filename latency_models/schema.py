"""The latency lookup table: a versioned JSON document, validated by pydantic (never pickled).

A table describes one device (how it was made, on what, with which runtime and threads) and lists
entries keyed by what sets the cost of each part of a ViT: the attention half of a block (tokens,
heads, head dim, embed dim; fused or with scores; with or without key masks), the MLP half (tokens,
embed dim, MLP hidden), each token op's own work (entries whose fields its pricing module in
`latency_models.profiling.ops` declares: tokens in and out and what else sets their cost), patch
embedding and the classifier head, all per batch size, and a few composites timed whole (dense
blocks back to back, dense and reducing blocks in pairs, the whole dense model) for what parts cost
together beyond their sum. Every entry keeps its median and its spread (p90 - p10) in milliseconds.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from latency_models.profiling import SCHEMA, SCHEMA_VERSION, entry_id
from latency_models.profiling.ops import ENTRY_KINDS, PRICINGS, EntryKind
from latency_models.profiling.ops._base import BOOL, COUNT, POSITIVE

__all__ = [
    "TOKEN_OP_ENTRIES",
    "AttentionEntry",
    "Calibration",
    "CalibrationCheck",
    "ChainEntry",
    "DeviceInfo",
    "EmbedEntry",
    "Entry",
    "HeadEntry",
    "LatencyTable",
    "MlpEntry",
    "ModelEntry",
    "ReducingChainEntry",
    "TableError",
]


class TableError(ValueError):
    """A latency table that is malformed, foreign or of another schema version."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]


class DeviceInfo(_Strict):
    name: str = Field(min_length=1)
    kind: Literal["measured", "analytic", "imported", "fitted"]
    runtime: str
    hardware: str
    machine: str = ""
    threads: Positive | None = None
    dtype: str = "float32"
    mode: Literal["eager", "cuda_graphs"] = "eager"
    """How its models run (`latency_models.profiling.execution`): eagerly, or as replayed CUDA graphs."""
    batch_sizes: tuple[Positive, ...]
    created: datetime
    tool_version: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Analytic devices: the model's parameters, each traceable to `sources`."""
    sources: tuple[str, ...] = ()
    notes: str = ""


class _Entry(_Strict):
    batch: Positive
    embed_dim: Positive
    median_ms: float = Field(ge=0, allow_inf_nan=False)
    spread_ms: float = Field(ge=0, allow_inf_nan=False)


class AttentionEntry(_Entry):
    op: Literal["attention"] = "attention"
    tokens: Positive
    heads: Count
    head_dim: Positive
    scored: bool
    """Explicit attention returning class-attention scores (blocks that reduce tokens) vs fused SDPA."""
    masked: bool
    """Key masks for a padded batch (after a threshold reduction in a batch of several images). The
    size bias that attention adds to its keys after token merging costs about nothing next to the
    attention itself: the predictor prices it with the unmasked entries (measurements there)."""


class ChainEntry(_Entry):
    """A dense block (attention + MLP at `tokens`) timed inside a chain of `blocks` distinct blocks,
    per block. On a CPU, blocks run back to back cost more than their halves timed alone (each
    op's input was just written by the previous op, the GEMM shapes alternate), and at large batches
    sometimes less; the predictor adds that signed difference to every block, interpolated over
    tokens."""

    op: Literal["chain"] = "chain"
    tokens: Positive
    heads: Positive
    head_dim: Positive
    mlp_hidden: Positive
    blocks: Positive


class ReducingChainEntry(_Entry):
    """`pairs` pairs of distinct blocks, per pair: a dense block at `tokens`, then a block that cuts
    them to `tokens_out` by token op `reduction`. The small ops of a token reduction (top-k, sorts,
    gathers, the matching) run nowhere else in a forward pass, so in a model they start cold where the
    token op's own entries time them back to back; the predictor adds what a pair costs beyond its
    parts to every block reducing that way, interpolated over tokens."""

    op: Literal["reducing_chain"] = "reducing_chain"
    tokens: Positive
    tokens_out: Positive
    prefix: Count
    heads: Positive
    head_dim: Positive
    mlp_hidden: Positive
    reduction: Literal[tuple(PRICINGS)]  # type: ignore[valid-type]
    """The token op of the reducing block (any op with a pricing module)."""
    pairs: Positive


class ModelEntry(_Entry):
    """The whole dense model once: embedding, `depth` blocks, classifier. The predictor scales every
    block of a prediction by what the whole costs over its parts (embedding, head and `chain` blocks)."""

    op: Literal["model"] = "model"
    tokens: Positive
    heads: Positive
    head_dim: Positive
    mlp_hidden: Positive
    depth: Positive
    image_size: Positive
    patch_size: Positive
    num_classes: Positive


class MlpEntry(_Entry):
    op: Literal["mlp"] = "mlp"
    tokens: Positive
    mlp_hidden: Count


class EmbedEntry(_Entry):
    op: Literal["embed"] = "embed"
    tokens: Positive
    image_size: Positive
    patch_size: Positive


class HeadEntry(_Entry):
    op: Literal["head"] = "head"
    tokens: Positive
    num_classes: Positive


_FIELD_TYPES: dict[str, Any] = {POSITIVE: Positive, COUNT: Count, BOOL: bool}


def _token_op_entry(kind: EntryKind) -> type[_Entry]:
    """The pydantic model of a token op's entries, from the plain field types its pricing module gives."""
    fields: dict[str, Any] = {"op": (Literal[kind.op], kind.op)}
    for name, spec in kind.fields.items():
        fields[name] = (Literal[spec] if isinstance(spec, tuple) else _FIELD_TYPES[spec], ...)
    title = "".join(part.title() for part in kind.op.split("_")) + "Entry"
    return create_model(title, __base__=_Entry, __module__=__name__, __doc__=kind.__doc__, **fields)


TOKEN_OP_ENTRIES: dict[str, type[_Entry]] = {op: _token_op_entry(kind) for op, kind in ENTRY_KINDS.items()}
"""Entry op -> model of the entries that time a token op's work (e.g. the top-k and threshold's)."""

Entry = Annotated[
    Union[  # built from a tuple: the token ops' entries come from the registry
        (
            AttentionEntry,
            ChainEntry,
            ReducingChainEntry,
            ModelEntry,
            MlpEntry,
            *TOKEN_OP_ENTRIES.values(),
            EmbedEntry,
            HeadEntry,
        )
    ],
    Field(discriminator="op"),
]


class CalibrationCheck(_Strict):
    """How a calibrated table predicted a fresh draw of real pruned models, timed after the fit."""

    configs: Positive
    seed: int
    within_10pct: float = Field(ge=0, le=1)
    bias: float
    """Median signed error of the predictions, (predicted - measured) / measured: < 0 predicts low."""
    mape: float = Field(ge=0)
    worst: float
    under_p95: float = Field(ge=0)
    """How far measured latency exceeds the prediction for all but the worst 5% of configs: the
    safety margin that keeps a search's models within budget (`budget_margin='auto'`)."""
    drift: float = Field(gt=0)
    """The machine's speed during the check over its speed when the table was timed (the probe)."""


class Calibration(_Strict):
    """What whole pruned models cost on this device beyond the table's parts, for one dense model shape
    at one batch size: fitted to real pruned models timed end to end at the table's own settings, and
    then checked on a fresh draw (`check`). `LatencyPredictor` applies it to that shape and batch:

        ms = embed + head + blocks x (1 + scale) + offset + sum over token ops k of
             (per_block[k] + per_token[k] x tokens in / tokens of the dense model) per block reducing by k
    """

    batch: Positive
    embed_dim: Positive
    heads: Positive
    head_dim: Positive
    mlp_hidden: Positive
    tokens: Positive
    depth: Positive
    image_size: Positive
    num_classes: Positive
    scale: float
    offset_ms: float
    per_block_ms: dict[str, float] = Field(default_factory=dict)
    per_token_ms: dict[str, float] = Field(default_factory=dict)
    configs: Positive
    """Pruned models it was fitted to (the dense model among them)."""
    seed: int
    fit_mape: float = Field(ge=0)
    raw_bias: float
    """Median signed error of the uncalibrated predictions on the fitting draw."""
    check: CalibrationCheck | None = None
    created: datetime

    def shape_key(self) -> tuple:
        return (
            self.batch, self.embed_dim, self.heads, self.head_dim, self.mlp_hidden,
            self.tokens, self.depth, self.image_size, self.num_classes,
        )  # fmt: skip


class LatencyTable(_Strict):
    schema_name: Literal["vitprune.latency-table"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    device: DeviceInfo
    entries: tuple[Entry, ...]
    calibrations: tuple[Calibration, ...] = ()
    """End-to-end corrections per model shape and batch (measured tables; see `Calibration`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @classmethod
    def parse(cls, data: Any, source: str = "table") -> LatencyTable:
        """Validate a decoded JSON document; TableError names the first offending fields."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise TableError(
                f"{source}: not a vitprune latency table (field 'schema' is {found!r}, expected {SCHEMA!r}); "
                "make one with `vitprune profile` or `python -m latency_models.profiling`"
            )
        if data.get("version") != SCHEMA_VERSION:
            raise TableError(
                f"{source}: field 'version' is {data.get('version')!r}; this vitprune reads version {SCHEMA_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise TableError(f"{source}: {_describe(error, data)}") from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as error:
            raise TableError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
        except UnicodeDecodeError:
            raise TableError(f"{path}: not JSON (binary data; tables are JSON, never pickles)") from None
        return cls.parse(data, str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.model_dump_json(by_alias=True, indent=1))
        tmp.replace(path)

    def merged(self, other: LatencyTable) -> LatencyTable:
        """This table plus `other`'s entries (other wins on equal keys), for growing a cached table."""
        entries = {entry_id(e.model_dump()): e for e in (*self.entries, *other.entries)}
        batches = tuple(sorted({*self.device.batch_sizes, *other.device.batch_sizes}))
        device = other.device.model_copy(update={"batch_sizes": batches})
        calibrations = {c.shape_key(): c for c in (*self.calibrations, *other.calibrations)}
        return LatencyTable(device=device, entries=tuple(entries.values()), calibrations=tuple(calibrations.values()))

    def calibrated(self, calibration: Calibration) -> LatencyTable:
        """This table with `calibration` in place of any earlier one for the same shape and batch."""
        kept = tuple(c for c in self.calibrations if c.shape_key() != calibration.shape_key())
        return self.model_copy(update={"calibrations": (*kept, calibration)})

    def keys(self) -> set[str]:
        return {entry_id(e.model_dump()) for e in self.entries}


def _describe(error: ValidationError, data: dict) -> str:
    """'entries[3] (attention).heads: Input should be ...' for the first three errors."""
    parts = []
    for item in error.errors()[:3]:
        loc = list(item["loc"])
        text = ""
        if loc and loc[0] == "entries" and len(loc) > 1 and isinstance(loc[1], int):
            op = loc[2] if len(loc) > 2 and isinstance(loc[2], str) else None
            text = f"entries[{loc[1]}]" + (f" ({op})" if op else "")
            loc = loc[3:] if op else loc[2:]
        field = ".".join(str(x) for x in loc)
        text = ".".join(x for x in (text, field) if x) or "table"
        parts.append(f"{text}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
