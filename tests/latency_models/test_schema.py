"""Latency tables: valid ones round-trip, malformed or foreign ones are refused naming the field."""

from __future__ import annotations

import copy
import json

import pytest

from latency_models.schema import LatencyTable, TableError

DOCUMENT = {
    "schema": "vitprune.latency-table",
    "version": 1,
    "device": {
        "name": "pixel-8",
        "kind": "measured",
        "runtime": "torch 2.5.0 (cpu)",
        "hardware": "Tensor G3",
        "threads": 4,
        "batch_sizes": [1],
        "created": "2026-11-24T10:00:00+00:00",
        "tool_version": "0.1.0",
    },
    "entries": [
        {"op": "attention", "batch": 1, "embed_dim": 192, "tokens": 197, "heads": 3, "head_dim": 64,
         "scored": False, "masked": False, "median_ms": 0.7, "spread_ms": 0.05},
        {"op": "mlp", "batch": 1, "embed_dim": 192, "tokens": 197, "mlp_hidden": 768, "median_ms": 0.8,
         "spread_ms": 0.04},
    ],
}  # fmt: skip


def broken(path: str, value) -> dict:
    document = copy.deepcopy(DOCUMENT)
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return document


def test_a_valid_table_round_trips_through_json(tmp_path):
    table = LatencyTable.parse(DOCUMENT)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table
    assert json.loads((tmp_path / "t.json").read_text())["schema"] == "vitprune.latency-table"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("entries.0.median_ms", -1.0, r"entries\[0\] \(attention\)\.median_ms"),
        ("entries.1.mlp_hidden", "wide", r"entries\[1\] \(mlp\)\.mlp_hidden"),
        ("entries.0.heads", KeyError, r"entries\[0\] \(attention\)\.heads: Field required"),
        ("entries.1.colour", "red", r"entries\[1\] \(mlp\)\.colour: Extra inputs"),
        ("entries.0.op", "conv", r"entries\[0\]"),
        ("device.kind", "guessed", r"device\.kind"),
        ("device.threads", 0, r"device\.threads"),
        ("version", 2, r"'version' is 2"),
        ("schema", "onnx-model", r"not a vitprune latency table"),
    ],
)
def test_malformed_tables_are_refused_naming_the_field(path, value, message):
    with pytest.raises(TableError, match=message):
        LatencyTable.parse(broken(path, value))


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2, 3]")
    with pytest.raises(TableError, match="not a vitprune latency table"):
        LatencyTable.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_bytes(b"\x80\x04\x95 pickle")
    with pytest.raises(TableError, match="not JSON"):
        LatencyTable.load(tmp_path / "b.json")


def test_merging_keeps_every_key_once_with_the_newer_value():
    old = LatencyTable.parse(DOCUMENT)
    newer = copy.deepcopy(DOCUMENT)
    newer["device"]["batch_sizes"] = [8]
    newer["entries"][0]["median_ms"] = 0.9
    newer["entries"][1]["batch"] = 8
    merged = old.merged(LatencyTable.parse(newer))
    assert len(merged.entries) == 3
    assert merged.device.batch_sizes == (1, 8)
    assert [e.median_ms for e in merged.entries if e.op == "attention"] == [0.9]


MERGE = {"op": "merge", "batch": 1, "embed_dim": 192, "tokens_in": 197, "tokens_out": 189, "prefix": 1, "heads": 3,
         "head_dim": 64, "median_ms": 0.2, "spread_ms": 0.01}  # fmt: skip


def test_merge_entries_are_read_and_tables_without_them_still_load(tmp_path):
    old = LatencyTable.parse(DOCUMENT)  # version 1 as written before merging was priced
    assert {e.op for e in old.entries} == {"attention", "mlp"}
    document = copy.deepcopy(DOCUMENT)
    document["entries"].append(MERGE)
    table = LatencyTable.parse(document)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table
    assert [e.op for e in table.entries] == ["attention", "mlp", "merge"] and table.entries[2].tokens_out == 189
    assert len(old.merged(table).entries) == 3 and len(table.keys()) == 3

    for field, value, message in (
        ("head_dim", KeyError, r"entries\[2\] \(merge\)\.head_dim: Field required"),
        ("heads", 0, r"entries\[2\] \(merge\)\.heads"),
        ("package", False, r"entries\[2\] \(merge\)\.package: Extra inputs"),  # a merge is not a select
    ):
        entry = {k: v for k, v in MERGE.items() if k != field} | ({} if value is KeyError else {field: value})
        with pytest.raises(TableError, match=message):
            LatencyTable.parse(document | {"entries": [*DOCUMENT["entries"], entry]})
